"""The continuous-batching engine: a request's output does not depend on who shares the batch.

Tiny untrained models (2 layers, width 32): the tests check how requests are run, not what they say.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gpt2kit import GPTConfig
from gpt2kit.decoding import BatchingEngine, Event, QueueFull, Request, SamplingConfig, generate
from gpt2kit.model import GPT
from gpt2kit.nn import RotaryPosition, SlidingWindowAttention
from gpt2kit.tokenizers import CharTokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?"


def tiny_model(block_size: int = 64, seed: int = 0, **components) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=40, bias=False)
    return GPT(cfg, **components).eval()


def prompts(n: int, seed: int = 3, vocab: int = 40, lo: int = 1, hi: int = 30) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (n_,), generator=g).tolist() for n_ in lengths]


def greedy(n: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, temperature=0, top_k=None, stop_at_eot=False)


@pytest.mark.parametrize(
    "components",
    [{}, {"position": RotaryPosition}, {"attention": lambda c: SlidingWindowAttention(c, window=8)}],
    ids=["gpt2", "rope", "sliding_window"],
)
def test_greedy_alone_equals_beside_seven_others(components):
    model = tiny_model(**components)
    ps = prompts(8)
    lengths = [
        5,
        17,
        9,
        30,
        2,
        12,
        25,
        7,
    ]  # mixed output lengths: requests leave the batch at different steps
    alone = [
        BatchingEngine(model, max_batch=8).complete([p], greedy(n))[0].tokens
        for p, n in zip(ps, lengths, strict=True)
    ]
    together = BatchingEngine(model, max_batch=8).complete(ps, [greedy(n) for n in lengths])
    assert [r.tokens for r in together] == alone
    assert [len(t) for t in alone] == lengths
    # and the same tokens as the static-batch generator, run on one prompt at a time
    assert [generate(model, [p], greedy(n))[0].tokens for p, n in zip(ps, lengths, strict=True)] == alone


def test_requests_join_a_running_batch_at_token_boundaries():
    model = tiny_model()
    ps = prompts(3)
    engine = BatchingEngine(model, max_batch=4)
    first = engine.submit(Request(ps[0], greedy(20)))
    for _ in range(5):
        engine.step()
    assert len(first.tokens) > 5 and not first.done
    late = [engine.submit(Request(p, greedy(6))) for p in ps[1:]]
    engine.step()
    assert all(len(r.tokens) >= 1 for r in late)  # prefilled while `first` kept decoding
    engine.run_until_idle()
    assert engine.snapshot().active == 0
    assert first.tokens == BatchingEngine(model).complete([ps[0]], greedy(20))[0].tokens
    assert [r.tokens for r in late] == [
        BatchingEngine(model).complete([p], greedy(6))[0].tokens for p in ps[1:]
    ]


def test_more_requests_than_slots_wait_and_all_finish():
    model = tiny_model()
    ps = prompts(10)
    engine = BatchingEngine(model, max_batch=3)
    reqs = engine.complete(ps, [greedy(4 + i % 3) for i in range(10)])  # slots are reused, at staggered steps
    assert all(r.finish_reason == "length" and len(r.tokens) == 4 + i % 3 for i, r in enumerate(reqs))
    alone = [BatchingEngine(model).complete([p], greedy(4 + i % 3))[0].tokens for i, p in enumerate(ps)]
    assert [r.tokens for r in reqs] == alone
    assert engine.snapshot().active == 0 and engine.snapshot().queued == 0


def test_cancel_frees_the_slot_at_the_next_step():
    model = tiny_model()
    engine = BatchingEngine(model, max_batch=1)
    a = engine.submit(Request(prompts(1)[0], greedy(50)))
    b = engine.submit(Request(prompts(1, seed=4)[0], greedy(3)))
    engine.step()
    assert a.slot == 0 and b.slot is None  # b waits for the only slot
    a.cancel()
    engine.step()
    assert a.finish_reason == "abort" and b.slot == 0
    engine.run_until_idle()
    assert b.finish_reason == "length"


def test_queue_limit():
    engine = BatchingEngine(tiny_model(), max_batch=1, max_queue=2)
    for _ in range(3):  # one for the free slot, two waiting
        engine.submit(Request([1], greedy(2)))
    with pytest.raises(QueueFull):
        engine.submit(Request([1], greedy(2)))


def test_seeded_sampling_is_reproducible_whoever_shares_the_batch():
    model = tiny_model()
    ps = prompts(4)
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=None, top_p=0.9, seed=7, stop_at_eot=False)
    alone = BatchingEngine(model).complete([ps[0]], cfg)[0].tokens
    together = BatchingEngine(model).complete(ps, cfg)
    assert together[0].tokens == alone
    assert len({tuple(r.tokens) for r in together}) > 1


def test_stop_strings_and_tokens_end_a_request_like_generate():
    tok = CharTokenizer(special_tokens=["<|endoftext|>"])
    tok.train([ALPHABET])
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.vocab_size, bias=False)
    model = GPT(cfg).eval()
    prompt = tok.encode("hello there")
    free = BatchingEngine(model, tok).complete([prompt], greedy(30))[0]
    text = tok.decode(free.tokens)
    stop = text[5:7]  # a piece of what it will write: the completion must end before it
    cut = SamplingConfig(max_new_tokens=30, temperature=0, top_k=None, stop=[stop], stop_at_eot=False)
    engine = BatchingEngine(model, tok)
    req = engine.complete([prompt], cut)[0]
    expected = generate(model, [prompt], cut, tok)[0]
    assert engine.text(req) == expected.text == text[: text.find(stop)]
    assert req.finish_reason == "stop"
    stop_id = free.tokens[3]
    by_id = BatchingEngine(model, tok).complete(
        [prompt], SamplingConfig(max_new_tokens=30, temperature=0, top_k=None, stop_token_ids=[stop_id])
    )[0]
    assert by_id.tokens == free.tokens[: free.tokens.index(stop_id)] and by_id.finish_reason == "stop"


def test_a_context_that_fills_the_block_slides_like_generate():
    model = tiny_model(block_size=32)
    p = prompts(1, lo=20, hi=21)[0]
    ours = BatchingEngine(model, max_batch=2).complete([p, p[:5]], greedy(40))
    assert ours[0].tokens == generate(model, [p], greedy(40))[0].tokens
    assert len(ours[0].tokens) == 40


def test_logprobs_match_a_full_forward():
    model = tiny_model()
    p = prompts(1, lo=6, hi=7)[0]
    engine = BatchingEngine(model)
    req = engine.submit(Request(p, greedy(4), logprobs=3, prompt_logprobs=True))
    events: list[Event] = []
    req.listener = events.append
    engine.run_until_idle()
    seq = p + req.tokens
    with torch.no_grad():
        lp = model(torch.tensor([seq]))[0].log_softmax(-1)  # (T, vocab)
    expected = [lp[j - 1, seq[j]].item() for j in range(1, len(seq))]
    got = [x.logprob for x in req.prompt_logprobs[1:]] + [x.logprob for e in events for x in e.logprobs]
    assert req.prompt_logprobs[0] is None
    assert got == pytest.approx(expected, abs=1e-4)
    first = events[0].logprobs[0]
    assert first.top[0][0] == first.token and len(first.top) == 3  # greedy: the top token is the one chosen
    assert events[-1].finish_reason == "length"


def test_engine_thread_serves_concurrent_submitters_and_stops_cleanly():
    model = tiny_model()
    engine = BatchingEngine(model, max_batch=4)
    engine.start()
    done = threading.Event()
    finals: list[str] = []
    ps = prompts(6)

    def listen(ev: Event) -> None:
        if ev.finish_reason:
            finals.append(ev.finish_reason)
            if len(finals) == len(ps):
                done.set()

    reqs = [engine.submit(Request(p, greedy(8), listener=listen)) for p in ps]
    assert done.wait(30)
    assert [r.tokens for r in reqs] == [BatchingEngine(model).complete([p], greedy(8))[0].tokens for p in ps]
    long = engine.submit(Request(ps[0], greedy(10_000), listener=listen))
    engine.stop()
    assert long.finish_reason == "abort" and finals[-1] == "abort"


def test_a_burst_at_an_idle_engine_is_prefilled_before_the_first_decode(monkeypatch):
    """Clients that start together arrive a little apart: the idle engine gathers them (while each comes
    within the gap of the last) and admits them all, whatever the per-step prefill budget, so every one
    has its first token after the same step; a request after a pause is a new burst. (The gap is widened
    here so that the test does not depend on how fast this machine's threads wake.)"""
    from gpt2kit.decoding import engine as engine_module

    monkeypatch.setattr(engine_module, "BURST_GAP_S", 0.25)
    monkeypatch.setattr(engine_module, "BURST_WAIT_S", 2.0)
    engine = BatchingEngine(tiny_model(), max_batch=4, prefill_tokens=8)  # budget: 1-2 prompts per step
    first_step: dict[int, int] = {}
    done = threading.Event()

    def listener(i: int):
        def listen(ev: Event) -> None:
            if ev.tokens and i not in first_step:
                first_step[i] = engine.stats.steps_total
            if ev.finish_reason and len(first_step) == 5:
                done.set()

        return listen

    engine.start()
    try:
        for i, p in enumerate(prompts(4, lo=6, hi=7)):
            engine.submit(Request(p, greedy(3), listener=listener(i)))
            time.sleep(0.02)  # well within the gap
        while len(first_step) < 4:
            time.sleep(0.01)
        time.sleep(0.5)  # longer than the gap: the next request is a burst of its own
        engine.submit(Request(prompts(1, seed=9)[0], greedy(3), listener=listener(4)))
        assert done.wait(30)
    finally:
        engine.stop()
    assert len({first_step[i] for i in range(4)}) == 1, first_step
    assert first_step[4] > first_step[0]
