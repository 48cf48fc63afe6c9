"""Serving speed: ``gpt2kit serve`` (continuous batching) under 1, 4, 8 and 16 concurrent streaming clients.

    GPT2KIT_DATA=/work/shared/data python benchmarks/bench_serve.py [--quick] [--clients 1 4 8 16]
        [--dtypes float32 int8] [--new_tokens 128] [--requests_per_client 2] [--threads N]

GPT-2 small shape (124M, random weights built locally, GPT-2's BPE vocabulary; nothing is downloaded).
The server runs in this process on 127.0.0.1 with ``max_batch`` = the largest client count; each client
is a thread that sends ``requests_per_client`` streaming ``/v1/completions`` requests one after the
other, greedy, ``new_tokens`` new tokens each (random weights almost never draw end-of-text, and a run
that did is counted by its real token count), prompts of 16 to 200 random token ids. Reported per
dtype and client count: aggregate generated tokens/s over the wall time, and p50 / p95 time to first
token as the clients see it (request sent → first streamed text).

The peer is transformers ``generate`` on the same weights (float32) with *static* batches of the same
requests: with N clients, the requests go in batches of N (left-padded), each batch running until all
its rows have ``new_tokens``; its time to first token is the batch's prefill plus first step.
(``transformers serve`` is not used: it was not tried offline here.)

Targets (issue 15): at 8 clients, aggregate tokens/s >= 3x our 1-client rate and >= 2x the peer's
aggregate at 8; p95 time to first token <= 0.5 s at 8 clients. On a shared machine the figures move
with the load of other processes: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import torch

from gpt2kit import GPT, preset
from gpt2kit.batching import BatchingEngine
from gpt2kit.interop.hf import state_from_hf
from gpt2kit.quantize import quantize_int8
from gpt2kit.serve.app import ServedModel
from gpt2kit.serve.testing import running_server
from gpt2kit.tokenizers import GPT2Tokenizer


def models():
    """The same random GPT-2 small weights as a transformers model and as a gpt2kit GPT."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    ours = GPT(preset("gpt2")).eval()
    ours.load_state_dict({k.removeprefix("model."): v for k, v in state_from_hf(hf.state_dict()).items()})
    return hf, ours


def make_prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 201, (n,), generator=g).tolist()
    return [torch.randint(0, vocab - 1, (k,), generator=g).tolist() for k in lengths]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def run_clients(url: str, clients: int, prompts: list[list[int]], per_client: int, new: int) -> dict:
    import httpx

    ttft: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            for r in range(per_client):
                body = {
                    "model": "gpt2-random",
                    "prompt": prompts[(c * per_client + r) % len(prompts)],
                    "max_tokens": new,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                start = time.perf_counter()
                first, n = None, 0
                with http.stream("POST", "/v1/completions", json=body) as resp:
                    resp.raise_for_status()
                    for line in resp.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                            first = time.perf_counter() - start
                        if chunk.get("usage") and not chunk["choices"]:
                            n = chunk["usage"]["completion_tokens"]
                with lock:
                    ttft.append(first if first is not None else time.perf_counter() - start)
                    tokens[0] += n

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"tok_s": tokens[0] / wall, "p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95), "tokens": tokens[0]}


def run_peer(hf, clients: int, prompts: list[list[int]], per_client: int, new: int) -> dict:
    """transformers generate, static batches of ``clients`` requests (left-padded)."""
    reqs = [prompts[i % len(prompts)] for i in range(clients * per_client)]
    ttft, total, probes, start = [], 0, 0.0, time.perf_counter()
    for b in range(0, len(reqs), clients):
        batch = reqs[b : b + clients]
        L = max(len(p) for p in batch)
        ids = torch.tensor([[0] * (L - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in batch])
        kw = dict(attention_mask=mask, do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
        with torch.inference_mode():
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            first = time.perf_counter() - t0
            probes += first  # the probe is timed apart: it is not part of the peer's aggregate
            out = hf.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        # every request of a static batch waits for earlier batches, then for its batch's first step
        ttft += [t0 - start - (probes - first) + first] * len(batch)
        total += (out.shape[1] - L) * len(batch)
    wall = time.perf_counter() - start - probes
    return {"tok_s": total / wall, "p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95), "tokens": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument(
        "--dtypes", nargs="*", default=["float32", "int8"], choices=["float32", "bfloat16", "int8"]
    )
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--requests_per_client", type=int, default=2)
    p.add_argument("--no_peer", action="store_true")
    p.add_argument(
        "--peer_clients",
        type=int,
        nargs="+",
        default=None,
        help="client counts for the peer (default: --clients)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="1 and 8 clients, 32 new tokens, one request each")
    args = p.parse_args()
    if args.quick:
        args.clients, args.new_tokens, args.requests_per_client = [1, 8], 32, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}; torch threads: {torch.get_num_threads()}")
    hf, ours = models()
    tok = GPT2Tokenizer()
    prompts = make_prompts(max(args.clients) * args.requests_per_client, ours.config.vocab_size)
    rows = []
    for dtype in args.dtypes:
        model = quantize_int8(ours) if dtype == "int8" else ours.to(getattr(torch, dtype))
        engine = BatchingEngine(model, tok, max_batch=max(args.clients), max_queue=256)
        served = ServedModel(engine, tok, "gpt2-random")
        with running_server(served) as url:
            run_clients(url, 1, prompts[:1], 1, 4)  # warm-up
            for n in args.clients:
                r = run_clients(url, n, prompts, args.requests_per_client, args.new_tokens)
                rows.append(("gpt2kit serve", dtype, n, r))
                print(f"gpt2kit serve {dtype:8s} {n:2d} clients: {r['tok_s']:7.1f} tok/s  "
                      f"TTFT p50 {r['p50']:.2f} s p95 {r['p95']:.2f} s", flush=True)  # fmt: skip
        ours = ours.float()
    if not args.no_peer:
        run_peer(hf, 1, prompts[:1], 1, 4)  # warm-up
        for n in args.peer_clients or args.clients:
            r = run_peer(hf, n, prompts, args.requests_per_client, args.new_tokens)
            rows.append(("transformers generate (static batches)", "float32", n, r))
            print(f"transformers generate float32 {n:2d} clients: {r['tok_s']:7.1f} tok/s  "
                  f"TTFT p50 {r['p50']:.2f} s p95 {r['p95']:.2f} s", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()}")
    print("\n| server | dtype | clients | aggregate tok/s | TTFT p50 (s) | TTFT p95 (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, dtype, n, r in rows:
        print(f"| {name} | {dtype} | {n} | {r['tok_s']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} |")
    by = {(name, d, n): r for name, d, n, r in rows}
    for dtype in args.dtypes:
        one, eight = by.get(("gpt2kit serve", dtype, 1)), by.get(("gpt2kit serve", dtype, 8))
        peer = by.get(("transformers generate (static batches)", "float32", 8))
        if one and eight:
            line = f"{dtype}: 8 clients / 1 client = {eight['tok_s'] / one['tok_s']:.2f}x (target >= 3)"
            if peer:
                line += f"; vs peer at 8 = {eight['tok_s'] / peer['tok_s']:.2f}x (target >= 2)"
            line += f"; p95 TTFT at 8 = {eight['p95']:.2f} s (target <= 0.5)"
            print(line)


if __name__ == "__main__":
    main()
