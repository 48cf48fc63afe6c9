"""The former home of the continuous-batching engine, now :mod:`gpt2kit.decoding.engine` (kept so imports work)."""

from gpt2kit.decoding.engine import (
    TTFT_BUCKETS,
    BatchingEngine,
    Engine,
    EngineStats,
    EngineStopped,
    QueueFull,
)
from gpt2kit.decoding.sequence import Event, Request, TokenLogprob
from gpt2kit.decoding.slots import SlotKVCache

__all__ = [
    "TTFT_BUCKETS",
    "BatchingEngine",
    "Engine",
    "EngineStats",
    "EngineStopped",
    "Event",
    "QueueFull",
    "Request",
    "SlotKVCache",
    "TokenLogprob",
]
