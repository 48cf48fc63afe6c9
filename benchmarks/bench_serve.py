"""Serving speed: ``gpt2kit serve`` against ``transformers serve``, 1 to 16 concurrent streaming clients.

    GPT2KIT_DATA=/work/shared/data python benchmarks/bench_serve.py [--quick] [--clients 1 4 8 16]
        [--dtypes float32 int8] [--new_tokens 128] [--requests_per_client 2] [--repeats 3]
        [--peer serve|generate|none] [--stagger S] [--threads N]

GPT-2 small shape (124M, random weights built locally with GPT-2's BPE vocabulary; nothing is
downloaded), written once as a Hugging Face folder and imported into a gpt2kit checkpoint, so both
servers hold the same weights. Every server is the real command in its own process on 127.0.0.1:

* ``python -m gpt2kit serve --ckpt ... --dtype D --max_batch <most clients>``, one per dtype;
* the peer, ``transformers serve --continuous-batching --device cpu`` on the folder (float32), the
  strongest offline server that runs here; ``--peer generate`` falls back to transformers ``generate``
  with static batches of the same requests (in this process), for a transformers without ``serve``.

Each client is a thread that sends ``requests_per_client`` streaming ``/v1/completions`` requests one
after the other: greedy, ``max_tokens`` = ``new_tokens`` (random weights almost never draw
end-of-text; a request that stopped early is counted by its real token count from ``usage``), the
prompt a window of 16 to 200 GPT-2 tokens of Tiny Shakespeare, the same requests for every server. All
clients start together, so the first requests arrive as a burst (``--stagger S`` starts client c
``c * S`` seconds after the first instead: arrivals spread out, as a server in steady state sees them). Reported per server and client
count: aggregate generated tokens/s over the wall time, and p50 / p95 time to first token as the
clients see it (request sent → first streamed text). The servers run one after another, interleaved
(every repeat runs each client count on every server), and the figures are medians over repeats; the
ratios are taken within a repeat, then their median.

Targets (issue 15): at 8 clients, aggregate tokens/s >= 3x our own 1-client rate and >= 2x the peer's
at 8; p95 time to first token <= 0.5 s at 8 clients. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from gpt2kit.corpora import fetch_corpus
from gpt2kit.interop.hf import import_hf
from gpt2kit.interop.hf_tokenizer import save_hf_tokenizer
from gpt2kit.tokenizers import GPT2Tokenizer

MODEL = "gpt2-random"


def write_models(folder: Path) -> tuple[Path, Path]:
    """Random GPT-2 small weights as a Hugging Face folder and as a gpt2kit checkpoint of the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf_dir = folder / "hf"
    GPT2LMHeadModel(GPT2Config()).save_pretrained(hf_dir)
    save_hf_tokenizer(GPT2Tokenizer(), hf_dir)
    return hf_dir, import_hf(hf_dir, folder / f"{MODEL}.ckpt")


def make_prompts(n: int, tok: GPT2Tokenizer, seed: int = 0) -> list[str]:
    """``n`` windows of Tiny Shakespeare, 16 to 200 GPT-2 tokens long, as text."""
    ids = tok.encode_ordinary((fetch_corpus("tinyshakespeare") / "input.txt").read_text(encoding="utf-8"))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(16, 201, (1,), generator=g))
        start = int(torch.randint(0, len(ids) - k, (1,), generator=g))
        out.append(tok.decode(ids[start : start + k]))
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], port: int, log: Path, timeout: float = 300.0) -> Iterator[str]:
    """Run a server command until /health answers; yields its base URL; stops it (SIGTERM) on exit."""
    import httpx

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} {cmd[1]} exited ({proc.returncode}); its output: {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd[:3])} did not answer /health in {timeout:.0f} s: {log}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_clients(
    url: str, model: str, clients: int, prompts: list[str], per_client: int, new: int, stagger: float = 0.0
) -> dict:
    """``clients`` threads, each sending ``per_client`` streaming requests in turn; tokens/s and TTFT.

    ``stagger``: client c starts ``c * stagger`` seconds after the first (0: all at once, a burst)."""
    import httpx

    ttft: list[float] = []
    texts: dict[int, str] = {}
    tokens = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        time.sleep(c * stagger)
        with httpx.Client(base_url=url, timeout=900) as http:
            for r in range(per_client):
                i = c * per_client + r
                body = {
                    "model": model,
                    "prompt": prompts[i % len(prompts)],
                    "max_tokens": new,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                start = time.perf_counter()
                first, n, text = None, 0, []
                try:
                    with http.stream("POST", "/v1/completions", json=body) as resp:
                        resp.raise_for_status()
                        for line in resp.iter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            chunk = json.loads(line[6:])
                            piece = "".join(ch.get("text") or "" for ch in chunk.get("choices") or [])
                            if piece:
                                text.append(piece)
                                if first is None:
                                    first = time.perf_counter() - start
                            if chunk.get("usage"):
                                n = chunk["usage"]["completion_tokens"]
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    ttft.append(first if first is not None else time.perf_counter() - start)
                    tokens[0] += n
                    texts[i] = "".join(text)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, the first: {errors[0]}")
    return {"tok_s": tokens[0] / wall, "p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95), "texts": texts}


class StaticBatches:
    """The fallback peer: transformers ``generate`` with static batches of ``clients`` requests (left-padded)."""

    def __init__(self, hf_dir: Path) -> None:
        from transformers import GPT2LMHeadModel

        self.model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
        self.tok = GPT2Tokenizer()

    def run(self, clients: int, prompts: list[str], per_client: int, new: int) -> dict:
        reqs = [self.tok.encode_ordinary(prompts[i % len(prompts)]) for i in range(clients * per_client)]
        ttft, total, start = [], 0, time.perf_counter()
        for b in range(0, len(reqs), clients):
            batch = reqs[b : b + clients]
            L = max(len(p) for p in batch)
            ids = torch.tensor([[0] * (L - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in batch])
            kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None)
            with torch.inference_mode():
                out = self.model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
            # No streaming: a request of a static batch sees its first token when its batch ends.
            ttft += [time.perf_counter() - start] * len(batch)
            total += (out.shape[1] - L) * len(batch)
        wall = time.perf_counter() - start
        return {"tok_s": total / wall, "p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95), "texts": {}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument(
        "--dtypes", nargs="*", default=["float32", "int8"], choices=["float32", "bfloat16", "int8"]
    )
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--requests_per_client", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; figures are their medians")
    p.add_argument("--peer", choices=["serve", "generate", "none"], default="serve")
    p.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        help="seconds between client starts (default 0: every client starts at once, a burst)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads of every server (default: torch's)"
    )
    p.add_argument("--keep", action="store_true", help="keep the model folder and the servers' logs")
    p.add_argument(
        "--quick", action="store_true", help="1 and 8 clients, 32 new tokens, one request, one repeat"
    )
    args = p.parse_args()
    if args.quick:
        args.clients, args.new_tokens, args.requests_per_client, args.repeats = [1, 8], 32, 1, 1
    if args.peer == "serve" and shutil.which("transformers") is None:
        sys.exit(
            "error: the `transformers` command is not installed: pip install 'transformers[serving]', or --peer generate"
        )
    threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    os.environ.update(threads)
    print(f"load average before: {os.getloadavg()}; cores: {os.cpu_count()}", flush=True)

    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    hf_dir, ckpt = write_models(folder)
    tok = GPT2Tokenizer()
    prompts = make_prompts(max(args.clients) * args.requests_per_client, tok)
    slots = max(args.clients)
    commands = {
        f"gpt2kit serve {d}": [sys.executable, "-m", "gpt2kit", "serve", "--ckpt", str(ckpt), "--dtype", d,
                               "--max_batch", str(slots), "--max_queue", "256", "--model_name", MODEL]
        for d in args.dtypes
    }  # fmt: skip
    peer_name = {"serve": "transformers serve --continuous-batching float32", "generate":
                 "transformers generate, static batches, float32"}.get(args.peer)  # fmt: skip
    if args.peer == "serve":
        commands[peer_name] = ["transformers", "serve", "--continuous-batching", "--device", "cpu",
                               "--dtype", "float32", "--host", "127.0.0.1", str(hf_dir)]  # fmt: skip
    rows: dict[tuple[str, int], list[dict]] = {}
    with contextlib.ExitStack() as stack:
        urls, models = {}, {}
        for name, cmd in commands.items():
            port = free_port()
            cmd = [*cmd, "--port", str(port)]
            urls[name] = stack.enter_context(server(cmd, port, folder / f"{name.split()[0]}-{len(urls)}.log"))
            models[name] = str(hf_dir) if name == peer_name else MODEL
            run_clients(urls[name], models[name], 1, prompts[:1], 1, 4)  # warm-up (the peer builds its cache)
        static = StaticBatches(hf_dir) if args.peer == "generate" else None
        for rep in range(args.repeats):
            for n in args.clients:
                for name in [*commands, *([peer_name] if static else [])]:
                    if static is not None and name == peer_name:
                        r = static.run(n, prompts, args.requests_per_client, args.new_tokens)
                    else:
                        r = run_clients(urls[name], models[name], n, prompts, args.requests_per_client,
                                        args.new_tokens, args.stagger)  # fmt: skip
                    rows.setdefault((name, n), []).append(r)
                    print(f"[{rep + 1}/{args.repeats}] {name:52s} {n:2d} clients: {r['tok_s']:6.1f} tok/s  "
                          f"TTFT p50 {r['p50']:5.2f} s  p95 {r['p95']:5.2f} s", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()}")
    if args.keep:
        print(f"model folder and logs: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)

    med = statistics.median
    print(f"\nmedians of {args.repeats} interleaved repeat(s); {args.requests_per_client} request(s) per client, "
          f"{args.new_tokens} new tokens each; clients started {args.stagger} s apart\n")  # fmt: skip
    print("| server | clients | aggregate tok/s | TTFT p50 (s) | TTFT p95 (s) |")
    print("|---|---:|---:|---:|---:|")
    for (name, n), rs in rows.items():
        print(f"| {name} | {n} | {med(r['tok_s'] for r in rs):.1f} | {med(r['p50'] for r in rs):.2f} | "
              f"{med(r['p95'] for r in rs):.2f} |")  # fmt: skip
    print()
    for d in args.dtypes:
        ours = f"gpt2kit serve {d}"
        one, eight, peer = rows.get((ours, 1)), rows.get((ours, 8)), rows.get((peer_name, 8))
        if not (one and eight):
            continue
        scale = med(e["tok_s"] / o["tok_s"] for o, e in zip(one, eight, strict=True))
        line = f"{d}: 8 clients / 1 client = {scale:.2f}x (>= 3)"
        if peer:
            vs = med(e["tok_s"] / q["tok_s"] for e, q in zip(eight, peer, strict=True))
            line += f"; / peer at 8 = {vs:.2f}x (>= 2)"
        line += f"; p95 TTFT at 8 = {med(e['p95'] for e in eight):.2f} s (<= 0.5)"
        print(line)
    # Same weights, greedy, float32: the texts should agree (an argmax near a tie may flip now and then).
    ours, peer = rows.get(("gpt2kit serve float32", 1)), rows.get((peer_name, 1))
    if ours and peer and peer[0]["texts"]:
        a, b = ours[0]["texts"], peer[0]["texts"]
        same = sum(a[i] == b.get(i) for i in a)
        print(f"greedy float32 texts equal to the peer's at 1 client: {same} of {len(a)}")


if __name__ == "__main__":
    main()
