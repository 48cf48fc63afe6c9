"""Chat data: templates, the loss mask, truncation, adapters, bad rows, preparation and packing.

No model is trained here (see test_chat_train.py and test_chat_repl.py for that).
"""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch

from gpt2kit import GPT2KitError
from gpt2kit.chat import (
    BadRow,
    ChatDataModule,
    ChatEncoder,
    ChatMLTemplate,
    ChatTemplate,
    EncodedTurn,
    Message,
    Piece,
    RoleTokensTemplate,
    build_sample,
    read_chatterbot,
    read_topical_chat,
)
from gpt2kit.chat.template import CHAT_TEMPLATE
from gpt2kit.commands import main
from gpt2kit.data import fetch_corpus
from gpt2kit.data.chat import IGNORE_INDEX, ChatCollate, pack
from gpt2kit.registry import registry
from gpt2kit.tokenizers import CharTokenizer, GPT2Tokenizer

CONVERSATION = [
    Message("system", "Answer briefly."),
    Message("user", "Hi! Is <|end|> a token?"),  # a marker's string in text stays text
    Message("assistant", "Hello. No, it is text."),
    Message("user", "And football?"),
    Message("assistant", "I like it."),
    Message("user", "Bye"),  # after the last assistant turn: nothing to learn
]


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


def with_template(tok, template):
    tok = GPT2Tokenizer() if tok is None else tok
    tok.add_special_tokens(template.special_tokens())
    return ChatEncoder(template, tok)


@pytest.fixture(scope="module", params=[RoleTokensTemplate(), ChatMLTemplate()], ids=lambda t: t.name)
def encoder(request, gpt2):
    import copy

    tok = copy.deepcopy(gpt2)
    tok.add_special_tokens(request.param.special_tokens())
    return ChatEncoder(request.param, tok)


def expected_layout(encoder, messages):
    """Ids and learned mask built independently of the encoder, from each template's documented layout."""
    tok = encoder.tokenizer
    ids, mask = [], []

    def add(part, learned, special=False):
        new = [tok.token_id(part)] if special else tok.encode(part)
        ids.extend(new)
        mask.extend([learned] * len(new))

    for m in messages:
        a = m.role == "assistant"
        if isinstance(encoder.template, RoleTokensTemplate):
            add(f"<|{m.role}|>", False, True), add(m.content, a), add("<|end|>", a, True)
        else:
            add("<|im_start|>", False, True), add(f"{m.role}\n", False), add(m.content, a)
            add("<|im_end|>", a, True), add("\n", False)
    return ids, mask


# --- the template and the mask ---------------------------------------------------------------------------


def test_templates_are_registered_components():
    assert {"role_tokens", "chatml"} <= set(registry("chat_template").names())
    assert CHAT_TEMPLATE.get("chatml") is ChatMLTemplate
    assert ChatTemplate.from_dict(RoleTokensTemplate().to_dict()) == RoleTokensTemplate()


def test_render_tokenize_decode_round_trips(encoder):
    turns = encoder.encode(CONVERSATION)
    ids = [i for t in turns for i in t.ids]
    expected_ids, expected_mask = expected_layout(encoder, CONVERSATION)
    assert ids == expected_ids
    assert [m for t in turns for m in t.mask] == expected_mask
    text = encoder.tokenizer.decode(ids)
    assert text == encoder.render(CONVERSATION)
    if isinstance(encoder.template, ChatMLTemplate):
        assert text.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nHi!")
    else:
        assert text.startswith("<|system|>Answer briefly.<|end|><|user|>Hi! Is <|end|> a token?<|end|>")
    # the user's "<|end|>" is text: the only special ids are the template's markers, one set per turn
    specials = set(encoder.special_ids)
    assert sum(i in specials for i in ids) == 2 * len(CONVERSATION)  # a start and an end per turn


def test_mask_covers_exactly_every_assistant_turn_and_its_end(encoder):
    sample = build_sample(encoder.encode(CONVERSATION), window=1000)
    ids = torch.tensor(sample.ids)
    x, y = ChatCollate(pad_id=0)([(ids, torch.tensor(sample.mask))])
    learned = y[0][y[0] != IGNORE_INDEX].tolist()
    end = encoder.template.end_of_turn
    assert encoder.tokenizer.decode(learned) == f"Hello. No, it is text.{end}I like it.{end}"
    assert (x[0, 1:] == y[0, :-1]).logical_or(y[0, :-1] == IGNORE_INDEX).all()  # targets are shifted inputs
    # nothing of the system, user turns, role headers or the trailing user turn is learned
    assert encoder.tokenizer.decode(sample.ids).endswith(f"I like it.{end}" + ("\n" if "im" in end else ""))


def test_collate_pads_right_and_masks_padding(gpt2):
    a = (torch.tensor([1, 2, 3, 4, 5]), torch.tensor([False, False, True, True, True]))
    b = (torch.tensor([7, 8, 9]), torch.tensor([False, True, True]))
    x, y = ChatCollate(pad_id=50256)([a, b])
    assert x.tolist() == [[1, 2, 3, 4], [7, 8, 50256, 50256]]
    assert y.tolist() == [[-100, 3, 4, 5], [8, 9, -100, -100]]
    x, y = ChatCollate(pad_id=0, length=6)([b])
    assert x.shape == y.shape == (1, 6) and y[0, 2:].eq(-100).all()


# --- truncation -------------------------------------------------------------------------------------------


def turn(role, n, start=0):
    learned = role == "assistant"
    ids = [1000 + start + i for i in range(n)]
    return EncodedTurn(role, ids, [False] + [learned] * (n - 1))  # header not learned


def test_truncation_drops_whole_oldest_turns_keeps_system_and_last_assistant():
    turns = [turn("system", 4), turn("user", 10, 100), turn("assistant", 10, 200), turn("user", 10, 300),
             turn("assistant", 10, 400), turn("user", 6, 500)]  # fmt: skip
    whole = build_sample(turns, window=1000)
    assert not whole.truncated and len(whole.ids) == 44  # the trailing user turn is dropped, not truncation
    s = build_sample(turns, window=33)
    assert s.truncated and not s.cut
    assert s.ids == turns[0].ids + turns[3].ids + turns[4].ids  # oldest turns dropped whole; system kept
    s = build_sample(turns, window=23)
    assert s.ids == turns[0].ids + turns[4].ids  # the system message and the last assistant turn
    s = build_sample(turns, window=12)
    assert s.ids == turns[4].ids and s.truncated and not s.cut  # the system message goes last
    s = build_sample(turns, window=6)
    assert s.cut and s.ids == turns[4].ids[-6:] and any(s.mask[1:])  # cut from the left, still learned


def test_truncation_invariants_on_random_conversations():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 9)
        roles = (["system"] if rng.random() < 0.3 else []) + [
            rng.choice(["user", "assistant"]) for _ in range(n)
        ]
        turns = [turn(r, rng.randint(2, 30), 100 * k) for k, r in enumerate(roles)]
        window = rng.randint(2, 120)
        s = build_sample(turns, window)
        if not any(t.role == "assistant" for t in turns):
            assert s is None
            continue
        last = max(i for i, t in enumerate(turns) if t.role == "assistant")
        assert s is not None and len(s.ids) == len(s.mask) <= window
        assert any(s.mask[1:]), "a sample with no learned target"
        assert s.ids[-len(turns[last].ids) :] == turns[last].ids or (
            s.cut and turns[last].ids[-window:] == s.ids
        )
        if (
            not s.cut
        ):  # whole turns: the system message (maybe) and a run of turns ending at the last assistant
            kept = [t for t in turns[: last + 1] if t.ids[0] in s.ids]
            assert [i for t in kept for i in t.ids] == s.ids
            body = [t for t in kept if t.role != "system"]
            assert body == turns[last + 1 - len(body) : last + 1]
            assert [m for t in kept for m in t.mask] == s.mask


# --- adapters -----------------------------------------------------------------------------------------------


def test_topical_chat_conversations_become_both_readings():
    path = fetch_corpus("topical-chat") / "valid_freq.json"
    rows = list(read_topical_chat(path, "both"))
    assert len(rows) == 2 * 539 and not any(isinstance(r, BadRow) for r in rows)
    first, second = rows[0], rows[1]
    assert first.group == second.group and "t_a2b769a0-c082-4c26-8d8d-e2c5b8a79d93" in first.where
    assert first.messages[:2] == [
        Message("user", "Are you a football fan?"),
        Message("assistant", "yes, I'm. a football fan."),
    ]
    assert second.messages[0] == Message("assistant", "Are you a football fan?")
    assert [m.role for m in second.messages] == ["assistant", "user"] * 11
    raw = json.loads(path.read_text())
    for conv, row in zip(list(raw.values())[:5], rows[0:10:2], strict=True):  # agent_2 is the assistant
        assert [m.content for m in row.messages] == [t["message"].strip() for t in conv["content"]]
        assert [m.role == "assistant" for m in row.messages] == [
            t["agent"] == "agent_2" for t in conv["content"]
        ]
    one = list(read_topical_chat(path, "agent_2"))
    assert len(one) == 539 and one[0].messages == first.messages


def test_topical_chat_bad_turn_is_reported_with_its_location(tmp_path):
    path = tmp_path / "tc.json"
    path.write_text(json.dumps({
        "c1": {"content": [{"agent": "agent_1", "message": "hi"}, {"agent": "agent_3", "message": "yo"}]},
        "c2": {"content": [{"agent": "agent_1", "message": "hi"}, {"agent": "agent_2", "message": "yo"}]},
    }))  # fmt: skip
    bad, good = list(read_topical_chat(path, "agent_2"))
    assert (
        isinstance(bad, BadRow)
        and str(bad) == f"{path}: conversation c1: turn 2 has the agent 'agent_3', not agent_1 or agent_2"
    )
    assert good.messages == [Message("user", "hi"), Message("assistant", "yo")]


def test_chatterbot_conversations_and_its_one_bad_row():
    root = fetch_corpus("chatterbot-corpus-english")
    rows = list(read_chatterbot(root / "greetings.yml"))
    assert rows[0].messages == [Message("user", "Hello"), Message("assistant", "Hi")]
    assert rows[0].where == f"{root / 'greetings.yml'}:4"
    long = list(read_chatterbot(root / "conversations.yml"))[0]
    assert long.messages == [
        Message("user", "Good morning, how are you?"),
        Message("assistant", "I am doing well, how about you?"),
        Message("user", "I'm also good."),
        Message("assistant", "That's good to hear."),
        Message("user", "Yes it is."),
    ]
    trivia = list(read_chatterbot(root / "trivia.yml"))
    bad = [r for r in trivia if isinstance(r, BadRow)]
    assert len(bad) == 1 and bad[0].where == f"{root / 'trivia.yml'}:35"
    assert "conversation 14 is not a list of utterances" in bad[0].problem
    assert next(r for r in trivia if r.where.endswith(":33")).messages[1] == Message("assistant", "1984")


# --- bad input: one line each, with the location ------------------------------------------------------------


BAD_LINES = {
    "unknown role": ('{"messages": [{"role": "bot", "content": "hi"}]}', "message 1 has the unknown role 'bot': use one of system, user, assistant"),
    "empty": ('{"messages": []}', "the conversation is empty"),
    "no assistant": ('{"messages": [{"role": "user", "content": "hi"}]}', "the conversation has no assistant message"),
    "bad json": ('{"messages": [', "not valid JSON"),
}  # fmt: skip
GOOD_LINE = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_jsonl_row_is_one_error_line_with_file_and_line(case, tmp_path, capsys):
    path = tmp_path / "chats.jsonl"
    line, expected = BAD_LINES[case]
    path.write_text(f"{GOOD_LINE}\n\n{line}\n")
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--data", "ChatDataModule", "--data.init_args.source", str(path),
              "--data.init_args.tokenizer", "CharTokenizer", "--data.init_args.cache", str(tmp_path / "c")])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}:3: ") and expected in err[0], err
    assert "on_bad_row skip" in err[0]


def test_skipped_bad_rows_are_reported_and_counted(tmp_path, caplog):
    path = tmp_path / "chats.jsonl"
    path.write_text(
        "\n".join([GOOD_LINE] * 12 + [BAD_LINES["no assistant"][0], BAD_LINES["unknown role"][0]])
    )
    dm = ChatDataModule(
        str(path), CharTokenizer(), on_bad_row="skip", block_size=32, cache=str(tmp_path / "c")
    )
    meta = dm.prepared().meta
    assert meta["bad_rows"] == 2 and meta["bad_row_list"][0].startswith(
        f"{path}:13: the conversation has no assistant"
    )
    assert meta["train"]["samples"] + meta["val"]["samples"] == 12
    assert f"left out {path}:14: message 1 has the unknown role 'bot'" in caplog.text


def test_a_plain_text_corpus_is_not_chat_data_and_vice_versa(tmp_path):
    with pytest.raises(
        GPT2KitError, match="holds plain text, not conversations: read it with TextDataModule"
    ):
        ChatDataModule("tinyshakespeare", CharTokenizer()).prepared()
    from gpt2kit.data import TextDataModule

    with pytest.raises(
        GPT2KitError, match="holds conversations, not plain text: read it with ChatDataModule"
    ):
        TextDataModule("topical-chat").prepared()
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(GPT2KitError, match="cannot tell how to read a '.txt' file as conversations"):
        ChatDataModule(str(tmp_path / "notes.txt"), CharTokenizer()).prepared()


# --- preparation, dropping, packing --------------------------------------------------------------------------


@CHAT_TEMPLATE.register("test_end_not_learned")
class EndNotLearned(RoleTokensTemplate):
    """RoleTokensTemplate that does not learn the end-of-turn (so an empty reply has nothing to learn)."""

    def turn(self, role, content):
        header, body, end = super().turn(role, content)
        return [header, body, Piece(end.text, special=True)]


def test_samples_with_nothing_to_learn_are_dropped_and_counted(tmp_path):
    lines = [GOOD_LINE] * 20 + [
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}'
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines))
    dm = ChatDataModule(str(path), CharTokenizer(), template=EndNotLearned(), cache=str(tmp_path / "c"))
    meta = dm.prepared().meta
    assert meta["train"]["dropped"] + meta["val"]["dropped"] == 1
    assert meta["train"]["samples"] + meta["val"]["samples"] == 20
    # with the standard template the empty reply still teaches the model to stop: nothing is dropped
    meta = ChatDataModule(str(path), CharTokenizer(), cache=str(tmp_path / "c")).prepared().meta
    assert meta["train"]["dropped"] + meta["val"]["dropped"] == 0


@pytest.fixture(scope="module")
def topical(tmp_path_factory, gpt2):
    return ChatDataModule(
        "topical-chat", gpt2, block_size=64, batch_size=4, max_conversations=30,
        cache=str(tmp_path_factory.mktemp("prepared-chat")),
    )  # fmt: skip


def test_prepared_once_split_by_conversation_and_reused(topical, caplog):
    caplog.set_level(logging.INFO)
    prepared = topical.prepared()
    meta = prepared.meta
    assert meta["conversations"] == 30 and meta["vocab_size"] == 50257 + 4
    assert meta["train"]["readings"] == 2 * 27 and meta["val"]["readings"] == 2 * 3  # conversations 9, 19, 29
    assert set(prepared.groups("val").tolist()) == {9, 19, 29}  # both readings of a conversation: one split
    assert meta["train"]["truncated"] == meta["train"]["samples"] == 54  # ~500 tokens each, in 65
    assert meta["val"]["learned"] > 0 and meta["template"] == {
        "class_path": "gpt2kit.chat.template.RoleTokensTemplate",
        "init_args": {},
    }
    assert prepared.tokenizer.token_id("<|assistant|>") == 50259
    assert not list(prepared.path.parent.glob(".*tmp*"))
    mtime = (prepared.path / "train.bin").stat().st_mtime_ns
    again = ChatDataModule(
        "topical-chat", GPT2Tokenizer(), block_size=64, max_conversations=30, cache=str(topical.cache)
    )
    assert (
        again.prepared().path == prepared.path and (prepared.path / "train.bin").stat().st_mtime_ns == mtime
    )
    assert "reusing prepared data" in caplog.text
    other = ChatDataModule(
        "topical-chat", GPT2Tokenizer(), block_size=96, max_conversations=30, cache=str(topical.cache)
    )
    assert other.prepared().path != prepared.path  # another window: prepared again


def test_preparation_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    import gpt2kit.data.chat as chat_data

    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join([GOOD_LINE] * 30))
    calls = {"n": 0}
    real = chat_data.build_sample

    def dies(turns, window):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(turns, window)

    monkeypatch.setattr(chat_data, "build_sample", dies)
    dm = ChatDataModule(str(path), CharTokenizer(), cache=str(tmp_path / "c"))
    with pytest.raises(KeyboardInterrupt):
        dm.prepared()
    assert not any((tmp_path / "c").rglob("meta.json")) and not any((tmp_path / "c").rglob(".*tmp*"))
    monkeypatch.setattr(chat_data, "build_sample", real)
    assert (
        ChatDataModule(str(path), CharTokenizer(), cache=str(tmp_path / "c"))
        .prepared()
        .meta["train"]["samples"]
        == 27
    )


def test_batches_learn_assistant_tokens_only_and_packing_keeps_the_mask(topical):
    topical.setup("fit")
    prepared = topical.prepared()
    tok = prepared.tokenizer
    assistant, end = tok.token_id("<|assistant|>"), tok.token_id("<|end|>")
    others = {tok.token_id("<|user|>"), tok.token_id("<|system|>")}
    x, y = next(iter(topical.val_dataloader()))
    checked = 0
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        in_assistant = None  # unknown until the first marker (a sample may start inside a turn)
        for t, token in enumerate(row_x):
            if token == tok.eot_id:  # padding from here on (the last real token is only a target)
                break
            if t > 0 and in_assistant is not None:  # token t is learned iff it is in an assistant turn
                assert (row_y[t - 1] != IGNORE_INDEX) == in_assistant
                checked += 1
            if token == assistant:
                in_assistant = True
            elif token in others or token == end:
                in_assistant = False
    assert checked > 100

    def learned_targets(dataset, items):
        batch = ChatCollate(0)([dataset[i] for i in items])[1]
        return batch[batch != IGNORE_INDEX].tolist()

    from gpt2kit.data.chat import ChatDataset

    offsets, groups = prepared.offsets("train"), prepared.groups("train")
    windows = pack(np.diff(offsets), groups, window=65, seed=0)
    assert sorted(s for w in windows for s in w) == list(range(len(offsets) - 1))  # each sample once
    short = pack(np.full(40, 10), np.arange(40) // 2, window=65, seed=0)  # two readings per conversation
    assert all(len(set((np.arange(40) // 2)[w])) == len(w) for w in short)  # never together in a window
    assert max(len(w) for w in short) == 6
    packed = ChatDataset(prepared, "train", [[0, 2, 4]])
    single = ChatDataset(prepared, "train", [[0], [2], [4]])
    assert learned_targets(packed, [0]) == learned_targets(single, [0]) + learned_targets(
        single, [1]
    ) + learned_targets(single, [2])
    topical.pack = True
    x, y = next(iter(topical.train_dataloader()))
    assert x.shape[1] <= 64 and (y != IGNORE_INDEX).any()
    topical.pack = False
