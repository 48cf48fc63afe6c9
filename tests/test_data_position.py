"""The position in the data is a property of the run, not of the number of processes.

Unit level (the sampler alone, every rank simulated): a run stopped after k batches on W processes and
resumed on W' draws exactly the windows of the global order it had not trained on, for 4 -> 2, 2 -> 4 and
odd positions; the one position a new world cannot serve is one error line. BOS-aligned windows start at
document boundaries and resume the same way. The real-process audit (gloo, `fit`, kill -9) is in
tests/test_distributed_resume.py.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from gpt2kit import GPT2KitError
from gpt2kit.data.sampler import (
    BOSAlignedWindows,
    EpochOrder,
    RandomWindows,
    ResumableDataLoader,
    TrainSampler,
    chain_windows,
    document_starts,
    window_starts,
)


class _Identity(EpochOrder):
    """The i-th sample of every epoch is i: what each rank draws is its global index, so audits are exact."""

    name = "identity"

    def __init__(self, n: int) -> None:
        self.samples_per_epoch = n

    def items(self, seed, epoch, index):
        return index


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def _world(order, world, seed=3):
    return [TrainSampler(_Sized(10**6), order, seed=seed, num_replicas=world, rank=r) for r in range(world)]


def _train(samplers, batch, steps):
    """``steps`` batches on every rank (as a Trainer would draw them): [(step, rank, [items])]."""
    its = [iter(s) for s in samplers]
    out = []
    for step in range(steps):
        for rank, it in enumerate(its):
            out.append((step, rank, [next(it) for _ in range(batch)]))
    return out


def _audit(drawn: list[int], total: int) -> tuple[int, int]:
    """(repeated, skipped) of the global samples 0 .. total-1 (a multiset comparison)."""
    have, want = Counter(drawn), Counter(range(total))
    return sum((have - want).values()), sum((want - have).values())


@pytest.mark.parametrize(
    ("old", "new", "batch_old", "batch_new", "steps"),
    [(4, 2, 3, 3, 5), (2, 4, 3, 3, 7), (4, 2, 3, 6, 5), (1, 3, 5, 2, 3), (3, 2, 3, 2, 3), (3, 4, 1, 2, 5)],
)
def test_a_run_resumed_on_another_world_size_draws_exactly_the_windows_it_had_not(
    old, new, batch_old, batch_new, steps
):
    n = 1000
    before = _world(_Identity(n), old)
    drawn = _train(before, batch_old, steps)
    states = [s.state_dict(batches_done=steps, batch_size=batch_old) for s in before]
    assert all(st == states[0] for st in states)  # saved identically by every rank
    assert states[0]["samples_done"] == steps * old * batch_old  # the position is in windows, global

    after = _world(_Identity(n), new)
    for s in after:
        s.load_state_dict(states[0], batches_done=steps, batch_size=batch_new)
    left = [list(s) for s in after]
    assert len({len(x) for x in left}) == 1  # every rank the same number of items (DDP would hang otherwise)

    # each step of the new world consumes the next new × batch_new windows of the global order, split over ranks
    start = steps * old * batch_old
    for k in range(len(left[0]) // batch_new):
        step = sorted(i for x in left for i in x[k * batch_new : (k + 1) * batch_new])
        assert step == list(range(start, start + new * batch_new))
        start += new * batch_new

    everything = [i for _, _, items in drawn for i in items] + [i for x in left for i in x]
    assert _audit(everything, len(everything)) == (0, 0)
    assert n - len(everything) < new  # only the remainder no rank can take is left of the epoch


def test_the_position_keeps_counting_after_a_change_and_across_epochs():
    """4 -> 2 -> 4 processes: positions saved after a change are still global; a new epoch starts at 0."""
    n, b = 240, 5
    w4 = _world(_Identity(n), 4)
    drawn = _train(w4, b, 3)  # 60 windows
    state = w4[0].state_dict(3, b)
    w2 = _world(_Identity(n), 2)
    for s in w2:
        s.load_state_dict(state, batches_done=3, batch_size=b)
    its = [iter(s) for s in w2]
    drawn += [
        (0, r, [next(it) for _ in range(b)]) for _ in range(4) for r, it in enumerate(its)
    ]  # 40 windows
    state = w2[1].state_dict(3 + 4, b)  # Lightning counts on from 3: 7 batches per rank this epoch
    assert state["samples_done"] == 100
    w4 = _world(_Identity(n), 4)
    for s in w4:
        s.load_state_dict(state, batches_done=7, batch_size=b)
    assert [len(s) for s in w4] == [35] * 4
    loader = ResumableDataLoader(_Sized(10**6), batch_size=b, sampler=w4[0], drop_last=True)
    assert (
        len(loader) == 7 + 7
    )  # Lightning's count so far + the batches left: the epoch ends with the windows
    rest = [list(s) for s in w4]
    everything = [i for _, _, x in drawn for i in x] + [i for x in rest for i in x]
    assert _audit(everything, n) == (0, 0)

    w4[0].set_epoch(1)  # a new epoch: from its beginning
    assert len(w4[0]) == 60 and list(w4[0])[:2] == [0, 4]


def test_random_windows_are_the_same_order_on_any_world_size():
    order = RandomWindows().order(np.zeros(10_032, dtype=np.uint16), 32, None)
    assert order.samples_per_epoch == 10_000 // 32
    one = list(_world(order, 1, seed=7)[0])
    assert one == window_starts(7, 0, np.arange(len(one)), 10_000).tolist()
    two = [list(s) for s in _world(order, 2, seed=7)]
    for step in range(len(two[0]) // 6):  # batch 12 on one process == batch 6 on each of two
        assert sorted(one[12 * step : 12 * step + 12]) == sorted(
            two[0][6 * step : 6 * step + 6] + two[1][6 * step : 6 * step + 6]
        )


def test_keeping_the_global_batch_with_accumulation_and_the_position_a_new_world_cannot_serve():
    n, b = 1000, 4
    w4 = _world(_Identity(n), 4)
    _train(w4, b, 6)
    at6 = w4[0].state_dict(6, b)  # step 6 on 4 processes
    # 2 processes × accumulate 2 keep 16 windows per optimizer step; Lightning counts on from 6 (even): served
    w2 = _world(_Identity(n), 2)
    for s in w2:
        s.load_state_dict(at6, batches_done=6, batch_size=b, accumulate=2)
    first_step = sorted(i for s in w2 for i in list(s)[: 2 * b])
    assert first_step == list(range(96, 112))
    # at step 5 Lightning's count (5) is odd: the first optimizer step would hold 1 of its 2 micro-batches
    at5 = _world(_Identity(n), 4)[0].state_dict(5, b)
    with pytest.raises(GPT2KitError) as err:
        _world(_Identity(n), 2)[0].load_state_dict(at5, batches_done=5, batch_size=b, accumulate=2)
    message = str(err.value)
    assert "\n" not in message and "the first step would hold 1 of its 2 micro-batches" in message
    assert "data.batch_size" in message
    # the same world and batch resume as Lightning always did (its own rule for a partial accumulation)
    _world(_Identity(n), 4)[0].load_state_dict(at5, batches_done=5, batch_size=b, accumulate=2)


def test_a_position_in_another_order_is_refused():
    state = _world(_Identity(1000), 2)[0].state_dict(3, 4)
    for other, what in (
        (_world(_Identity(999), 2)[0], "samples_per_epoch"),
        (_world(_Identity(1000), 2, seed=4)[0], "seed"),
    ):
        with pytest.raises(GPT2KitError, match=f"another order \\({what}: checkpoint"):
            other.load_state_dict(state, 3, 4)
    legacy = {
        "seed": 3,
        "epoch": 0,
        "samples_done": 24,
        "samples_per_epoch": 1000,
    }  # before world_size was saved
    resumed = _world(_Identity(1000), 2)[0]
    resumed.load_state_dict(legacy, 3, 4)
    assert list(resumed)[:2] == [24, 26]


# -- BOS-aligned windows ---------------------------------------------------------------------------------------
EOT = 99


def _corpus(lengths, seed=0):
    """Documents of the given lengths, separated by EOT as gpt2kit's text shards are (none before the first)."""
    rng = np.random.default_rng(seed)
    parts, starts, pos = [], [], 0
    for i, n in enumerate(lengths):
        if i:
            parts.append([EOT])
            pos += 1
        starts.append(pos if i == 0 else pos - 1)  # a window opens at the EOT before a document (its BOS)
        parts.append(rng.integers(0, 90, n).tolist())
        pos += n
    return np.array([t for p in parts for t in p], dtype=np.uint16), np.array(starts)


def test_bos_aligned_windows_start_at_document_boundaries_and_never_overlap():
    lengths = np.random.default_rng(1).integers(1, 40, 300)
    tokens, starts = _corpus(lengths)
    assert np.array_equal(document_starts(tokens, EOT), starts)
    t = 16
    order = BOSAlignedWindows().order(tokens, t, EOT)
    table = np.sort(order.items(0, 0, np.arange(order.samples_per_epoch)))
    assert set(table.tolist()) <= set(starts.tolist())  # every window starts at a boundary
    assert all(tokens[s] == EOT for s in table if s)  # ... that is, at the BOS of a document (or at 0)
    assert table[0] == 0 and (np.diff(table) >= t).all()  # no input token twice in an epoch
    assert (table + t + 1 <= len(tokens)).all()
    # greedy: after each window, the first boundary at or after its end, none left out in between
    for a, b in zip(table[:-1], table[1:], strict=True):
        assert not ((starts >= a + t) & (starts < b)).any()
    # every window once per epoch, in an order that depends on (seed, epoch) only
    epoch0 = order.items(5, 0, np.arange(order.samples_per_epoch))
    assert sorted(epoch0.tolist()) == table.tolist()
    assert not np.array_equal(epoch0, order.items(5, 1, np.arange(order.samples_per_epoch)))


def test_bos_aligned_resumes_on_another_world_size_and_reads_in_chunks(monkeypatch):
    import gpt2kit.data.sampler as sampler_module

    tokens, _ = _corpus(np.random.default_rng(2).integers(1, 30, 2000))
    monkeypatch.setattr(sampler_module, "_SCAN", 1000)  # boundaries across read chunks are still found
    order = BOSAlignedWindows().order(tokens, 8, EOT)
    assert np.array_equal(document_starts(tokens, EOT), document_starts(tokens[:], EOT))
    full = order.items(11, 0, np.arange(order.samples_per_epoch)).tolist()
    w2 = _world(order, 2, seed=11)
    first = [i for _, _, x in _train(w2, 4, 9) for i in x]
    w3 = _world(order, 3, seed=11)
    state = w2[0].state_dict(9, 4)
    assert state["order"] == "bos_aligned"
    for s in w3:
        s.load_state_dict(state, 9, 4)
    rest = [i for s in w3 for i in s]
    drawn = first + rest
    assert Counter(drawn) == Counter(full[: len(drawn)]) and len(full) - len(drawn) < 3
    with pytest.raises(GPT2KitError, match=r"another order \(order: checkpoint bos_aligned, here random\)"):
        _world(RandomWindows().order(tokens, 8, EOT), 3, seed=11)[0].load_state_dict(state, 9, 4)


def test_bos_aligned_needs_a_separator_and_room_for_a_window():
    with pytest.raises(GPT2KitError, match="needs documents separated by an end-of-text token"):
        BOSAlignedWindows().order(np.zeros(100, dtype=np.uint16), 8, None)
    with pytest.raises(GPT2KitError, match="finds no window of block_size=64"):
        BOSAlignedWindows().order(np.zeros(50, dtype=np.uint16), 64, EOT)
    assert chain_windows(np.array([0, 5, 9]), 4, 10).tolist() == [0, 5]  # 9 + 5 > 10: no room


def test_the_position_follows_the_count_over_all_epochs():
    """Lightning may carry its count of the epoch's batches into a new epoch (a run resumed from the
    checkpoint written when training ended); the position counts from where the epoch began."""
    total = {"n": 10}
    sampler = _world(_Identity(1000), 1)[0]
    sampler.trained = lambda: total["n"]
    sampler.set_epoch(1)  # 10 batches trained so far, in epoch 0
    total["n"] = 14
    state = sampler.state_dict(batches_done=14, batch_size=4, trained=14)  # Lightning's epoch count: 14
    assert (state["epoch"], state["samples_done"]) == (1, 16)


def test_bos_aligned_is_chosen_in_yaml_and_its_batches_open_documents(tmp_path, capsys):
    from conftest import RECIPES

    from gpt2kit.commands import main
    from gpt2kit.data import TextDataModule
    from gpt2kit.tokenizers import CharTokenizer

    recipe = str(RECIPES / "pretrain" / "shakespeare-char.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", recipe, "--data.init_args.sampler", "bos_aligned", "--print_config"])
    assert "class_path: gpt2kit.data.sampler.BOSAlignedWindows" in capsys.readouterr().out

    docs = tmp_path / "docs"
    docs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):  # documents of 5 to 60 characters
        words = rng.choice(["a", "bb", "ccc", "dddd"], size=int(rng.integers(2, 15)))
        (docs / f"{i:03d}.txt").write_text(" ".join(words) + ".")
    dm = TextDataModule(
        str(docs), tokenizer=CharTokenizer(special_tokens=["<|endoftext|>"]), block_size=16, batch_size=4,
        cache=str(tmp_path / "prep"), sampler=BOSAlignedWindows(),
    )  # fmt: skip
    eot = dm.tokenizer.eot_id
    tokens = dm.prepared().tokens("train")
    x, y = next(iter(dm.train_dataloader()))
    for row, target in zip(x.tolist(), y.tolist(), strict=True):
        start = next(o for o in document_starts(tokens, eot) if tokens[o : o + 16].tolist() == row)
        assert start == 0 or row[0] == eot  # the window opens a document
        assert target == tokens[start + 1 : start + 17].tolist()


def test_an_epoch_the_old_world_had_finished_stays_finished():
    """4 × 5 windows a step leave 12 of 252 at the end of an epoch: the 4-process run ended it there (as
    Lightning records); resumed on 2 processes, those 12 are not trained on either: the next epoch starts."""
    w4 = _world(_Identity(252), 4)
    state = w4[0].state_dict(12, 5)
    assert state["samples_done"] == 240
    w2 = _world(_Identity(252), 2)[0]
    w2.load_state_dict(state, batches_done=12, batch_size=5)
    assert len(w2) == 0 and list(w2) == []
    w2.set_epoch(1)
    assert len(w2) == 126
