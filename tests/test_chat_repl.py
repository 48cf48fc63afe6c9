"""The chat REPL: multi-turn history, KV-cache reuse across turns, trimming at the context, commands, errors.

The model is tiny and untrained (a character vocabulary plus the chat tokens): the tests check what the
model is shown and how it is run, not what it says.
"""

from __future__ import annotations

import functools
import io
import re

import pytest
import torch

from gpt2kit import GPT2KitError, GPTConfig
from gpt2kit.chat import ChatSession, RoleTokensTemplate
from gpt2kit.checkpoint import load_module, save_checkpoint
from gpt2kit.commands import main
from gpt2kit.commands.chat import interactive
from gpt2kit.decoding import Engine, Request, SamplingConfig, generate
from gpt2kit.nn import LayerNorm
from gpt2kit.tokenizers import CharTokenizer
from gpt2kit.training.lit import GPTLitModule

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ?!.,'"
GREEDY = ["--temperature", "0", "--max_new_tokens", "6"]


def tiny_checkpoint(path, block_size=64, chat=True, seed=0, alphabet=ALPHABET):
    """A random 2-layer char model (with RoleTokensTemplate when ``chat``), saved at ``path``."""
    tok = CharTokenizer(special_tokens=["<|endoftext|>"])
    tok.train([alphabet])
    if chat:
        tok.add_special_tokens(RoleTokensTemplate().special_tokens())
    torch.manual_seed(seed)
    arch = GPTConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=tok.vocab_size, bias=False
    )
    module = GPTLitModule(arch, norm=functools.partial(LayerNorm, bias=False))
    module.tokenizer = tok
    if chat:
        module.chat_template = RoleTokensTemplate().to_dict()
    save_checkpoint(module, path)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("chat") / "chat.ckpt")


@pytest.fixture(scope="module")
def short_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("chat") / "short.ckpt", block_size=48)


def prompts(stderr: str) -> list[tuple[int, int, int, str]]:
    """(tokens, reused, dropped, text) of each prompt that --show_prompt printed."""
    found = re.findall(
        r"\[prompt: (\d+) tokens, (\d+) from the KV cache, (\d+) message\(s\) dropped\]\n(.*)", stderr
    )
    return [(int(a), int(b), int(c), text) for a, b, c, text in found]


def chat(monkeypatch, capsys, *args, stdin=""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    main(["chat", *args])
    out = capsys.readouterr()
    return out.out, out.err


def test_stdin_conversation_keeps_history_reuses_the_cache_and_resets(ckpt, monkeypatch, capsys):
    lines = "Hello there\n\nWhat did I say?\n/reset\nAgain\n/exit\nnever sent\n"
    out, err = chat(monkeypatch, capsys, "--ckpt", ckpt, "--show_prompt", "true", *GREEDY, stdin=lines)
    assert len(out.splitlines()) == 3  # one reply per message; the blank line and commands send nothing
    (n1, reused1, _, p1), (n2, reused2, _, p2), (n3, reused3, _, p3) = prompts(err)
    assert p1 == "<|user|>Hello there<|end|><|assistant|>"
    first_reply = out.splitlines()[0]
    # the second answer is conditioned on the first turn: its prompt holds both turns
    assert p2 == f"{p1}{first_reply}<|end|><|user|>What did I say?<|end|><|assistant|>"
    assert reused1 == 0 and reused2 >= n1  # the first prompt (and the reply) came from the KV cache
    assert "(conversation cleared)" in err
    assert p3 == "<|user|>Again<|end|><|assistant|>" and "never sent" not in err
    assert reused3 == 0


def test_reply_with_the_kept_cache_equals_a_fresh_computation(ckpt):
    module = load_module(ckpt)
    tok = module.tokenizer
    cfg = SamplingConfig(max_new_tokens=8, temperature=0, stop_at_eot=False)
    engine = Engine(module.model, tok, max_batch=1)  # the chat session's: one slot, its row kept
    a = tok.encode("<|user|>abc<|end|><|assistant|>", allowed_special="all")
    first = engine.submit(Request(a, cfg, keep_cache=True))
    engine.run_until_idle()
    reply = first.tokens
    assert engine.kept[0] == a + reply[:-1]  # the last sampled token was never fed
    b = a + reply + tok.encode("<|end|><|user|>more please<|end|><|assistant|>", allowed_special="all")
    second = engine.submit(Request(b, cfg, keep_cache=True))
    engine.run_until_idle()
    assert second.reused == len(a) + len(reply) - 1
    assert second.tokens == generate(module.model, [b], cfg, tok)[0].tokens  # same as without the cache
    engine.forget()
    third = engine.submit(Request(b, cfg, keep_cache=True))
    engine.run_until_idle()
    assert third.reused == 0 and third.tokens == second.tokens
    other = engine.submit(Request(a, cfg))  # a request that does not keep its row starts afresh
    engine.run_until_idle()
    assert other.reused == 0 and engine.kept[0] is None


def test_history_is_trimmed_at_the_context_limit(short_ckpt, monkeypatch, capsys, caplog):
    messages = '["first message here", "second message now", "third one", "and a fourth message"]'
    out, err = chat(monkeypatch, capsys, "--ckpt", short_ckpt, "--message", messages, "--show_prompt", "true",
                    "--system", "Be kind.", *GREEDY)  # fmt: skip
    shown = prompts(err)
    assert len(shown) == 4 and len(out.splitlines()) == 4
    assert all(
        n <= 48 - 6 for n, *_ in shown
    )  # the prompt leaves max_new_tokens free in the 48-token context
    assert any(dropped for _, _, dropped, _ in shown)
    assert all(text.startswith("<|system|>Be kind.<|end|><|user|>") for *_, text in shown)  # system stays
    last = shown[-1][3]
    assert "first message here" not in last and last.endswith(
        "<|user|>and a fourth message<|end|><|assistant|>"
    )
    assert "dropped the oldest" in caplog.text


def test_a_message_longer_than_the_context_keeps_its_end(short_ckpt, caplog):
    module = load_module(short_ckpt)
    session = ChatSession(
        module.model, module.tokenizer, RoleTokensTemplate(), SamplingConfig(max_new_tokens=4)
    )
    session.reply("x" * 43 + "the end")  # 50 tokens; the context holds 48, 4 of them for the reply
    assert session.prompt_text() == "<|user|>" + "x" * 34 + "the end<|end|><|assistant|>"
    assert len(session.prompt) == 48 - 4 and "it keeps its last 41" in caplog.text
    with pytest.raises(
        GPT2KitError, match="the system prompt is 60 tokens, too long for the model's 48-token"
    ):
        ChatSession(module.model, module.tokenizer, RoleTokensTemplate(), system="s" * 58)


def test_checkpoint_without_a_chat_template_is_one_clear_error(tmp_path, monkeypatch, capsys):
    base = tiny_checkpoint(tmp_path / "base.ckpt", chat=False)
    with pytest.raises(SystemExit) as exit_:
        chat(monkeypatch, capsys, "--ckpt", base, "--message", "hi")
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"error: checkpoint {base} was trained without a chat template")
    assert "fine-tune it into a chatbot first" in err[0] and "recipes/chat/topical-chat.yaml" in err[0]
    with pytest.raises(SystemExit):
        chat(monkeypatch, capsys, "--ckpt", base, "--message", "hi", "--template", "role_tokens")
    assert "lacks the role_tokens chat template's special tokens <|system|>" in capsys.readouterr().err


def test_interactive_loop(ckpt, monkeypatch, capsys):
    module = load_module(ckpt)
    session = ChatSession(
        module.model, module.tokenizer, RoleTokensTemplate(), SamplingConfig(max_new_tokens=3)
    )
    lines = iter(["hi", "/history", "/help", "/nope", "bye", "/exit", "not read"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    interactive(session, ckpt)
    out, err = capsys.readouterr()
    assert out.count("bot> ") == 2 and "<|user|>hi<|end|><|assistant|>" in out and "/reset" in out
    assert "unknown command /nope: the commands are /reset, /history, /exit, /help" in err
    assert [m.role for m in session.messages] == ["user", "assistant"] * 2
