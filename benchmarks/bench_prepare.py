"""Preparation: throughput (MB/s) and peak memory with the GPT-2 tokenizer on the Gutenberg novels.

    python benchmarks/bench_prepare.py [--repeats 3]

Prepares four sources, each in a fresh subprocess with its own empty cache, and reads the process's
peak RSS (ru_maxrss) after preparing: the five novels (1x, 3.1 MB), twenty files made of four copies
of each (4x), and the novels repeated 4 and 16 times in one single file (one document must stream
too; 16x is 50 MB). Throughput is the source's bytes over the wall time of prepare() (hashing,
reading, tokenizing, writing; median of the repeats), with a fresh GPT2Tokenizer. Targets: >= 4 MB/s
on the Gutenberg set on 2 cores, and peak memory that does not grow with the corpus.

On a shared machine the wall time depends on the load, so the table also gives the CPU time that
prepare() used (all threads) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET_MB_S = 4.0

CHILD = """
import json, resource, sys, time
from pathlib import Path
from gpt2kit.data import TextSource, prepare
from gpt2kit.tokenizers import GPT2Tokenizer
source = TextSource.resolve(sys.argv[1])
usage = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
prepared = prepare(source, GPT2Tokenizer(), Path(sys.argv[2]), progress=False)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF)
meta = prepared.meta
print(json.dumps({
    "seconds": seconds,
    "bytes": meta["train_bytes"] + meta["val_bytes"],
    "tokens": meta["train_tokens"] + meta["val_tokens"],
    "cpu_seconds": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime,
    "rss_before_mb": usage.ru_maxrss / 1024,
    "rss_peak_mb": after.ru_maxrss / 1024,
}))
"""


def make_sources(novels: Path, root: Path) -> dict[str, Path]:
    one, four = root / "1x", root / "4x"
    one.mkdir()
    four.mkdir()
    books = sorted(novels.glob("*-0.txt"))
    for book in books:
        shutil.copy(book, one / book.name)
        for copy in range(4):
            shutil.copy(book, four / f"{copy}-{book.name}")
    sources = {"1x (5 files)": one, "4x (20 files)": four}
    for times in (4, 16):  # one document: read in pieces, never whole
        single = root / f"{times}x.txt"
        with open(single, "wb") as out:
            for _ in range(times):
                for book in books:
                    out.write(book.read_bytes())
        sources[f"{times}x (1 file)"] = single
    return sources


def run(source: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(source), cache],
            check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from gpt2kit.data import fetch_corpus

    novels = fetch_corpus("gutenberg-english")
    fetch_corpus("gpt2-bpe")
    print(f"CPU cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}")
    print(
        "| source | MB | tokens | seconds | MB/s | CPU seconds | peak RSS (MB) | RSS before preparing (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    peaks, speeds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in make_sources(novels, Path(tmp)).items():
            results = [run(source) for _ in range(args.repeats)]
            seconds = statistics.median(r["seconds"] for r in results)
            cpu = statistics.median(r["cpu_seconds"] for r in results)
            peak = max(r["rss_peak_mb"] for r in results)
            mb = results[0]["bytes"] / 1e6
            speeds[name] = mb / seconds
            peaks[name] = peak
            print(
                f"| {name} | {mb:.1f} | {results[0]['tokens']:,} | {seconds:.2f} | {mb / seconds:.2f} | {cpu:.2f} | "
                f"{peak:.0f} | {statistics.median(r['rss_before_mb'] for r in results):.0f} |",
                flush=True,
            )
    growth = max(peaks.values()) - peaks["1x (5 files)"]
    speed = speeds["1x (5 files)"]
    print(
        f"\nGutenberg set: {speed:.2f} MB/s (target >= {TARGET_MB_S}): {'PASS' if speed >= TARGET_MB_S else 'FAIL'}; "
        f"peak RSS grows by {growth:.0f} MB from 1x to 16x (load average after: {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
