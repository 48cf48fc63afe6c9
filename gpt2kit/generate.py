"""The former home of generation; everything is now in :mod:`gpt2kit.decoding` (kept so imports work).

``from gpt2kit.generate import SamplingConfig, generate, stream_text, encode_prompt, sample_next`` keeps
working; the engine is :class:`gpt2kit.decoding.Engine` (a static batch: submit all, run until idle).
"""

from gpt2kit.config import SamplingConfig
from gpt2kit.decoding.sampling import encode_prompt, sample_next
from gpt2kit.decoding.sequence import Completion, Detokenizer
from gpt2kit.decoding.static import generate, stream_text

__all__ = [
    "Completion",
    "Detokenizer",
    "SamplingConfig",
    "encode_prompt",
    "generate",
    "sample_next",
    "stream_text",
]
