"""lm-eval's `local-completions` backend against a real `gpt2kit serve`, and the extra that installs it.

docs/evaluation.md tells a user to score a served model with lm-eval's `local-completions`; that backend
needs lm-eval's `api` extra (aiohttp, tenacity, requests, tqdm, tiktoken), which gpt2kit's `eval` extra
must install. Here a tiny char model is served on 127.0.0.1 (a free port), lm-eval talks to it over HTTP
with the tokenizer `export-hf` wrote, and every per-request log-likelihood and generated text equals
what the in-process `gpt2kit` backend gives.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

import test_evaluate  # noqa: E402
from test_evaluate import offline  # noqa: E402, F401  (autouse: no download, the datasets cache in tmp)

from gpt2kit.checkpoint import save_checkpoint  # noqa: E402
from gpt2kit.evaluate import GPT2KitLM, metrics, run_tasks  # noqa: E402
from gpt2kit.interop.hf import export_hf  # noqa: E402
from gpt2kit.testing import tiny_config  # noqa: E402
from gpt2kit.tokenizers import CharTokenizer  # noqa: E402
from gpt2kit.training.lit import GPTLitModule  # noqa: E402

KEY = "sk-lm-eval-test"


def lm_eval_api_requirements() -> list[str]:
    """The distributions of lm-eval's own `api` extra (what its API models, local-completions among
    them, import), read from the installed lm-eval's metadata."""
    from packaging.requirements import Requirement

    found = []
    for line in importlib.metadata.requires("lm_eval") or []:
        req = Requirement(line)
        if (
            req.marker is not None
            and req.marker.evaluate({"extra": "api"})
            and not req.marker.evaluate({"extra": ""})
        ):
            found.append(req.name)
    return found


def _missing_api_packages() -> list[str]:
    return [
        name
        for name in lm_eval_api_requirements()
        if importlib.util.find_spec(name.replace("-", "_")) is None
    ]


def test_eval_extra_declares_lm_evals_api_extra():
    """pyproject's `eval` extra asks for lm-eval with its `api` extra (what local-completions needs)."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["optional-dependencies"]["eval"]]
    (lm,) = [r for r in reqs if r.name.replace("_", "-") == "lm-eval"]
    assert {"api", "hf"} <= lm.extras, lm
    assert lm_eval_api_requirements(), (
        "lm-eval's metadata lists no `api` extra: the check above means nothing"
    )


def test_local_completions_imports_what_it_needs():
    """With the extra installed, lm-eval's local-completions model builds (it checks its packages first)."""
    missing = _missing_api_packages()
    if missing:
        pytest.skip(f"lm-eval's api packages {missing} are not installed: pip install -e '.[eval]'")
    import aiohttp  # noqa: F401
    import requests  # noqa: F401
    import tenacity  # noqa: F401
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    lm = LocalCompletionsAPI(base_url="http://127.0.0.1:9/v1/completions", tokenizer_backend="none")
    assert lm.tokenizer is None


def test_local_completions_against_gpt2kit_serve_scores_as_the_gpt2kit_backend(tmp_path, monkeypatch):
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
    missing = _missing_api_packages()
    if missing:
        pytest.skip(f"lm-eval's api packages {missing} are not installed: pip install -e '.[eval]'")
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from gpt2kit.serve.engine_client import load_served_model
    from gpt2kit.serve.testing import running_server

    text, lines = test_evaluate._lines()
    tok = CharTokenizer(special_tokens=["<|endoftext|>"])
    tok.train([text])
    torch.manual_seed(0)
    # local-completions leaves one position of max_length for the token it asks for, so it cuts a text of
    # block_size + 1 tokens one token shorter than the gpt2kit backend does: a context all items fit in
    module = GPTLitModule(tiny_config(vocab_size=tok.vocab_size, block_size=128))
    with torch.no_grad():  # clear winners for greedy decoding (as test_evaluate)
        for p in module.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    module.tokenizer = tok
    ckpt = save_checkpoint(module, tmp_path / "tiny.ckpt")
    out = export_hf(ckpt, tmp_path / "hf")  # the tokenizer lm-eval counts tokens with
    test_evaluate.write_tasks(tmp_path, lines)
    tasks, limit = ["t_mc", "t_gen"], 4
    docs = test_evaluate.task_rows(lines)["t_mc"][:limit]
    ours = run_tasks(
        GPT2KitLM(ckpt=str(ckpt), batch_size=4),
        tasks,
        include_path=[str(tmp_path)],
        limit=limit,
        log_samples=True,
    )
    served = load_served_model(str(ckpt), max_batch=4, max_queue=64)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # local-completions sends it as the bearer token
    with running_server(served, api_key=KEY) as url:
        lm = LocalCompletionsAPI(
            base_url=f"{url}/v1/completions",
            model=served.name,
            tokenizer_backend="huggingface",
            tokenizer=str(out),
            max_length=module.model.config.block_size,
            max_retries=1,
            timeout=60,
        )
        theirs = run_tasks(lm, tasks, include_path=[str(tmp_path)], limit=limit, log_samples=True)
    per_request = test_evaluate._per_request
    for (a,), (b,) in zip(
        [r for rs in per_request(ours, "t_mc") for r in rs],
        [r for rs in per_request(theirs, "t_mc") for r in rs],
        strict=True,
    ):
        assert abs(a[0] - b[0]) <= 1e-4 and a[1] == b[1], (a, b)
    assert len(per_request(theirs, "t_mc")) == limit
    assert max(len(tok.encode(d["context"] + " " + c)) for d in docs for c in d["choices"]) < 127
    gen = [r[0][0] for r in per_request(ours, "t_gen")]
    assert gen == [r[0][0] for r in per_request(theirs, "t_gen")] and any(gen)
    mine, peer = metrics(ours), metrics(theirs)
    assert mine == pytest.approx(peer) and "t_mc/acc_norm" in mine
