"""The decoding layer: the Lightning-free loader, the penalties, stop strings across tokens, batched and
chunked prefill, and the commands that start without Lightning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_generate import model, tokenizer

from gpt2kit import GPT2KitError, preset
from gpt2kit.chat import RoleTokensTemplate
from gpt2kit.checkpoint import load_module, save_checkpoint
from gpt2kit.decoding import (
    Engine,
    Request,
    SamplingConfig,
    generate,
    load_for_inference,
    penalize,
    stream_text,
)
from gpt2kit.finetune import LoRA
from gpt2kit.tokenizers import CharTokenizer
from gpt2kit.training.lit import GPTLitModule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the loader ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory):
    """A LoRA-fine-tuned chat checkpoint with trained (non-zero) adapters and recommended sampling."""
    tok = CharTokenizer(special_tokens=["<|endoftext|>", *RoleTokensTemplate().special_tokens()])
    tok.train(["abcdefghijklmnopqrstuvwxyz .,!?"])
    torch.manual_seed(0)
    module = GPTLitModule(preset("nano", vocab_size=tok.vocab_size), finetune=LoRA(rank=2))
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # LoRA's B starts at 0: make the adapters matter
    module.tokenizer = tok
    module.chat_template = RoleTokensTemplate().to_dict()
    path = save_checkpoint(module, tmp_path_factory.mktemp("lora") / "chat.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["gpt2kit"]["sampling"] = {"temperature": 0.5, "top_p": 0.9}
    torch.save(ckpt, path)
    return path


def test_the_loader_rebuilds_what_lightning_loads_without_lightning(lora_ckpt):
    loaded = load_for_inference(lora_ckpt)
    reference = load_module(lora_ckpt)  # the training module, through Lightning
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), reference.model(ids))
    assert loaded.tokenizer == reference.tokenizer
    assert isinstance(loaded.chat_template, RoleTokensTemplate)
    assert loaded.config["finetune"]["class_path"].endswith("LoRA")


def test_the_loader_applies_the_dtype_and_the_recommended_sampling(lora_ckpt):
    assert next(load_for_inference(lora_ckpt, dtype="bfloat16").model.parameters()).dtype == torch.bfloat16
    loaded = load_for_inference(lora_ckpt)
    cfg = loaded.sampling(SamplingConfig(temperature=0.3))  # what the user set stays
    assert (cfg.temperature, cfg.top_p, cfg.top_k) == (0.3, 0.9, SamplingConfig().top_k)
    with pytest.raises(GPT2KitError, match="not a weight format"):
        load_for_inference(lora_ckpt, dtype="int4")


def test_the_two_errors_of_every_decoding_command_live_in_the_loader(tmp_path):
    module = GPTLitModule(preset("nano"))
    loaded = load_for_inference(save_checkpoint(module, tmp_path / "bare.ckpt"))
    with pytest.raises(GPT2KitError, match=r"carries no tokenizer .*import-hf"):
        loaded.require_tokenizer()
    with pytest.raises(GPT2KitError, match=r"trained without a chat template.*fine-tune it"):
        loaded.require_chat_template()


@pytest.mark.parametrize("command", ["generate", "chat", "serve"])
def test_decoding_commands_start_without_importing_lightning(lora_ckpt, command):
    """generate and chat run, serve builds its app: none imports Lightning (or the training code)."""
    body = {
        "generate": "main(['generate', '--ckpt', CKPT, '--prompt', 'ab', '--max_new_tokens', '3'])",
        "chat": "main(['chat', '--ckpt', CKPT, '--message', 'hi', '--max_new_tokens', '3'])",
        "serve": "from gpt2kit.serve.engine_client import load_served_model\n"
        "from gpt2kit.serve.app import create_app\n"
        "create_app(load_served_model(CKPT))",
    }[command]
    code = f"import sys\nfrom gpt2kit.commands import main\nCKPT = {str(lora_ckpt)!r}\n{body}\n" + (
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'lightning' or m == 'gpt2kit.training.lit')\n"
        "print('IMPORTED', bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    if command == "serve" and "No module named 'fastapi'" in out.stderr:
        pytest.skip("the serve extra is not installed")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "IMPORTED []" in out.stdout


# -- the penalties -------------------------------------------------------------------------------------------
def test_each_penalty_changes_the_logits_it_should_and_only_those():
    torch.manual_seed(0)
    logits = torch.randn(2, 12) * 3
    seen = torch.zeros(2, 12, dtype=torch.bool)
    seen[0, [1, 4, 7]] = True
    seen[1, [0, 4]] = True
    counts = torch.zeros(2, 12, dtype=torch.long)
    counts[0, [4, 9]] = torch.tensor([3, 1])
    counts[1, 2] = 2

    def changed(cfg):
        return penalize(logits, cfg, seen, counts) != logits

    rep = SamplingConfig(repetition_penalty=1.7)
    assert torch.equal(changed(rep), seen)  # the context's tokens, prompt included
    out = penalize(logits, rep, seen, counts)
    expected = torch.where(logits > 0, logits / 1.7, logits * 1.7)
    assert torch.allclose(out[seen], expected[seen]) and (out[seen] < logits[seen]).all()
    presence = SamplingConfig(presence_penalty=0.75)
    assert torch.equal(changed(presence), counts > 0)  # generated tokens only, once each
    assert torch.allclose(penalize(logits, presence, seen, counts)[counts > 0], logits[counts > 0] - 0.75)
    frequency = SamplingConfig(frequency_penalty=0.5)
    assert torch.equal(changed(frequency), counts > 0)
    assert torch.allclose(penalize(logits, frequency, seen, counts), logits - 0.5 * counts)  # per occurrence
    negative = SamplingConfig(presence_penalty=-1.0)  # encourages repetition
    assert (penalize(logits, negative, seen, counts)[counts > 0] > logits[counts > 0]).all()
    assert torch.equal(penalize(logits, SamplingConfig(), seen, counts), logits)  # defaults: all off


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(max_new_tokens=16, temperature=0, presence_penalty=2.0),
        SamplingConfig(max_new_tokens=16, temperature=0, frequency_penalty=1.5),
        SamplingConfig(max_new_tokens=16, temperature=0, repetition_penalty=3.0),
    ],
    ids=["presence", "frequency", "repetition"],
)
def test_the_engine_applies_each_penalty_to_each_request(cfg):
    """A greedy request with a penalty follows a full-forward reference that applies it, and differs from
    the same request without it (so a penalty the engine ignored would fail here)."""
    gpt, prompt = model(), [5, 9, 1, 30, 2]
    context, generated = list(prompt), []
    with torch.no_grad():
        for _ in range(cfg.max_new_tokens):
            seen = torch.zeros(1, gpt.config.vocab_size, dtype=torch.bool)
            seen[0, context] = True
            counts = torch.bincount(
                torch.tensor(generated, dtype=torch.long), minlength=gpt.config.vocab_size
            )
            token = int(penalize(gpt(torch.tensor([context]))[:, -1], cfg, seen, counts[None]).argmax())
            context.append(token)
            generated.append(token)
    plain = SamplingConfig(max_new_tokens=16, temperature=0)
    engine = Engine(gpt, max_batch=2)
    with_penalty, without = engine.submit(Request(prompt, cfg)), engine.submit(Request(prompt, plain))
    engine.run_until_idle()  # the two share the batch: each keeps its own options
    assert with_penalty.tokens == generated
    assert without.tokens != generated


def test_the_penalties_travel_in_the_sampling_config_and_are_checked_there():
    req = Request([1, 2], SamplingConfig(presence_penalty=0.5, frequency_penalty=-0.25))
    assert (req.cfg.presence_penalty, req.cfg.frequency_penalty) == (0.5, -0.25)
    with pytest.raises(GPT2KitError, match=r"presence_penalty=3.0 must be in \[-2, 2\]"):
        SamplingConfig(presence_penalty=3.0)


# -- stop strings, streaming and not -------------------------------------------------------------------------
def test_a_stop_string_spanning_tokens_is_honoured_identically_streaming_and_not():
    gpt, tok = model(), tokenizer()
    prompt = tok.encode("Hello")
    free = generate(gpt, [prompt], SamplingConfig(max_new_tokens=24, temperature=0), tok)[0].text
    stop = free[7:10]  # three characters: three tokens of this char tokenizer
    assert len(tok.encode(stop)) == 3 and stop not in free[:7]
    cfg = SamplingConfig(max_new_tokens=24, temperature=0, stop=[stop])
    whole = generate(gpt, [prompt], cfg, tok)[0]
    assert whole.text == free[: free.index(stop)] and whole.finish_reason == "stop"
    pieces = list(stream_text(gpt, tok, prompt, cfg))  # the one-prompt stream
    assert "".join(pieces) == whole.text and len(pieces) > 1
    events = []  # and a listener of the continuous-batching engine, sharing its batch with another request
    engine = Engine(gpt, tok, max_batch=2)
    engine.submit(Request(tok.encode("Hi"), SamplingConfig(max_new_tokens=30, temperature=0)))
    req = engine.submit(Request(prompt, cfg, events.append))
    engine.run_until_idle()
    streamed = "".join(e.text for e in events)
    assert streamed == whole.text == engine.text(req)
    assert events[-1].finish_reason == "stop" and all(stop[:1] not in e.text[-1:] for e in events[:-1])


# -- prefill: batched, chunked --------------------------------------------------------------------------------
def test_requests_admitted_together_are_prefilled_as_one_batch(monkeypatch):
    gpt = model()
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [5, 3], [5], [8, 9, 7, 9]]
    cfg = SamplingConfig(max_new_tokens=10, temperature=0)
    alone = [generate(gpt, [p], cfg)[0].tokens for p in prompts]
    engine = Engine(gpt, max_batch=4)
    widths = []
    original = Engine._prefill_batch
    monkeypatch.setattr(
        Engine, "_prefill_batch", lambda self, reqs: widths.append(len(reqs)) or original(self, reqs)
    )
    reqs = [engine.submit(Request(p, cfg)) for p in prompts]
    engine.run_until_idle()
    assert widths == [4]  # one forward for the four prompts
    assert [r.tokens for r in reqs] == alone


def test_a_long_prompt_is_prefilled_in_chunks_with_the_same_result():
    gpt = model()
    prompt = [(7 * i) % 60 + 1 for i in range(25)]
    cfg = SamplingConfig(max_new_tokens=6, temperature=0)
    chunked = Engine(gpt, max_batch=1, prefill_tokens=4)
    req = chunked.submit(Request(prompt, cfg))
    chunked.run_until_idle()
    assert req.tokens == generate(gpt, [prompt], cfg)[0].tokens


def test_a_prompt_that_continues_a_kept_row_computes_only_the_rest_with_the_same_result():
    gpt = model()
    cfg = SamplingConfig(max_new_tokens=6, temperature=0)
    engine = Engine(gpt, max_batch=1, prefill_tokens=4)  # the rest is prefilled in chunks too
    first = engine.submit(Request([3, 1, 4, 1, 5], cfg, keep_cache=True))
    engine.run_until_idle()
    follow = first.prompt + first.tokens + [9, 2, 6, 5, 3, 5]
    kept, fresh = [], []
    second = engine.submit(Request(follow, cfg, kept.append, logprobs=0, keep_cache=True))
    engine.run_until_idle()
    assert second.reused == 5 + 6 - 1  # the last sampled token was never fed
    alone_engine = Engine(gpt, max_batch=1)
    alone = alone_engine.submit(Request(follow, cfg, fresh.append, logprobs=0))
    alone_engine.run_until_idle()
    assert second.tokens == alone.tokens
    got = [lp.logprob for ev in kept for lp in ev.logprobs]
    assert got == pytest.approx([lp.logprob for ev in fresh for lp in ev.logprobs], abs=1e-4)


def test_the_loaded_model_s_config_is_json(lora_ckpt):
    json.dumps(load_for_inference(lora_ckpt).config)  # plain data, for logs and the server's /v1/models


def test_fit_conversation_drops_the_oldest_turns_and_keeps_the_system_prompt(lora_ckpt):
    from gpt2kit.chat.session import fit_conversation
    from gpt2kit.chat.template import ChatEncoder, Message

    loaded = load_for_inference(lora_ckpt)
    encoder = ChatEncoder(loaded.require_chat_template(), loaded.require_tokenizer())
    system = Message("system", "be")
    turns = [Message("user", "aaaa"), Message("assistant", "bbbb"), Message("user", "cccc"),
             Message("assistant", "dddd"), Message("user", "eeee")]  # fmt: skip
    render = encoder.tokenizer.decode
    whole = fit_conversation(encoder, [system, *turns], block_size=64, reply_room=8)
    assert whole.dropped == 0 and render(whole.ids) == encoder.render([system, *turns]) + "<|assistant|>"
    fitted = fit_conversation(encoder, [system, *turns], block_size=32, reply_room=8)  # 24 tokens of room
    assert fitted.dropped == 2 and len(fitted.ids) <= 24
    assert render(fitted.ids) == encoder.render([system, *turns[2:]]) + "<|assistant|>"
    long = fit_conversation(encoder, [system, Message("user", "x" * 40)], block_size=32, reply_room=8)
    assert long.cut > 0 and len(long.ids) == 24 and render(long.ids).startswith(encoder.render([system]))
    with pytest.raises(GPT2KitError, match="the system prompt is .* too long"):
        fit_conversation(encoder, [Message("system", "s" * 40), turns[0]], block_size=32, reply_room=8)
