"""The lm-eval adapter against lm-eval's own `hf` backend, offline, for trained BPE and char tokenizers.

A tiny random gpt2kit model is exported with export-hf; both backends run the same local tasks (JSON
files in the test's folder): multiple choice, rolling perplexity (texts longer than the context, so
several windows), and generation with a stop string. Per request, the log-likelihoods agree within
1e-4 and the generated texts are equal; so are the task metrics. And the values are the right ones:
on the fixed tiny model (seeded, 2 layers × 32) every score and metric of the local tasks, of the
shipped offline tasks (recipes/eval) and of the evaluate command is computed here by hand from the
documents (plain forward passes and log_softmax; no lm-eval, no adapter) and compared.
"""

import json
import logging
import math
import re

import pytest
import torch

from gpt2kit.checkpoint import save_checkpoint
from gpt2kit.commands import main
from gpt2kit.interop.hf import export_hf
from gpt2kit.testing import tiny_config
from gpt2kit.tokenizers import ByteLevelBPETokenizer, CharTokenizer
from gpt2kit.training.lit import GPTLitModule

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from gpt2kit.evaluate import GPT2KitLM, metrics, run_tasks  # noqa: E402

TASKS = {
    "t_mc": """
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "t_ppl": """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
    "t_gen": """
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 10
  do_sample: false
metric_list:
  - metric: exact_match
""",
}


def _lines():
    from conftest import SHARED_DATA

    text = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:30000]
    return text, [line for line in text.split("\n") if len(line) > 12]


def task_rows(lines):
    """The local tasks' documents, in order."""
    return {
        "t_mc": [
            {"context": lines[i] + "\n", "choices": [lines[i + 1], lines[i + 7], lines[i + 13]], "label": 0}
            for i in range(0, 60, 6)
        ],
        "t_ppl": [{"text": "\n".join(lines[i : i + 8])} for i in range(0, 48, 8)],
        "t_gen": [{"prompt": lines[i][:8], "answer": lines[i][8:]} for i in range(0, 8)],
    }


def write_tasks(folder, lines):
    rows = task_rows(lines)
    for name, spec in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows[name]))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{spec}"
        )


@pytest.fixture(scope="module", params=["bpe", "char"])
def exported(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"eval-{request.param}")
    text, lines = _lines()
    if request.param == "bpe":
        tok = ByteLevelBPETokenizer(vocab_size=400)
    else:
        tok = CharTokenizer(special_tokens=["<|endoftext|>"])
    tok.train([text])
    torch.manual_seed(0)
    module = GPTLitModule(tiny_config(vocab_size=tok.vocab_size, block_size=96))
    with torch.no_grad():  # larger weights than GPT-2's init: clear winners for greedy decoding
        for p in module.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    module.tokenizer = tok
    ckpt = save_checkpoint(module, tmp / "model.ckpt")
    out = export_hf(ckpt, tmp / "hf")
    write_tasks(tmp, lines)
    return tmp, ckpt, out, module


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "datasets"))


def _per_request(results, task):
    return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_gpt2kit_backend_agrees_with_hf_backend(exported):
    """Both backends give the same per request and metric, and those are the values computed by hand."""
    from lm_eval.models.huggingface import HFLM

    tmp, ckpt, out, module = exported
    ours = run_tasks(
        GPT2KitLM(ckpt=str(ckpt), batch_size=3), list(TASKS), include_path=[str(tmp)], log_samples=True
    )
    hf = HFLM(pretrained=str(out), batch_size=3, device="cpu", dtype="float32")
    theirs = run_tasks(hf, list(TASKS), include_path=[str(tmp)], log_samples=True)
    assert_same_per_request(ours, theirs, TASKS)
    gen = [r[0][0] for r in _per_request(ours, "t_gen")]
    assert any(gen) and not any("\n" in g or "." in g for g in gen)  # generated, and cut at the stops
    # and both give the values computed here by hand
    model, tok, got, rows = module.model.eval(), module.tokenizer, metrics(ours), task_rows(_lines()[1])
    lls, acc, acc_norm = expected_mc(model, tok, rows["t_mc"], delimiter=" ")  # lm-eval's default
    scored = [[ll for ((ll, _),) in r] for r in _per_request(ours, "t_mc")]
    for by_hand, by_backend in zip(lls, scored, strict=True):
        assert by_backend == pytest.approx(by_hand, abs=1e-4)
    assert (got["t_mc/acc"], got["t_mc/acc_norm"]) == (acc, acc_norm)
    texts = [r["text"] for r in rows["t_ppl"]]
    lls = [expected_rolling(model, tok, text) for text in texts]
    assert [r[0][0] for r in _per_request(ours, "t_ppl")] == pytest.approx(lls, abs=1e-3)
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    assert got["t_ppl/word_perplexity"] == pytest.approx(math.exp(-sum(lls) / words), rel=1e-5)


def assert_same_per_request(ours, theirs, tasks):
    """Per request the same log-likelihoods (within 1e-4), greedy flags and texts; the same metrics."""
    for task in tasks:
        a, b = _per_request(ours, task), _per_request(theirs, task)
        assert len(a) == len(b) > 0
        for ra, rb in zip(a, b, strict=True):
            for (x,), (y,) in zip(ra, rb, strict=True):  # one response per request
                if task == "t_gen":
                    assert x == y
                elif task == "t_mc":  # (log-likelihood, greedy?)
                    assert abs(x[0] - y[0]) <= 1e-4 and x[1] == y[1], (task, x, y)
                else:
                    assert abs(x - y) <= 1e-4, (task, x, y)
    mine, peer = metrics(ours), metrics(theirs)
    assert mine.keys() == peer.keys() and "t_mc/acc" in mine and "t_ppl/word_perplexity" in mine
    for key in mine:
        assert math.isclose(mine[key], peer[key], rel_tol=1e-5, abs_tol=1e-6), (key, mine[key], peer[key])


def test_char_model_without_end_of_text_in_the_hf_backend(tmp_path, caplog):
    """A char tokenizer with no <|endoftext|> (nanoGPT's Shakespeare recipe): the exported tokenizer has no
    eos/bos, export says what lm-eval's hf backend needs (prefix_token_id: the newline), and with it that
    backend scores multiple choice and rolling perplexity as the gpt2kit backend does."""
    from lm_eval.models.huggingface import HFLM

    text, lines = _lines()
    tok = CharTokenizer()
    tok.train([text])
    assert tok.eot_id is None
    torch.manual_seed(0)
    module = GPTLitModule(tiny_config(vocab_size=tok.vocab_size, block_size=96))
    module.tokenizer = tok
    ckpt = save_checkpoint(module, tmp_path / "plain.ckpt")
    with caplog.at_level(logging.WARNING, logger="gpt2kit.interop.hf"):
        out = export_hf(ckpt, tmp_path / "hf")
    newline = tok.encode("\n")[0]
    assert f"pretrained={out},prefix_token_id={newline} " in caplog.text
    write_tasks(tmp_path, lines)
    tasks, run = ["t_mc", "t_ppl"], dict(include_path=[str(tmp_path)], log_samples=True, limit=4)
    ours = run_tasks(GPT2KitLM(ckpt=str(ckpt), batch_size=3), tasks, **run)
    hf = HFLM(pretrained=str(out), batch_size=3, device="cpu", dtype="float32", prefix_token_id=newline)
    theirs = run_tasks(hf, tasks, **run)
    assert_same_per_request(ours, theirs, tasks)


def test_rolling_loglikelihood_is_the_sum_over_the_text(exported):
    """One window per block: the rolling log-likelihood equals a direct computation over the tokens."""
    tmp, ckpt, out, module = exported
    lm = GPT2KitLM(model=module.model.eval(), tokenizer=module.tokenizer, batch_size=2)
    text = "\n".join(_lines()[1][:20])
    ids = module.tokenizer.encode(text)
    assert len(ids) > 2 * module.model.config.block_size
    expected, prev = 0.0, [lm.eot_token_id]
    full = prev + ids
    with torch.no_grad():
        block = module.model.config.block_size
        for start in range(0, len(ids), block):  # disjoint windows, each with up to `block` of context
            end = min(start + block, len(ids))
            ctx_start = max(0, end - block)
            x = torch.tensor([full[ctx_start:end]])
            logp = module.model(x).log_softmax(-1)[0]
            targets = full[ctx_start + 1 : end + 1]
            scores = logp.gather(-1, torch.tensor(targets)[:, None])[:, 0]
            expected += scores[-(end - start) :].sum().item()

    class R:
        args = (text,)

    assert lm.loglikelihood_rolling([R()])[0] == pytest.approx(expected, abs=1e-3)


def test_evaluate_command_prints_table_and_writes_metrics(exported, tmp_path, capsys):
    tmp, ckpt, _, module = exported
    out = tmp_path / "r.json"
    args = ["evaluate", "--ckpt", str(ckpt), "--tasks", "t_mc,t_gen", "--include_path", str(tmp)]
    main([*args, "--limit", "4", "--output", str(out)])
    printed = capsys.readouterr().out
    assert "t_mc" in printed and "acc" in printed
    record = json.loads(out.read_text())
    docs = task_rows(_lines()[1])["t_mc"][:4]
    _, acc, acc_norm = expected_mc(module.model.eval(), module.tokenizer, docs, delimiter=" ")
    assert record["metrics"]["t_mc/acc"] == acc and record["metrics"]["t_mc/acc_norm"] == acc_norm
    assert record["n-samples"]["t_mc"]["effective"] == 4


def _error(capsys, argv):
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line_each(exported, tmp_path, capsys):
    tmp, ckpt, _, module = exported
    if isinstance(module.tokenizer, CharTokenizer):
        pytest.skip("the refusals do not depend on the tokenizer: checked once")
    base = ["evaluate", "--ckpt", str(ckpt), "--include_path", str(tmp)]
    assert "did you mean t_mc" in _error(capsys, [*base, "--tasks", "t_mcc"])
    assert "--limit 0" in _error(capsys, [*base, "--tasks", "t_mc", "--limit", "0"])
    # a task whose dataset is on the hub, while offline
    (tmp_path / "t_hub.yaml").write_text(
        "task: t_hub\ndataset_path: nobody-here/no-such-dataset\ntest_split: test\n" + TASKS["t_mc"]
    )
    line = _error(
        capsys, ["evaluate", "--ckpt", str(ckpt), "--include_path", str(tmp_path), "--tasks", "t_hub"]
    )
    assert "HF_DATASETS_OFFLINE" in line and "datasets cache" in line
    # a checkpoint that is not a language model
    clf = GPTLitModule(tiny_config(vocab_size=50), head=_classifier())
    clf.tokenizer = CharTokenizer()
    clf.tokenizer.train(["abc"])
    path = save_checkpoint(clf, tmp_path / "clf.ckpt")
    assert "is not a language model" in _error(
        capsys, ["evaluate", "--ckpt", str(path), "--include_path", str(tmp), "--tasks", "t_mc"]
    )


def _classifier():
    import functools

    from gpt2kit.nn.heads import SequenceClassificationHead

    return functools.partial(SequenceClassificationHead, num_classes=3)


def test_shipped_offline_tasks_give_the_values_computed_by_hand(exported):
    """recipes/eval's tasks (built from GPT2KIT_DATA's corpora) run with no network, and every score and
    metric is the one computed here from the documents with plain forward passes."""
    _, ckpt, _, module = exported
    if isinstance(module.tokenizer, CharTokenizer):
        pytest.skip("Chinese text needs a byte-level tokenizer: checked with the BPE model")
    model, tok, n = module.model.eval(), module.tokenizer, 3
    tasks = ["shakespeare_mc", "zh_poetry_mc", "shakespeare_ppl"]
    results = run_tasks(GPT2KitLM(ckpt=str(ckpt), batch_size=4), tasks, limit=n, log_samples=True)
    got, builders = metrics(results), _recipe_builders()
    for task in ("shakespeare_mc", "zh_poetry_mc"):
        docs = list(getattr(builders, task)()["validation"])[:n]
        lls, acc, acc_norm = expected_mc(model, tok, docs, delimiter="")  # the YAMLs' target_delimiter
        scored = [[ll for ((ll, _),) in r] for r in _per_request(results, task)]
        assert len(scored) == n and [len(s) for s in scored] == [len(d["choices"]) for d in docs]
        for by_hand, by_backend in zip(lls, scored, strict=True):
            assert by_backend == pytest.approx(by_hand, abs=1e-4), task
        assert (got[f"{task}/acc"], got[f"{task}/acc_norm"]) == (acc, acc_norm), task
        assert results["n-samples"][task]["effective"] == n
    texts = [d["text"] for d in list(builders.shakespeare_ppl()["validation"])[:n]]
    lls = [expected_rolling(model, tok, text) for text in texts]
    assert [r[0][0] for r in _per_request(results, "shakespeare_ppl")] == pytest.approx(lls, abs=1e-3)
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    size = sum(len(t.encode("utf-8")) for t in texts)
    assert got["shakespeare_ppl/word_perplexity"] == pytest.approx(math.exp(-sum(lls) / words), rel=1e-5)
    assert got["shakespeare_ppl/byte_perplexity"] == pytest.approx(math.exp(-sum(lls) / size), rel=1e-5)
    assert got["shakespeare_ppl/bits_per_byte"] == pytest.approx(-sum(lls) / size / math.log(2), rel=1e-5)


# -- the metrics computed by hand: plain forward passes and log_softmax, no lm-eval, no adapter ----------


def _recipe_builders():
    """recipes/eval/utils.py, the offline tasks' dataset builders, as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "eval" / "utils.py"
    spec = importlib.util.spec_from_file_location("recipes_eval_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def _score(model, context, continuation):
    """log p(continuation | context), summed: one forward pass over the last block_size + 1 tokens."""
    ids = (context + continuation)[-(model.config.block_size + 1) :]
    logp = model(torch.tensor([ids[:-1]]))[0].float().log_softmax(-1)  # (T, vocab): row t predicts ids[t+1]
    rows = logp[-len(continuation) :]
    return rows.gather(-1, torch.tensor(continuation)[:, None]).sum().item()


def _pair(tok, context, continuation):
    """lm-eval's ids for (context, continuation): the context's trailing whitespace joins the continuation,
    whose ids are those of the whole text after the context's."""
    assert context  # (an empty context would be the end-of-text token)
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    return ctx, whole[len(ctx) :]


def expected_mc(model, tok, docs, delimiter):
    """Per document the choices' log-likelihoods; acc (the best sum is the label) and acc_norm (the best
    sum per character of the choice), each a mean over the documents."""
    lls, acc, acc_norm = [], 0, 0
    for doc in docs:
        scores = [_score(model, *_pair(tok, doc["context"], delimiter + c)) for c in doc["choices"]]
        lls.append(scores)
        per_char = [s / len(c) for s, c in zip(scores, doc["choices"], strict=True)]
        acc += max(range(len(scores)), key=scores.__getitem__) == doc["label"]
        acc_norm += max(range(len(scores)), key=per_char.__getitem__) == doc["label"]
    return lls, acc / len(docs), acc_norm / len(docs)


def expected_rolling(model, tok, text):
    """log p(text) after the end-of-text token: the tokens in disjoint chunks of block_size, each token
    seeing the block_size tokens that end where its chunk ends."""
    assert tok.eot_id is not None
    ids, block = tok.encode(text), model.config.block_size
    full = [tok.eot_id, *ids]  # full[i + 1] is ids[i]
    total = 0.0
    for start in range(0, len(ids), block):
        end = min(start + block, len(ids))
        total += _score(model, full[: start + 1], full[start + 1 : end + 1])
    return total
