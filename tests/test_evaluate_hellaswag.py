"""lm-eval's own `hellaswag` task (acc_norm, the number llm.c and OpenAI report), offline.

Its dataset is read from the datasets cache (tests/hellaswag_cache.py: 20 invented items in HellaSwag's
exact format, where a download of Rowan/hellaswag would leave them); the task's YAML and preprocessing
are lm-eval's, unmodified. A tiny random model with GPT-2's tokenizer, exported with export-hf, is scored
by gpt2kit's backend and by lm-eval's `hf` backend (transformers on the exported folder): the same
log-likelihood per (context, ending) within 1e-4, and the same acc and acc_norm. With no cached dataset
and no network: one line saying what to download and how, and nothing written.
"""

import json

import pytest
import torch
from hellaswag_cache import FIXTURE, build_hellaswag_cache, use_datasets_cache

from gpt2kit.checkpoint import save_checkpoint
from gpt2kit.commands import main
from gpt2kit.errors import GPT2KitError
from gpt2kit.interop.hf import export_hf
from gpt2kit.testing import tiny_config
from gpt2kit.tokenizers import GPT2Tokenizer
from gpt2kit.training.lit import GPTLitModule

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lm_eval.tasks.hellaswag.utils import preprocess  # noqa: E402  (the task's own preprocessing)

from gpt2kit.evaluate import GPT2KitLM, metrics, run_tasks  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hellaswag")
    torch.manual_seed(0)
    module = GPTLitModule(tiny_config(vocab_size=50257, block_size=128))
    with torch.no_grad():  # larger weights than GPT-2's init: choices with clearly different scores
        for p in module.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    module.tokenizer = GPT2Tokenizer()
    ckpt = save_checkpoint(module, tmp / "model.ckpt")
    return ckpt, export_hf(ckpt, tmp / "hf")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("datasets")
    build_hellaswag_cache(tmp / "cache", tmp / "build")
    return tmp / "cache"


def _samples(results):
    return sorted(results["samples"]["hellaswag"], key=lambda s: s["doc_id"])


def test_hellaswag_agrees_with_hf_backend(exported, cache, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    use_datasets_cache(monkeypatch, cache)
    ckpt, hf_dir = exported
    ours = run_tasks(GPT2KitLM(ckpt=str(ckpt), batch_size=8), ["hellaswag"], log_samples=True)
    hf = HFLM(pretrained=str(hf_dir), batch_size=8, device="cpu", dtype="float32")
    theirs = run_tasks(hf, ["hellaswag"], log_samples=True)

    items = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    a, b = _samples(ours), _samples(theirs)
    assert len(a) == len(b) == len(items) == 20
    diffs, correct = [], 0
    for sa, sb, item in zip(a, b, items, strict=True):
        # lm-eval's preprocessing reached the model: "<activity>: <ctx_a> <Ctx_b>", brackets removed
        query = preprocess(item["activity_label"] + ": " + item["ctx_a"] + " " + item["ctx_b"].capitalize())
        endings = [preprocess(e) for e in item["endings"]]
        assert [tuple(args) for args in sa["arguments"]] == [(query, " " + e) for e in endings]
        assert "[" not in query and sa["target"] == int(item["label"])
        lls = []
        for (x,), (y,) in zip(sa["resps"], sb["resps"], strict=True):  # (log-likelihood, greedy?)
            diffs.append(abs(x[0] - y[0]))
            assert x[1] == y[1]
            lls.append(x[0])
        # acc_norm: the ending with the highest log-likelihood per character of " ending"
        best = max(range(4), key=lambda i: lls[i] / len(" " + endings[i]))
        correct += best == int(item["label"])
    assert max(diffs) <= 1e-4, max(diffs)
    mine, peer = metrics(ours), metrics(theirs)
    assert mine == peer and set(mine) == {"hellaswag/acc", "hellaswag/acc_norm"}
    assert mine["hellaswag/acc_norm"] == pytest.approx(correct / 20)


def test_prepared_tasks_are_evaluated_again_without_their_dataset(exported, cache, tmp_path, monkeypatch):
    """What the callback does at each validation: the task built once at setup is evaluated again and
    again with the same result, without reading the datasets cache (or trying the Hub) again."""
    from gpt2kit.evaluate import load_tasks

    use_datasets_cache(monkeypatch, cache)
    prepared = load_tasks(["hellaswag"])
    use_datasets_cache(monkeypatch, tmp_path / "gone")  # the cache is no longer there
    lm = GPT2KitLM(ckpt=str(exported[0]), batch_size=8)
    first, again = (metrics(run_tasks(lm, ["hellaswag"], limit=10, prepared=prepared)) for _ in range(2))
    assert first == again and set(first) == {"hellaswag/acc", "hellaswag/acc_norm"}
    with pytest.raises(GPT2KitError, match="Rowan/hellaswag"):  # unprepared, it would need the cache
        run_tasks(lm, ["hellaswag"], limit=10)


def test_hellaswag_missing_dataset_is_one_line_and_writes_nothing(exported, tmp_path, capsys, monkeypatch):
    use_datasets_cache(monkeypatch, tmp_path / "empty-cache")
    ckpt, _ = exported
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--ckpt", str(ckpt), "--tasks", "hellaswag", "--output", str(out)])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert "Rowan/hellaswag" in line and str(tmp_path / "empty-cache") in line
    assert "python -c \"import datasets; datasets.load_dataset('Rowan/hellaswag')\"" in line
    assert "HF_DATASETS_OFFLINE" in line
    assert not out.exists() and captured.out == ""


def test_lm_eval_single_tasks_index_only_their_folders():
    """hellaswag (task: NAME) and mmlu's generated subtasks ("task": "NAME") are found without indexing all
    ~14,000 of lm-eval's task files; the download command names each task's dataset from its config."""
    from gpt2kit.evaluate import download_command, task_manager

    names = ["hellaswag", "mmlu_abstract_algebra"]
    manager = task_manager(names)
    assert set(names) <= set(manager.all_tasks) and len(manager.all_tasks) < 500
    what, command = download_command(names, manager)
    assert what == "the datasets Rowan/hellaswag, cais/mmlu (abstract_algebra)"
    assert command == (
        "python -c \"import datasets; datasets.load_dataset('Rowan/hellaswag'); "
        "datasets.load_dataset('cais/mmlu', 'abstract_algebra')\""
    )
