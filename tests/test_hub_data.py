"""Corpora from the hub by name (``hf:datasets/ORG/NAME/PATTERN``) against a hand-built hub cache.

The cache (tests/hubcache.py) holds small Parquet files in the hub's on-disk layout (blobs named by their
sha256, snapshot links, refs/main); HF_HUB_OFFLINE is set, so nothing is fetched. Where a test needs the
online path, huggingface_hub's snapshot_download is replaced by a recording stand-in.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml
from conftest import RECIPES, SHARED_DATA, cwd
from hubcache import build_dataset_cache, parquet_bytes

from gpt2kit import GPT2KitError
from gpt2kit.commands import main
from gpt2kit.data import TextDataModule
from gpt2kit.data import hub as hub_data
from gpt2kit.data.readers import TextSource
from gpt2kit.tokenizers import GPT2Tokenizer

huggingface_hub = pytest.importorskip("huggingface_hub")  # gpt2kit[hf]
pytest.importorskip("pyarrow")  # gpt2kit[parquet]

REPO = "HuggingFaceFW/fineweb-edu"
SPEC = f"hf:datasets/{REPO}/sample/10BT/*.parquet"
RECIPE = RECIPES / "pretrain" / "gpt2-124m-fineweb.yaml"


def documents(n: int, offset: int = 0) -> list[str]:
    """``n`` paragraphs of Tiny Shakespeare (one speech each), from paragraph ``offset``."""
    text = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()
    return [p for p in text.split("\n\n") if p.strip()][offset : offset + n]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    snap = build_dataset_cache(
        home,
        REPO,
        {
            "sample/10BT/000_00000.parquet": parquet_bytes(
                {"text": documents(120), "id": [f"a{i}" for i in range(120)]}, row_group_size=16
            ),
            "sample/10BT/001_00000.parquet": parquet_bytes(
                {"text": [*documents(100, 120), ""], "id": [f"b{i}" for i in range(101)]}  # an empty row
            ),
            "sample/100BT/000_00000.parquet": parquet_bytes({"text": ["not in the 10BT sample"] * 3}),
            "data/CC-MAIN-2024-10/000_00000.parquet": parquet_bytes({"content": ["x"], "url": ["u"]}),
            "README.md": b"---\nlicense: odc-by\n---\n",
        },
    )
    return home, snap


@pytest.fixture(autouse=True)
def offline(hf_home, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(hf_home[0]))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_a_hub_name_reads_only_the_matching_files_in_order(hf_home, monkeypatch):
    source = TextSource.resolve(SPEC)
    assert [p.relative_to(hf_home[1]).as_posix() for p in source.files] == [
        "sample/10BT/000_00000.parquet",
        "sample/10BT/001_00000.parquet",
    ]
    assert source.name == "fineweb-edu"
    texts = ["".join(doc.pieces) for doc in source.documents()]
    assert texts == documents(220)  # every row, file after file, row groups streamed in order; empty skipped
    assert source.sizes() == (220, sum(len(t.encode("utf-8")) for t in texts))  # measured without reading
    # a file is known by its blob (named by its sha256), never read to hash it: the same files give the same
    # fingerprint, other files another
    monkeypatch.setattr("gpt2kit.data.readers.sha256_file", lambda path: pytest.fail(f"hashed {path}"))
    assert source.fingerprint() == TextSource.resolve(f"hf:datasets/{REPO}/sample/10BT/").fingerprint()
    assert source.fingerprint() != TextSource.resolve(f"hf:datasets/{REPO}/sample/10BT/000_*").fingerprint()


def test_prepared_from_the_hub_is_the_same_as_from_the_local_files(hf_home, tmp_path):
    local = hf_home[1] / "sample" / "10BT" / "*.parquet"
    tokens = []
    for source in (SPEC, str(local)):
        data = TextDataModule(
            source, GPT2Tokenizer(), block_size=32, val_fraction=0.1, cache=str(tmp_path / "p")
        )
        prepared = data.prepared()
        assert prepared.meta["split"] == "documents" and prepared.meta["documents"] == 220
        tokens.append([np.asarray(prepared.tokens(split)) for split in ("train", "val")])
    for hub_split, local_split in zip(*tokens, strict=True):
        assert len(hub_split) > 1000 and np.array_equal(hub_split, local_split)


def test_online_fetches_only_the_pattern_into_the_hub_cache(hf_home, monkeypatch):
    """Online, snapshot_download is asked for the dataset's matching files only (it resumes and caches);
    a pattern that matches nothing is one line that says where to look."""
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(hf_home[1])  # what the hub would leave: the snapshot folder

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert len(hub_data.fetch(f"hf:datasets/{REPO}@v1.0/sample/10BT/*.parquet")) == 2
    (repo, kwargs), = calls  # fmt: skip
    assert repo == REPO and kwargs["repo_type"] == "dataset" and kwargs["revision"] == "v1.0"
    assert kwargs["allow_patterns"] == ["sample/10BT/*.parquet"] and kwargs["local_files_only"] is False
    assert kwargs["cache_dir"] == hf_home[0] / "hub"
    with pytest.raises(GPT2KitError, match=r"no file of the dataset .* matches 'sample/350BT/\*.parquet'"):
        hub_data.fetch(f"hf:datasets/{REPO}/sample/350BT/*.parquet")


def test_a_partly_downloaded_dataset_is_refused_not_read_in_part(monkeypatch, hf_home):
    """huggingface_hub knows (from its cached file listing) when a snapshot misses files: say to finish it."""
    errors = pytest.importorskip("huggingface_hub.errors")
    if not hasattr(errors, "IncompleteSnapshotError"):
        pytest.skip("this huggingface_hub does not track incomplete snapshots")

    def incomplete(repo_id, **kwargs):
        raise errors.IncompleteSnapshotError("1 file(s) are missing", snapshot_path=str(hf_home[1]))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", incomplete)
    with pytest.raises(
        GPT2KitError, match=r"holds only part of its files .* --include 'sample/10BT/\*.parquet'`: it resumes"
    ):
        hub_data.fetch(SPEC)


def test_offline_with_nothing_cached_says_what_to_download(capsys, tmp_path):
    err = one_line_error(capsys, ["prepare", "--config", str(RECIPE), "--data.init_args.source",
                                  "hf:datasets/HuggingFaceFW/fineweb/sample/10BT/*.parquet"])  # fmt: skip
    assert "HF_HUB_OFFLINE" in err and "not in the hub cache" in err
    assert "hf download HuggingFaceFW/fineweb --repo-type dataset --include 'sample/10BT/*.parquet'" in err
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_a_pattern_that_matches_nothing_cached_and_a_name_without_files(capsys):
    err = one_line_error(capsys, ["prepare", "--config", str(RECIPE), "--data.init_args.source",
                                  f"hf:datasets/{REPO}/sample/350BT/*.parquet"])  # fmt: skip
    assert "--include 'sample/350BT/*.parquet'" in err
    err = one_line_error(
        capsys, ["prepare", "--config", str(RECIPE), "--data.init_args.source", f"hf:datasets/{REPO}"]
    )
    assert "names no files" in err and f"hf:datasets/{REPO}/sample/10BT/*.parquet" in err


def test_a_parquet_file_without_the_text_column_names_its_columns(capsys, tmp_path):
    """Checked from the files' footers before anything is tokenized: nothing is written."""
    err = one_line_error(capsys, ["prepare", "--config", str(RECIPE), "--data.init_args.source",
                                  f"hf:datasets/{REPO}/data/*/*.parquet"])  # fmt: skip
    assert "no column 'text' (columns: content, url)" in err and "data.init_args.field" in err
    assert not (tmp_path / "cache").exists()


def test_print_config_help_and_dry_run_never_download(monkeypatch, capsys, tmp_path):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded while parsing a config")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    for extra in (["--print_config"], ["--help"]):
        with pytest.raises(SystemExit) as exit:
            main(["fit", "--config", str(RECIPE), *extra])
        assert not exit.value.code
    assert "hf:datasets/HuggingFaceFW/fineweb-edu/sample/10BT/*.parquet" in capsys.readouterr().out
    study = tmp_path / "study.yaml"
    study.write_text(
        f"base: {RECIPE}\nseeds: [1, 2]\nvariants:\n  lr3: {{model.optimizer.init_args.lr: 3.0e-4}}\n"
    )
    main(["ablate", "--config", str(study), "--dry_run"])
    out = capsys.readouterr().out
    assert "2 runs: 1 variants × 2 seeds" in out and "does not parse" not in out


@pytest.mark.slow
def test_the_fineweb_recipe_trains_two_steps_from_the_hub_cache(tmp_path):
    """The 124M reproduction recipe, shrunk, on the hub cache's FineWeb-Edu stand-in: it trains, validates
    on its fixed windows, runs its evaluation callback (an offline task in place of HellaSwag, whose data
    is not here) and checkpoints."""
    recipe = yaml.safe_load(RECIPE.read_text())
    (callback,) = [c for c in recipe["trainer"]["callbacks"] if c["class_path"].endswith("LMEvalCallback")]
    assert callback["init_args"]["tasks"] == ["hellaswag"]
    callback["init_args"].update(tasks=["shakespeare_mc"], limit=2, batch_size=2)
    shrunk = tmp_path / "recipe.yaml"
    shrunk.write_text(yaml.safe_dump(recipe))
    with cwd(tmp_path):
        main([
            "fit", "--config", str(shrunk),
            "--model.arch.n_layer=2", "--model.arch.n_head=2", "--model.arch.n_embd=32",
            "--model.arch.block_size=32", "--model.schedule.init_args.warmup_steps=1",
            "--trainer.precision=32-true", "--trainer.accelerator=cpu", "--trainer.accumulate_grad_batches=1",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.1",
            "--data.init_args.val_max_windows=8", "--data.init_args.num_workers=0",
        ])  # fmt: skip
    run = tmp_path / "runs" / "gpt2-124m-fineweb"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    (metrics,) = (run / "logs").glob("version_*/metrics.csv")
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["step"]) for r in rows if r.get("train_loss")}) == [0, 1]
    assert any(r.get("val_loss") for r in rows)
    assert any(r.get("eval/shakespeare_mc/acc_norm") or r.get("eval/shakespeare_mc/acc") for r in rows)
