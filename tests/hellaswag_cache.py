"""lm-eval's `hellaswag` dataset as the datasets cache holds it after a download, built offline from
tests/fixtures/hellaswag_format.jsonl: 20 invented items (not HellaSwag data) in HellaSwag's exact format
(ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split, split_type, label as a string), both
kinds of context (ActivityNet's, whose ctx_b lm-eval capitalises; WikiHow's, with the [header] / [title] /
[step] artifacts lm-eval's `preprocess` removes).

    HF_DATASETS_CACHE/Rowan___hellaswag/default/0.0.0/COMMIT/   dataset_info.json,
                                                                hellaswag-{train,validation}.arrow

is what `datasets.load_dataset("Rowan/hellaswag")` leaves; offline, `datasets` finds it there ("Using the
latest cached version of the dataset") and lm-eval's unmodified `hellaswag` task (its YAML, its
`process_docs`) reads it. The files are written by `datasets`' own JSON builder; only the folder is named
after the hub repository. The train split (the same items) exists because lm-eval's task reads it for
few-shot examples; the tests are zero-shot.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "hellaswag_format.jsonl"
REPO = "Rowan/hellaswag"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hellaswag_dataset_path() -> str:
    """The hub dataset lm-eval's installed `hellaswag` task reads (the cache is built under that name)."""
    import lm_eval
    import yaml

    text = (Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "hellaswag.yaml").read_text()
    config = yaml.safe_load("\n".join(line for line in text.splitlines() if "!function" not in line))
    return config["dataset_path"]


def build_hellaswag_cache(cache: Path, work: Path) -> Path:
    """Write the fixture into the datasets cache ``cache`` as a download of ``Rowan/hellaswag`` would."""
    import datasets
    from datasets.packaged_modules.json.json import Json

    assert hellaswag_dataset_path() == REPO, "lm-eval's hellaswag now reads another dataset: follow it here"
    string = datasets.Value("string")
    features = datasets.Features(
        ind=datasets.Value("int32"),
        activity_label=string,
        ctx_a=string,
        ctx_b=string,
        ctx=string,
        endings=datasets.List(string),
        source_id=string,
        split=string,
        split_type=string,
        label=string,
    )
    name = REPO.split("/")[1]
    builder = Json(
        cache_dir=str(work),
        dataset_name=name,
        config_name="default",
        config_id="default",
        hash=COMMIT,
        features=features,
        data_files={"train": str(FIXTURE), "validation": str(FIXTURE)},
    )
    builder.download_and_prepare()
    target = Path(cache) / REPO.replace("/", "___")
    shutil.rmtree(target, ignore_errors=True)
    Path(cache).mkdir(parents=True, exist_ok=True)
    shutil.move(str(Path(work) / name), str(target))
    return target


def use_datasets_cache(monkeypatch, cache: Path) -> None:
    """Offline, with ``cache`` as the datasets cache, in this process (``datasets`` read the environment
    when it was imported) and in any subprocess."""
    import datasets

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
