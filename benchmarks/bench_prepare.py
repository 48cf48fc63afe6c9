"""Preparation: throughput (MB/s) and peak memory with the GPT-2 tokenizer on the Gutenberg novels.

    python benchmarks/bench_prepare.py [--repeats 3]
    python benchmarks/bench_prepare.py --parquet [--mb 100]   # Parquet (a hub corpus's format) vs text

Prepares four sources, each in a fresh subprocess with its own empty cache, and reads the process's
peak RSS (ru_maxrss) after preparing: the five novels (1x, 3.1 MB), twenty files made of four copies
of each (4x), and the novels repeated 4 and 16 times in one single file (one document must stream
too; 16x is 50 MB). Throughput is the source's bytes over the wall time of prepare() (hashing,
reading, tokenizing, writing; median of the repeats), with a fresh GPT2Tokenizer. Targets: >= 4 MB/s
on the Gutenberg set on 2 cores, and peak memory that does not grow with the corpus.

With ``--parquet``, a stand-in for a web corpus's Parquet shards (FineWeb-Edu's): the novels repeated
to ``--mb`` MB, cut into documents of ~4 KB at paragraph breaks, written as Parquet files of 25 MB of
text each (FineWeb-Edu's are ~2 GB: a bigger corpus is more files, not bigger ones) with row
groups of 1,000 rows (datatrove, which wrote FineWeb, writes batches of 1,000 documents) and a ``text`` and an ``id`` column, against the same
bytes as one text file, run alternately (text, Parquet, text, ...). Parquet is read twice (a sizes pass,
then tokenizing), the text file is not; peak memory must not grow with the size either way.

On a shared machine the wall time depends on the load, so the table also gives the CPU time that
prepare() used (all threads) and the load average. Everything is built in a temporary folder.
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
import json, resource, sys, threading, time
from pathlib import Path
from gpt2kit.data import TextSource, prepare
from gpt2kit.tokenizers import GPT2Tokenizer

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

sampled, done = [], threading.Event()
def sample():  # the resident set while preparing, every 20 ms (ru_maxrss also counts the imports' peak)
    while not done.wait(0.02):
        sampled.append(rss_mb())

source = TextSource.resolve(sys.argv[1])
usage = resource.getrusage(resource.RUSAGE_SELF)
rss_start = rss_mb()
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
prepared = prepare(source, GPT2Tokenizer(), Path(sys.argv[2]), progress=False)
seconds = time.perf_counter() - start
done.set()
after = resource.getrusage(resource.RUSAGE_SELF)
meta = prepared.meta
print(json.dumps({
    "rss_start_mb": rss_start,
    "rss_prepare_peak_mb": max(sampled, default=rss_start),
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


def make_parquet_sources(novels: Path, root: Path, mb: int, file_mb: int = 25) -> dict[str, Path]:
    """The novels repeated to ``mb`` MB: documents of ~4 KB in Parquet files of ``file_mb`` MB of text each
    (a bigger corpus is more files, as on the hub), and the same bytes as one text file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs, current = [], []
    for book in sorted(novels.glob("*-0.txt")):
        for paragraph in book.read_text(encoding="utf-8").split("\n\n"):
            current.append(paragraph)
            if sum(len(p) for p in current) >= 4000:
                docs.append("\n\n".join(current))
                current = []
    per_copy = sum(len(d.encode("utf-8")) for d in docs)
    copies = max(1, round(mb * 1e6 / per_copy))
    every = [d for _ in range(copies) for d in docs]
    files = max(1, round(mb / file_mb))
    folder = root / "parquet"
    folder.mkdir()
    size = -(-len(every) // files)
    for i in range(files):
        part = every[i * size : (i + 1) * size]
        table = pa.table({"text": part, "id": [f"{i}-{j}" for j in range(len(part))]})
        pq.write_table(table, folder / f"{i:03d}_00000.parquet", row_group_size=1000)
    text = root / "same-bytes.txt"
    with open(text, "w", encoding="utf-8") as out:
        for d in every:
            out.write(d)
    parquet_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    return {
        f"text, 1 file ({text.stat().st_size / 1e6:.0f} MB)": text,
        f"Parquet, {files} files ({len(every):,} documents, {parquet_mb:.0f} MB on disk)": folder
        / "*.parquet",
    }


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
    parser.add_argument("--parquet", action="store_true", help="Parquet shards vs the same bytes as text")
    parser.add_argument("--mb", type=int, default=100, help="--parquet: the stand-in's size in MB of text")
    args = parser.parse_args()
    from gpt2kit.data import fetch_corpus

    novels = fetch_corpus("gutenberg-english")
    fetch_corpus("gpt2-bpe")
    print(f"CPU cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}")
    print(
        "| source | MB | tokens | seconds | MB/s | CPU seconds | MB per CPU second | peak RSS (MB) | "
        "RSS before preparing (MB) | RSS while preparing: start → peak (MB, sampled) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    peaks, speeds, rises = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.parquet:
            sources = make_parquet_sources(novels, Path(tmp), args.mb)
            done = {name: [] for name in sources}
            for _ in range(args.repeats):  # alternately: the machine's load changes both alike
                for name, source in sources.items():
                    done[name].append(run(source))
        else:
            sources = make_sources(novels, Path(tmp))
        for name, source in sources.items():
            results = done[name] if args.parquet else [run(source) for _ in range(args.repeats)]
            seconds = statistics.median(r["seconds"] for r in results)
            cpu = statistics.median(r["cpu_seconds"] for r in results)
            peak = max(r["rss_peak_mb"] for r in results)
            mb = results[0]["bytes"] / 1e6
            speeds[name] = mb / seconds
            peaks[name] = peak
            rss_start = statistics.median(r["rss_start_mb"] for r in results)
            rises[name] = max(r["rss_prepare_peak_mb"] - r["rss_start_mb"] for r in results)
            print(
                f"| {name} | {mb:.1f} | {results[0]['tokens']:,} | {seconds:.2f} | {mb / seconds:.2f} | {cpu:.2f} | "
                f"{mb / cpu:.2f} | {peak:.0f} | {statistics.median(r['rss_before_mb'] for r in results):.0f} | "
                f"{rss_start:.0f} → {max(r['rss_prepare_peak_mb'] for r in results):.0f} |",
                flush=True,
            )
    if args.parquet:
        text, parquet = list(speeds)
        print(
            f"\nParquet: {speeds[parquet]:.2f} MB/s, RSS +{rises[parquet]:.0f} MB while preparing; the same bytes "
            f"as text: {speeds[text]:.2f} MB/s, +{rises[text]:.0f} MB (load average after: {os.getloadavg()[0]:.1f})"
        )
        return
    growth = max(peaks.values()) - peaks["1x (5 files)"]
    speed = speeds["1x (5 files)"]
    print(
        f"\nGutenberg set: {speed:.2f} MB/s (target >= {TARGET_MB_S}): {'PASS' if speed >= TARGET_MB_S else 'FAIL'}; "
        f"peak RSS grows by {growth:.0f} MB from 1x to 16x (load average after: {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
