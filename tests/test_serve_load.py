"""gpt2kit serve under load and faults: many concurrent clients, hang-ups, long runs, and SIGTERM.

Everything binds to 127.0.0.1 and is bounded in count and time. The model is tiny and untrained; what is
checked is that answers do not depend on the load and that nothing leaks.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'gpt2kit[test-serve]'")
openai = pytest.importorskip("openai", reason="needs the openai SDK: pip install 'gpt2kit[test-serve]'")
httpx = pytest.importorskip("httpx")

from test_serve_api import tiny_checkpoint  # noqa: E402

from gpt2kit.decoding import BatchingEngine, SamplingConfig  # noqa: E402
from gpt2kit.serve.engine_client import load_served_model  # noqa: E402
from gpt2kit.serve.testing import running_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("load") / "tiny.ckpt", chat=False, block_size=128)


SCRAPES = collections.Counter()
"""Scrapes of /metrics per server: each is counted as a 200 by the next one."""


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    SCRAPES[url] += 1
    return {k: float(v) for k, v in re.findall(r"^(gpt2kit_\S+) (\S+)$", text, re.M)}


def test_64_concurrent_mixed_requests_with_hang_ups(ckpt):
    served = load_served_model(ckpt, max_batch=8, max_queue=64)
    vocab = served.engine.vocab_size
    g = torch.Generator().manual_seed(0)
    jobs = []
    for i in range(64):
        n_prompt = int(torch.randint(1, 60, (1,), generator=g))
        prompt = torch.randint(0, vocab, (n_prompt,), generator=g).tolist()
        jobs.append((i, prompt, int(torch.randint(1, 40, (1,), generator=g)), i % 2 == 0, i % 10 == 3))
    with running_server(served) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", timeout=60, max_retries=0)

        def run(job):
            """What this client saw: (index, HTTP status, outcome, text, finish reason)."""
            i, prompt, max_tokens, stream, hang_up = job
            kw = dict(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0)
            try:
                if hang_up:  # read a little of the stream, then drop the connection
                    with (
                        httpx.Client(timeout=60) as http,
                        http.stream("POST", f"{url}/v1/completions", json={**kw, "stream": True}) as r,
                    ):
                        for _ in zip(range(2), r.iter_lines(), strict=False):
                            pass
                        return i, r.status_code, "hung up", None, None
                if stream:
                    chunks = list(client.completions.create(stream=True, **kw))
                    text = "".join(c.choices[0].text for c in chunks if c.choices)
                    return (
                        i,
                        200,
                        "answered",
                        text,
                        [c.choices[0].finish_reason for c in chunks if c.choices][-1],
                    )
                out = client.completions.create(**kw)
                return i, 200, "answered", out.choices[0].text, out.choices[0].finish_reason
            except openai.APIStatusError as exc:
                return i, exc.status_code, "refused", None, None
            except Exception as exc:  # a broken stream, a timeout: what the client saw, for the assertion
                return i, None, type(exc).__name__, None, None

        first = metrics(url)
        scrapes = SCRAPES[url]
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            results = list(pool.map(run, jobs))
        deadline = time.monotonic() + 20
        while (m := metrics(url))["gpt2kit_active_requests"] or m["gpt2kit_queued_requests"]:
            assert time.monotonic() < deadline, m
            time.sleep(0.05)
        last = metrics(url)  # counts the scrapes above
        seen = collections.Counter((status, outcome) for _, status, outcome, _, _ in results)
        hang_ups = sum(job[4] for job in jobs)
        assert seen == {(200, "answered"): len(jobs) - hang_ups, (200, "hung up"): hang_ups}, seen
        status_200 = 'gpt2kit_http_responses_total{status="200"}'
        assert last[status_200] - first.get(status_200, 0) == len(jobs) + SCRAPES[url] - scrapes
        assert not [k for k in last if k.startswith("gpt2kit_http_responses_total") and k != status_200], last
        assert (
            last.get('gpt2kit_requests_total{finish_reason="abort"}', 0) >= 1
        )  # the hang-ups were cancelled
    alone = BatchingEngine(served.engine.model, served.tokenizer, max_batch=1)
    for (i, prompt, max_tokens, _, _), (_, _, outcome, text, reason) in zip(jobs, results, strict=True):
        if outcome == "answered":  # the same answer as alone
            cfg = SamplingConfig(max_new_tokens=max_tokens, temperature=0, top_k=None)
            ref = alone.complete([prompt], cfg)[0]
            assert text == alone.text(ref) and reason == ref.finish_reason, i


def test_1000_sequential_short_requests_leak_nothing(ckpt):
    served = load_served_model(ckpt, max_batch=4)
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 1, "temperature": 0}
    with running_server(served) as url, httpx.Client(base_url=url, timeout=30) as http:

        def burst(n: int) -> None:
            for i in range(n):
                r = http.post("/v1/completions", json={**body, "stream": i % 2 == 1})
                assert r.status_code == 200

        burst(50)  # warm up: allocator pools, lazy imports, the first connections
        before = metrics(url)
        start = time.monotonic()
        burst(1000)
        elapsed = time.monotonic() - start
        after = metrics(url)
    assert after["gpt2kit_active_requests"] == 0 and after["gpt2kit_queued_requests"] == 0
    assert after["gpt2kit_open_streams"] == 0
    assert after["gpt2kit_threads"] == before["gpt2kit_threads"]
    assert after["gpt2kit_asyncio_tasks"] == before["gpt2kit_asyncio_tasks"]
    assert abs(after["gpt2kit_process_open_fds"] - before["gpt2kit_process_open_fds"]) <= 2
    grown = after["gpt2kit_process_resident_memory_bytes"] - before["gpt2kit_process_resident_memory_bytes"]
    assert grown < 16 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over 1,000 requests"
    count = 'gpt2kit_requests_total{finish_reason="length"}'
    assert after.get(count, 0) + after.get('gpt2kit_requests_total{finish_reason="stop"}', 0) >= 1050
    assert elapsed < 120, elapsed


def _start_cli(ckpt: str, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2kit", "serve", "--ckpt", ckpt, "--port", "0", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=ROOT,
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if m := re.search(r"API:\s+(http://127\.0\.0\.1:\d+)/v1", line):
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


def test_the_command_prints_its_urls_guards_with_a_key_and_stops_cleanly_on_sigterm(ckpt):
    proc, url = _start_cli(ckpt, "--max_batch", "2", env={"GPT2KIT_API_KEY": "k3y"})
    try:
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        headers = {"Authorization": "Bearer k3y"}
        body = {"model": "tiny", "prompt": "a", "max_tokens": 128, "temperature": 0, "stream": True}
        events = []
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", f"{url}/v1/completions", json={**body}, headers=headers) as r,
        ):
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 2:
                    proc.send_signal(signal.SIGTERM)
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        # greedy from "a" runs all 128 tokens on this model: the stream ended because of the signal
        assert last["choices"][0]["finish_reason"] == "abort"
        assert len(events) < 128
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
