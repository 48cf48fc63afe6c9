"""Decoding: a checkpoint loaded for inference and the one engine that samples from it.

* :mod:`~gpt2kit.decoding.loaded` — :func:`load_for_inference`: model, tokenizer, chat template,
  config, without Lightning;
* :mod:`~gpt2kit.decoding.sequence` — one request's rules (:class:`Request`): stop tokens and strings,
  seeded generator, incremental text, the context slide, the finish reason;
* :mod:`~gpt2kit.decoding.engine` — :class:`Engine`: slots, continuous batching, the batch-1 fast path
  (:mod:`~gpt2kit.decoding.slots`: the slot KV cache; :mod:`~gpt2kit.decoding.prefill`: prompts into
  slot rows, batched and left-padded, or alone in chunks);
* :mod:`~gpt2kit.decoding.static` — :func:`generate` (a static batch: submit all, run until idle) and
  :func:`stream_text`;
* :mod:`~gpt2kit.decoding.sampling` — penalties, temperature, top-k, top-p.

It needs nothing above the data layer (model, tokenizers, chat templates): training, evaluation and
serving are its clients.
"""

from gpt2kit.config import SamplingConfig
from gpt2kit.decoding.engine import (
    BatchingEngine,
    Engine,
    EngineStats,
    EngineStopped,
    QueueFull,
)
from gpt2kit.decoding.loaded import LoadedModel, check_device, load_for_inference, with_recommended
from gpt2kit.decoding.sampling import encode_prompt, penalize, sample_next
from gpt2kit.decoding.sequence import Completion, Detokenizer, Event, Request, TokenLogprob
from gpt2kit.decoding.slots import SlotKVCache
from gpt2kit.decoding.static import generate, stream_text
from gpt2kit.decoding.stats import TTFT_BUCKETS

__all__ = [
    "TTFT_BUCKETS",
    "BatchingEngine",
    "Completion",
    "Detokenizer",
    "Engine",
    "EngineStats",
    "EngineStopped",
    "Event",
    "LoadedModel",
    "QueueFull",
    "Request",
    "SamplingConfig",
    "SlotKVCache",
    "TokenLogprob",
    "check_device",
    "encode_prompt",
    "generate",
    "load_for_inference",
    "penalize",
    "sample_next",
    "stream_text",
    "with_recommended",
]
