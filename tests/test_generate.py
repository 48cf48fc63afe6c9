"""The generation engine: KV cache == full forward, padding, sampling filters, stops, streaming, predict."""

import io
import json
import logging
import sys

import lightning as L
import pytest
import torch

from gpt2kit import GPT, GPT2KitError, preset
from gpt2kit.checkpoint import save_checkpoint
from gpt2kit.commands import main
from gpt2kit.commands.generate import generate_command
from gpt2kit.data import PromptDataModule
from gpt2kit.decoding import (
    Engine,
    Request,
    SamplingConfig,
    encode_prompt,
    generate,
    sample_next,
    stream_text,
)
from gpt2kit.decoding.sampling import MatVecLinear
from gpt2kit.nn import LearnedPosition, NoPosition
from gpt2kit.tokenizers import EOT, CharTokenizer
from gpt2kit.training.callbacks import JSONLWriter
from gpt2kit.training.lit import GPTLitModule

TEXT = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?\n'-0123456"


def tokenizer() -> CharTokenizer:
    tok = CharTokenizer(special_tokens=[EOT])
    tok.train([TEXT])
    return tok


def model(position=LearnedPosition, block_size=32, seed=0) -> GPT:
    """A tiny random GPT whose greedy output varies (weights scaled up from GPT-2's init)."""
    torch.manual_seed(seed)
    gpt = GPT(preset("nano", block_size=block_size, vocab_size=tokenizer().vocab_size), position=position)
    with torch.no_grad():
        for p in gpt.parameters():
            p.mul_(6)
    return gpt.eval()


def naive(gpt: GPT, prompt: list[int], cfg: SamplingConfig) -> list[int]:
    """Reference sampler: a full forward pass over the whole context for every token, no cache."""
    generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    context = list(prompt)
    seen = torch.zeros(1, gpt.config.vocab_size, dtype=torch.bool)
    seen[0, context] = True
    with torch.no_grad():
        for _ in range(cfg.max_new_tokens):
            logits = gpt(torch.tensor([context]))[:, -1]
            token = sample_next(logits, cfg, generator, seen).item()
            context.append(token)
            seen[0, token] = True
    return context[len(prompt) :]


@pytest.mark.parametrize("position", [LearnedPosition, NoPosition])
@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(max_new_tokens=20, temperature=0),
        SamplingConfig(max_new_tokens=20, temperature=1.0, top_k=None, seed=1),
        SamplingConfig(
            max_new_tokens=20, temperature=0.7, top_k=10, top_p=0.9, repetition_penalty=1.3, seed=2
        ),
    ],
    ids=["greedy", "sampled", "filtered"],
)
def test_cached_generation_equals_full_forward_sampling(position, cfg):
    gpt = model(position)
    prompt = [5, 9, 1, 30, 2]
    assert generate(gpt, [prompt], cfg)[0].tokens == naive(gpt, prompt, cfg)


def test_left_padded_batch_equals_each_prompt_alone():
    gpt = model()
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [5, 3], [5], [8, 9, 7, 9]]
    cfg = SamplingConfig(max_new_tokens=16, temperature=0)
    batch = generate(gpt, prompts, cfg)
    alone = [generate(gpt, [p], cfg)[0] for p in prompts]
    assert [c.tokens for c in batch] == [c.tokens for c in alone]
    assert len({tuple(c.tokens) for c in batch}) > 1  # the rows really differ


def test_prompt_longer_than_context_keeps_the_most_recent_tokens(caplog):
    gpt = model(block_size=16)
    prompt = list(range(1, 41))
    cfg = SamplingConfig(max_new_tokens=5, temperature=0)
    with caplog.at_level(logging.WARNING, logger="gpt2kit"):
        long = generate(gpt, [prompt], cfg)[0]
    assert "keeping its last 16 tokens" in caplog.text
    assert long.tokens == generate(gpt, [prompt[-16:]], cfg)[0].tokens
    assert long.prompt_tokens == 16


def test_generating_past_the_context_never_indexes_past_the_position_table():
    gpt = model(block_size=16)
    out = generate(gpt, [[1, 2, 3], [4]], SamplingConfig(max_new_tokens=70, temperature=1.0, seed=0))
    assert [len(c.tokens) for c in out] == [70, 70]


def test_last_only_applies_the_head_to_the_last_position():
    gpt = model()
    idx = torch.randint(0, gpt.config.vocab_size, (2, 9))
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, :3] = False
    assert torch.allclose(gpt(idx, last_only=True), gpt(idx)[:, -1:], atol=1e-6)
    assert torch.allclose(gpt(idx, valid=valid, last_only=True), gpt(idx, valid=valid)[:, -1:], atol=1e-6)


def test_bf16_batch_of_one_runs_linear_layers_as_matrix_vector_products(monkeypatch):
    weight, bias = torch.randn(96, 32, dtype=torch.bfloat16), torch.randn(96, dtype=torch.bfloat16)
    x = torch.randn(1, 1, 32, dtype=torch.bfloat16)
    with MatVecLinear():
        y = torch.nn.functional.linear(x, weight, bias)
        no_bias = torch.nn.functional.linear(x, weight)
    assert y.shape == (1, 1, 96) and torch.allclose(
        y, torch.nn.functional.linear(x, weight, bias), rtol=2e-2, atol=5e-2
    )
    assert torch.allclose(no_bias, x @ weight.T, rtol=2e-2, atol=5e-2)
    gpt = model().to(torch.bfloat16)  # and decoding with it gives the tokens of the plain path
    cfg = SamplingConfig(max_new_tokens=12, temperature=0)
    calls = []
    original = MatVecLinear.__torch_function__
    monkeypatch.setattr(MatVecLinear, "__torch_function__",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))  # fmt: skip
    fast = generate(gpt, [[3, 1, 4]], cfg)  # one row: the engine decodes through MatVecLinear
    assert calls
    plain = generate(gpt, [[3, 1, 4], [3, 1, 4]], cfg)  # batch 2: plain F.linear in bfloat16
    assert fast[0].tokens == plain[0].tokens


@pytest.mark.parametrize("rows", [1, 8])
def test_float32_decode_rows_take_the_faster_gemm_with_the_same_products(rows, monkeypatch):
    """One float32 row runs as a two-column GEMM, several rows of a tall (LM-head) weight weight-first;
    the products are F.linear's (to rounding), and decoding gives the tokens of plain F.linear."""
    from gpt2kit.decoding import sampling

    tall, short = torch.randn(sampling.TALL, 32), torch.randn(96, 32)
    x, bias = torch.randn(rows, 1, 32), torch.randn(sampling.TALL)
    gemms = []
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: gemms.append(b.shape) or torch.matmul(a, b))
    with torch.no_grad(), MatVecLinear():
        y = torch.nn.functional.linear(x, tall, bias)
        y_short = torch.nn.functional.linear(x, short)
    monkeypatch.undo()
    assert gemms[0] == (32, 2 if rows == 1 else rows)  # the weight on the left; one row twice
    assert len(gemms) == (2 if rows == 1 else 1)  # 8 rows of a short weight: F.linear itself
    assert torch.allclose(y, torch.nn.functional.linear(x, tall, bias), rtol=1e-5, atol=1e-5)
    assert torch.allclose(y_short, torch.nn.functional.linear(x, short), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: gemms.append(b.shape) or torch.matmul(a, b))
    gemms.clear()
    with MatVecLinear():  # gradients on (training): F.linear itself
        torch.nn.functional.linear(x, tall)
    monkeypatch.undo()
    assert not gemms
    gpt, cfg = model(), SamplingConfig(max_new_tokens=12, temperature=0)
    fast = generate(gpt, [[3, 1, 4]] * rows, cfg)
    monkeypatch.setattr(
        MatVecLinear, "__torch_function__", lambda self, f, t, a=(), k=None: f(*a, **(k or {}))
    )
    assert [c.tokens for c in generate(gpt, [[3, 1, 4]] * rows, cfg)] == [c.tokens for c in fast]


def test_a_decode_step_costs_no_work_it_does_not_need(monkeypatch):
    """MatVecLinear sees every op of a step, so an int8 model (no float linear layer) decodes without it;
    and a model already in eval mode is not switched back and forth each step (a walk over every module)."""
    from gpt2kit.decoding.int8 import quantize_int8

    entered, switched = [], []
    original = MatVecLinear.__torch_function__
    monkeypatch.setattr(MatVecLinear, "__torch_function__",
                        lambda self, *a, **k: entered.append(1) or original(self, *a, **k))  # fmt: skip
    cfg = SamplingConfig(max_new_tokens=4, temperature=0)
    generate(quantize_int8(model()), [[3, 1, 4]], cfg)
    assert not entered
    gpt = model()
    monkeypatch.setattr(
        GPT, "train", lambda self, mode=True: switched.append(mode) or torch.nn.Module.train(self, mode)
    )
    generate(gpt, [[3, 1, 4]], cfg)
    assert entered and switched == [
        False
    ]  # float32: the faster kernels; eval once (the engine), not per step
    engine, switched[:] = Engine(gpt), []
    gpt.train()  # a training loop's model between steps (predict_step): evaluated, then put back
    engine.submit(Request([3, 1, 4], cfg))
    engine.step()
    assert switched == [True, False, True] and gpt.training  # ours, then the step's eval and put back


def test_top_k_and_top_p_keep_only_the_head_of_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, 4)
    draws = lambda **kw: set(sample_next(logits, SamplingConfig(temperature=1.0, **kw)).tolist())  # noqa: E731
    assert draws(top_k=None) == {0, 1, 2, 3}
    assert draws(top_k=2) == {0, 1}
    assert draws(top_k=None, top_p=0.7) == {0, 1}  # 0.5 < 0.7: the token that crosses 0.7 stays
    assert draws(top_k=None, top_p=0.5) == {0}
    assert draws(top_k=3, top_p=0.99) == {0, 1, 2}
    assert sample_next(logits[:3], SamplingConfig(temperature=0)).tolist() == [0, 0, 0]


def test_repetition_penalty_makes_seen_tokens_less_likely():
    logits = torch.tensor([[2.0, 1.5, -1.0, -1.2]])
    seen = torch.tensor([[True, False, False, False]])
    greedy = SamplingConfig(temperature=0, repetition_penalty=1.5)
    assert sample_next(logits, greedy, seen=seen).item() == 1  # 2.0 / 1.5 < 1.5
    seen = torch.tensor([[True, True, True, False]])
    assert sample_next(logits[:, 2:], greedy, seen=seen[:, 2:]).item() == 1  # -1.0 * 1.5 < -1.2
    assert sample_next(logits, SamplingConfig(temperature=0), seen=seen).item() == 0  # 1.0: off


def test_stop_token_ends_only_its_row():
    gpt = model()
    prompts = [[3, 1, 4], [7, 7, 8]]
    free = generate(gpt, prompts, SamplingConfig(max_new_tokens=12, temperature=0))
    stop = next(t for t in free[0].tokens[2:] if t not in free[1].tokens)
    cut = free[0].tokens.index(stop)
    out = generate(gpt, prompts, SamplingConfig(max_new_tokens=12, temperature=0, stop_token_ids=[stop]))
    assert out[0].tokens == free[0].tokens[:cut] and out[0].finish_reason == "stop"
    assert out[1].tokens == free[1].tokens and out[1].finish_reason == "length"


def test_stop_at_end_of_text_needs_the_tokenizer():
    gpt, tok = model(), tokenizer()
    free = generate(gpt, [[3, 1, 4]], SamplingConfig(max_new_tokens=12, temperature=0))[0].tokens
    with torch.no_grad():  # the head is tied: end-of-text now outscores the 4th new token (at the latest)
        gpt.wte.weight[tok.eot_id] = 1.5 * gpt.wte.weight[free[3]]
    with_tok = generate(gpt, [[3, 1, 4]], SamplingConfig(max_new_tokens=12, temperature=0), tok)[0]
    assert with_tok.finish_reason == "stop" and len(with_tok.tokens) <= 3
    assert with_tok.tokens == free[: len(with_tok.tokens)]
    no_eot = SamplingConfig(max_new_tokens=12, temperature=0, stop_at_eot=False)
    assert len(generate(gpt, [[3, 1, 4]], no_eot, tok)[0].tokens) == 12


def test_stop_string_cuts_the_text_and_streaming_never_shows_it():
    gpt, tok = model(), tokenizer()
    prompt = tok.encode("Hello")
    free = generate(gpt, [prompt], SamplingConfig(max_new_tokens=20, temperature=0), tok)[0]
    stop = free.text[6:8]
    before = free.text[: free.text.index(stop)]
    cfg = SamplingConfig(max_new_tokens=20, temperature=0, stop=[stop])
    done = generate(gpt, [prompt], cfg, tok)[0]
    assert done.text == before and done.finish_reason == "stop"
    assert len(done.tokens) == free.text.index(stop) + len(stop)  # the stop string's tokens were drawn
    pieces = list(stream_text(gpt, tok, prompt, cfg))
    assert "".join(pieces) == before and len(pieces) > 1


def test_seed_makes_sampling_reproducible():
    gpt = model()
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, top_k=None, seed=7)
    a, b = generate(gpt, [[1, 2]], cfg), generate(gpt, [[1, 2]], cfg)
    assert a[0].tokens == b[0].tokens
    other = generate(gpt, [[1, 2]], SamplingConfig(max_new_tokens=20, temperature=1.0, top_k=None, seed=8))
    assert other[0].tokens != a[0].tokens


def test_stream_yields_token_by_token_and_restores_training_mode():
    gpt = model().train()
    engine = Engine(gpt, max_batch=1)
    gpt.train()
    events = list(engine.stream(Request([1, 2, 3], SamplingConfig(max_new_tokens=5, temperature=0))))
    assert [len(e.tokens) for e in events] == [1] * 5 and events[-1].finish_reason == "length"
    assert gpt.training
    for _ in Engine(gpt, max_batch=1).stream(Request([1, 2, 3], SamplingConfig(max_new_tokens=3))):
        assert not torch.is_inference_mode_enabled()  # only inside each step


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": -0.5}, "temperature=-0.5 must be >= 0"),
        ({"top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p=1.5 must be in \(0, 1\]"),
        ({"top_k": 0}, "top_k=0 must be a positive integer"),
        ({"repetition_penalty": 0}, "repetition_penalty=0 must be > 0"),
        ({"stop": [""]}, "stop strings must not be empty"),
    ],
)
def test_bad_sampling_options_are_refused(kwargs, match):
    with pytest.raises(GPT2KitError, match=match):
        SamplingConfig(**kwargs)


def test_empty_prompt_starts_from_end_of_text():
    tok = tokenizer()
    assert encode_prompt(tok, "") == [tok.eot_id]
    plain = CharTokenizer()
    plain.train(["ab\n"])
    assert encode_prompt(plain, "") == plain.encode("\n")
    with pytest.raises(GPT2KitError, match="empty prompt"):
        generate(model(), [[]], SamplingConfig())


# -- the command line and predict ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    module = GPTLitModule(preset("nano", vocab_size=tokenizer().vocab_size))
    module.model.load_state_dict(model().state_dict())
    module.tokenizer = tokenizer()
    return save_checkpoint(module, tmp_path_factory.mktemp("ckpt") / "model.ckpt")


class Recorder(io.StringIO):
    """A stdout that remembers what was flushed when."""

    def __init__(self):
        super().__init__()
        self.flushed: list[str] = []

    def flush(self):
        self.flushed.append(self.getvalue())


def test_cli_streams_tokens_as_they_are_generated(ckpt, monkeypatch):
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    generate_command(str(ckpt), prompt="Hello", sampling=SamplingConfig(max_new_tokens=12, temperature=0))
    assert out.getvalue().startswith("Hello") and out.getvalue().endswith("\n")
    grown = [len(s) for s in out.flushed]
    assert len(grown) >= 10 and grown == sorted(grown)  # one flush per token, text only grows
    expected = generate(model(), [tokenizer().encode("Hello")], SamplingConfig(12, 0), tokenizer())[0].text
    assert out.getvalue() == "Hello" + expected + "\n"


def test_cli_prompt_file_and_samples(ckpt, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\nA line\\nand more\n")
    main(["generate", "--ckpt", str(ckpt), "--prompt_file", str(prompts), "--num_samples", "2",
          "--max_new_tokens", "5", "--seed", "3"])  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("--- prompt") == 4 and "--- prompt 2, sample 2 ---\nA line\nand more" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ckpt", "nowhere.ckpt"], "error: checkpoint 'nowhere.ckpt' does not exist"),
        (["--top_p", "1.5"], "error: top_p=1.5 must be in (0, 1]"),
        (["--temperature", "-1"], "error: temperature=-1.0 must be >= 0"),
        (["--prompt", "Hello ☃ é"], "error: characters not in this char tokenizer's vocabulary: 'é☃'"),
    ],
)
def test_cli_bad_values_are_one_clear_line(ckpt, capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        main(["generate", "--ckpt", str(ckpt), *args])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_predict_writes_jsonl_completions(ckpt, tmp_path):
    from gpt2kit.checkpoint import load_module

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Hello", "A", "", "Long prompt, this"]))
    out = tmp_path / "out" / "completions.jsonl"
    sampling = SamplingConfig(max_new_tokens=6, temperature=0)
    data = PromptDataModule(str(prompts), sampling=sampling, batch_size=3)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, callbacks=[JSONLWriter(str(out))])
    module = load_module(ckpt)
    trainer.predict(module, data, return_predictions=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    tok = module.tokenizer
    for row in rows:  # batched with left padding, yet each equals its prompt alone
        alone = generate(module.model, [encode_prompt(tok, row["prompt"])], sampling, tok)[0]
        assert row["completion"] == alone.text and row["completion_tokens"] == 6


def test_predict_recipe_runs_through_lightning_cli(ckpt, tmp_path, monkeypatch):
    from conftest import RECIPES

    from gpt2kit.commands import lightning_main

    monkeypatch.setattr(sys, "argv", ["gpt2kit"])
    (tmp_path / "prompts.txt").write_text("Hello\nA\n")
    out = tmp_path / "completions.jsonl"
    lightning_main(
        [
            "predict",
            "--config", str(RECIPES / "predict" / "completions.yaml"),
            "--ckpt_path", str(ckpt),
            "--data.prompts", str(tmp_path / "prompts.txt"),
            "--data.num_samples", "2",
            "--data.sampling.max_new_tokens", "4",
            "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks.output", str(out),
            "--trainer.logger.init_args.save_dir", str(tmp_path),
        ]
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["completion_tokens"] == 4 for r in rows)
    assert (tmp_path / "predict" / "version_0" / "config.yaml").is_file()  # the run's record, not in cwd
