"""The engine's counters (requests, tokens, time to first token), read by ``/metrics``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the time-to-first-token histogram in :class:`EngineStats`."""


@dataclass
class EngineStats:
    """Counters for ``/metrics``; read them with :meth:`Engine.snapshot`."""

    requests_total: int = 0
    """Requests finished (any reason)."""
    requests_by_reason: dict[str, int] = field(default_factory=dict)
    generated_tokens_total: int = 0
    prompt_tokens_total: int = 0
    ttft_buckets: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BUCKETS) + 1))
    """Counts per bucket of :data:`TTFT_BUCKETS` (not cumulative), the last one for +Inf."""
    ttft_sum: float = 0.0
    ttft_count: int = 0
    steps_total: int = 0
    active: int = 0
    queued: int = 0

    def observe_ttft(self, seconds: float) -> None:
        """Count one time to first token."""
        self.ttft_sum += seconds
        self.ttft_count += 1
        self.ttft_buckets[
            next((i for i, b in enumerate(TTFT_BUCKETS) if seconds <= b), len(TTFT_BUCKETS))
        ] += 1

    def copy(self, **changes: int) -> EngineStats:
        """A copy that shares no list or dict with this one (``changes``: fields to set)."""
        return dataclasses.replace(
            self,
            requests_by_reason=dict(self.requests_by_reason),
            ttft_buckets=list(self.ttft_buckets),
            **changes,
        )
