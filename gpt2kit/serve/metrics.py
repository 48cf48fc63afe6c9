"""``GET /metrics``: Prometheus exposition through ``prometheus_client``, one registry per app.

Three sources: HTTP responses counted by the status each client received (:meth:`Metrics.observe`, called
by the app's outermost middleware, which also answers a crash's 500 itself, so a 500 is counted as 500),
the engine's counters read at scrape time (:class:`_EngineCollector`), and the process
(``prometheus_client``'s :class:`~prometheus_client.ProcessCollector`: ``gpt2kit_process_open_fds``,
``gpt2kit_process_resident_memory_bytes`` ...) with its threads and event-loop tasks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from gpt2kit.serve.engine_client import TTFT_BUCKETS, ServedModel

NAMESPACE = "gpt2kit"


class Metrics:
    """The app's registry: response statuses, open streams, the engine's counters and the process."""

    def __init__(self, served: ServedModel) -> None:
        self.registry = CollectorRegistry()
        self.responses = Counter(
            "http_responses",
            "HTTP responses, by the status the client received.",
            ["status"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "open_streams", "Streaming responses in progress.", namespace=NAMESPACE, registry=self.registry
        )
        self.registry.register(_EngineCollector(served))
        self.registry.register(_RuntimeCollector())
        ProcessCollector(namespace=NAMESPACE, registry=self.registry)

    def observe(self, status: int) -> None:
        self.responses.labels(status=str(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text to answer a scrape with, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineCollector(Collector):
    """The engine's counters, read from one consistent snapshot at each scrape."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served

    def collect(self) -> Iterator[Metric]:
        s = self.served.stats()
        name = f"{NAMESPACE}_"
        reasons = CounterMetricFamily(
            name + "requests", "Requests finished, by finish reason.", labels=["finish_reason"]
        )
        for reason, count in sorted(s.requests_by_reason.items()):
            reasons.add_metric([reason], count)
        yield reasons
        yield CounterMetricFamily(name + "generated_tokens", "Tokens generated.", s.generated_tokens_total)
        yield CounterMetricFamily(name + "prompt_tokens", "Prompt tokens prefilled.", s.prompt_tokens_total)
        yield CounterMetricFamily(
            name + "engine_steps", "Engine steps (one decode pass each).", s.steps_total
        )
        yield GaugeMetricFamily(name + "active_requests", "Requests holding a decode slot.", s.active)
        yield GaugeMetricFamily(name + "queued_requests", "Requests waiting for a slot.", s.queued)
        yield GaugeMetricFamily(name + "slots", "Decode slots (--max_batch).", self.served.slots)
        buckets, cumulative = [], 0
        for bound, count in zip([*TTFT_BUCKETS, float("inf")], s.ttft_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
        yield HistogramMetricFamily(
            name + "time_to_first_token_seconds",
            "From submission to the first token.",
            buckets=buckets,
            sum_value=s.ttft_sum,
        )


class _RuntimeCollector(Collector):
    """Threads of the process and tasks of the event loop (what the leak test watches, with the fds)."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{NAMESPACE}_threads", "Threads of the server process.", threading.active_count()
        )
        try:
            tasks = len(asyncio.all_tasks())  # a scrape runs on the event loop
        except RuntimeError:
            tasks = 0
        yield GaugeMetricFamily(f"{NAMESPACE}_asyncio_tasks", "Tasks on the server's event loop.", tasks)
