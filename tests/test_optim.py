"""Optimizer and schedule slots (gpt2kit.training.optim): groups, Muon + AdamW as one optimizer, schedules, bad input."""

from __future__ import annotations

import copy
import functools
import math
import re

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from gpt2kit import GPT, GPT2KitError, optim, registry
from gpt2kit.finetune import FullFineTune, LastNBlocks, LayerwiseLRDecay, LoRA
from gpt2kit.nn import RMSNorm, RotaryPosition, UntiedLMHead
from gpt2kit.spec import resolve_class
from gpt2kit.testing import tiny_config
from gpt2kit.training.lit import GPTLitModule, OptimConfig, lr_factor
from gpt2kit.training.optim import (
    BatchedMuon,
    Constant,
    GPT2AdamW,
    Linear,
    MuonAdamW,
    Schedule,
    WarmupCosine,
    WarmupStableDecay,
    build_optimizer,
    hidden_matrix_names,
    newton_schulz,
    orthogonalization_dtype,
    parameter_groups,
)

requires_muon = pytest.mark.skipif(
    not hasattr(torch.optim, "Muon"), reason="needs torch.optim.Muon (torch >= 2.9)"
)


def tiny_model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config(), **kw)


def loss_of(model: GPT, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(model.config.vocab_size, (2, 8), generator=g)
    y = torch.randint(model.config.vocab_size, (2, 8), generator=g)
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def train(model: GPT, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for s in steps:
        loss_of(model, s).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# --- schedules -----------------------------------------------------------------------------------------


def test_warmup_cosine_is_gpt2s_schedule():
    schedule, total = WarmupCosine(warmup_steps=10, min_lr_ratio=0.1), 100
    for step in range(120):  # nanoGPT's get_lr, written out independently
        if step < 10:
            expected = (step + 1) / 11
        elif step >= total:
            expected = 0.1
        else:
            expected = 0.1 + 0.5 * (1 + math.cos(math.pi * (step - 10) / 90)) * 0.9
        assert schedule.factor(step, total) == pytest.approx(expected, abs=1e-12)
        assert lr_factor(step, 10, total, 0.1) == schedule.factor(step, total)  # the older name, same numbers


def test_warmup_stable_decay_linear_and_constant():
    wsd, total = WarmupStableDecay(warmup_steps=10, cooldown_fraction=0.25, min_lr_ratio=0.0), 100
    f = [wsd.factor(s, total) for s in range(total + 1)]
    assert f[:10] == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert f[10:76] == [1.0] * 66  # stable until the last 25 steps
    assert f[80] == pytest.approx(20 / 25) and f[99] == pytest.approx(1 / 25) and f[100] == 0.0
    line = Linear(warmup_steps=0, min_lr_ratio=0.2)
    assert [line.factor(s, 10) for s in (0, 5, 10)] == pytest.approx([1.0, 0.6, 0.2])
    assert [Constant(warmup_steps=3).factor(s, 10) for s in (0, 2, 3, 9)] == pytest.approx([0.25, 0.75, 1, 1])


def test_schedule_bad_input():
    for bad in (-0.1, 1.5):
        with pytest.raises(GPT2KitError, match=f"cooldown_fraction={bad} must be in \\[0, 1\\]"):
            WarmupStableDecay(cooldown_fraction=bad)
    with pytest.raises(GPT2KitError, match="decay_steps=500 is longer than trainer.max_steps=200"):
        WarmupCosine(decay_steps=500).lambda_for(200)
    with pytest.raises(GPT2KitError, match="min_lr_ratio=2"):
        Linear(min_lr_ratio=2)
    assert WarmupCosine(decay_steps=150).total_steps(200) == 150
    assert WarmupCosine().total_steps(200) == 200


# --- parameter groups ---------------------------------------------------------------------------------------


def test_groups_keep_gpt2s_decay_rule_and_mark_hidden_matrices():
    model = tiny_model(head=UntiedLMHead, position=RotaryPosition, norm=RMSNorm)
    groups = parameter_groups(model, FullFineTune())
    names = {id(p): n for n, p in model.named_parameters()}
    by = [
        (g.get("muon", False), g.get("weight_decay"), sorted(names[id(p)] for p in g["params"]))
        for g in groups
    ]
    hidden = sorted(n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2)
    assert by[0] == (True, None, hidden)  # the blocks' matrices: Muon, the optimizer's own decay
    assert by[1] == (False, None, ["head.lm_head.weight"])  # decayed, but not a hidden matrix
    no_decay = sorted(n for n, p in model.named_parameters() if p.dim() < 2 or n == "wte.weight")
    assert by[2] == (False, 0.0, no_decay)
    assert hidden_matrix_names(model) == set(hidden)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_any_torch_optimizer_by_class_gets_the_groups():
    model = tiny_model()
    sgd = build_optimizer(
        functools.partial(torch.optim.SGD, lr=0.1, weight_decay=0.01), parameter_groups(model, FullFineTune())
    )
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.01, 0.0]
    adamw = build_optimizer(GPT2AdamW, parameter_groups(model, FullFineTune()))
    assert [g["lr"] for g in adamw.param_groups] == [6e-4, 6e-4]
    assert adamw.param_groups[0]["betas"] == (0.9, 0.95) and adamw.param_groups[0]["weight_decay"] == 0.1


def test_unknown_optimizer_argument_is_one_line():
    with pytest.raises(GPT2KitError, match=r"optimizer AdamW does not take these arguments .*lrr"):
        build_optimizer(
            functools.partial(torch.optim.AdamW, lrr=1e-3), parameter_groups(tiny_model(), FullFineTune())
        )


def test_legacy_optim_translates_to_the_same_optimizer_and_schedule():
    old = GPTLitModule(
        tiny_config(), optim=OptimConfig(lr=1e-3, min_lr=1e-4, betas=(0.9, 0.99), warmup_steps=7)
    )
    assert isinstance(old.schedule, WarmupCosine) and old.schedule.warmup_steps == 7
    assert old.schedule.min_lr_ratio == pytest.approx(0.1)
    opt = build_optimizer(old.optimizer, old.param_groups())
    assert (
        isinstance(opt, GPT2AdamW)
        and opt.param_groups[0]["lr"] == 1e-3
        and opt.param_groups[0]["betas"] == (0.9, 0.99)
    )
    with pytest.warns(UserWarning, match=r"model.optim \(the older form.*replaces model.optimizer and model"):
        both = GPTLitModule(tiny_config(), optim=OptimConfig(warmup_steps=3), schedule=Constant())
    assert isinstance(both.schedule, WarmupCosine) and both.schedule.warmup_steps == 3
    assert both.hparams["optim"] is None and both.hparams["schedule"]["class_path"].endswith("WarmupCosine")


# --- Muon + AdamW ---------------------------------------------------------------------------------------------


def _ns_float64(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Keller Jordan's quintic Newton-Schulz iteration, written out in float64 (the exact reference)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@requires_muon
@pytest.mark.parametrize("ns_dtype", ["bfloat16", "float32"])
def test_batched_muon_step_matches_torch_muon_within_its_bf16_rounding(ns_dtype):
    shapes = [(48, 16), (16, 16), (64, 16), (16, 64), (48, 16), (16, 16)]  # tall, square, wide; repeats batch
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(2)]

    def two_steps(cls, **kw):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = cls(params, lr=0.05, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", **kw)
        for step_grads in grads:  # two steps: the momentum buffer and Nesterov's blend take part
            for p, grad in zip(params, step_grads, strict=True):
                p.grad = grad.clone()
            opt.step()
        return params, opt

    mine, opt = two_steps(BatchedMuon, ns_dtype=ns_dtype)
    torchs, ref_opt = two_steps(torch.optim.Muon)
    for p, q in zip(mine, torchs, strict=True):  # the same momentum buffers, bit for bit
        assert torch.equal(opt.state[p]["momentum_buffer"], ref_opt.state[q]["momentum_buffer"])
    # The orthogonalised update of one matrix, each way, against the exact (float64) iteration.
    buf = ref_opt.state[torchs[0]]["momentum_buffer"]
    update = grads[1][0].lerp(buf, 0.95)
    exact = _ns_float64(update)
    theirs = torch.optim.Muon([torch.nn.Parameter(torch.zeros(shapes[0]))]).defaults
    (ours,) = newton_schulz([update], theirs["ns_coefficients"], 5, theirs["eps"], getattr(torch, ns_dtype))
    assert ours.dtype == getattr(torch, ns_dtype)
    bf16_error = _rel(newton_schulz([update], theirs["ns_coefficients"], 5, 1e-7, torch.bfloat16)[0], exact)
    assert 1e-3 < bf16_error < 0.05  # torch.optim.Muon's own rounding: its tolerance
    if ns_dtype == "float32":
        assert _rel(ours, exact) < 1e-4  # float32: far closer to the exact iteration
    # The whole step: the weights' changes agree with torch's to within its bfloat16 rounding.
    for w, p, q in zip(weights, mine, torchs, strict=True):
        assert _rel(p.detach() - w, q.detach() - w) < 2 * bf16_error


@requires_muon
def test_muon_adamw_steps_as_muon_and_adamw_side_by_side():
    model = tiny_model()
    reference = copy.deepcopy(model)
    opt = build_optimizer(
        functools.partial(MuonAdamW, lr=0.05, adam_lr=1e-2), parameter_groups(model, FullFineTune())
    )
    assert [g.get("muon", False) for g in opt.param_groups] == [True, False]
    assert isinstance(opt.muon, BatchedMuon)
    hidden = hidden_matrix_names(reference)
    named = dict(reference.named_parameters())
    muon = torch.optim.Muon([named[n] for n in sorted(hidden)], lr=0.05, weight_decay=0.0)
    adamw = torch.optim.AdamW(
        [named[n] for n in named if n not in hidden], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_of(model, 0).backward()
    opt.step()
    loss_of(reference, 0).backward()
    muon.step()
    adamw.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        if name in hidden:  # Muon's side: torch's update up to its bfloat16 rounding
            assert _rel(a.detach() - start[name], b.detach() - start[name]) < 0.05, name
        else:  # AdamW's side: the same kernel, the same numbers
            assert torch.equal(a, b), name
    assert not torch.equal(model.blocks[0].attn.c_attn.weight, tiny_model().blocks[0].attn.c_attn.weight)


def test_orthogonalization_dtype_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(optim, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))  # e.g. AMD Zen 2/3
    assert orthogonalization_dtype("cpu") == torch.float32  # bfloat16 would be emulated
    monkeypatch.setattr(optim, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))  # Cooper Lake+
    assert orthogonalization_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(optim, "_cpu_flags", lambda: frozenset({"avx512f", "avx512bw"}))  # Skylake-SP
    assert orthogonalization_dtype("cpu") == torch.float32
    monkeypatch.setattr(optim, "_cpu_flags", lambda: frozenset({"avx2", "amx_tile", "amx_bf16"}))
    assert orthogonalization_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(optim, "_cpu_flags", lambda: frozenset({"fp", "asimd", "bf16"}))  # Arm with BF16
    assert orthogonalization_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(optim, "_cpu_flags", lambda: frozenset())  # no /proc/cpuinfo (macOS, Windows)
    assert orthogonalization_dtype("cpu") == torch.float32
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):  # Ampere+ / Volta, Turing
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n)
        assert orthogonalization_dtype("cuda") == dtype


@requires_muon
@pytest.mark.parametrize("native", [True, False])
def test_auto_runs_the_iterations_in_the_chosen_dtype(monkeypatch, native):
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: native)

    def one_step(ns_dtype):
        model = tiny_model()
        opt = build_optimizer(
            functools.partial(MuonAdamW, ns_dtype=ns_dtype), parameter_groups(model, FullFineTune())
        )
        train(model, opt, range(1))
        return model.blocks[0].mlp.c_fc.weight

    auto = one_step("auto")
    assert torch.equal(auto, one_step("bfloat16" if native else "float32"))
    assert not torch.equal(auto, one_step("float32" if native else "bfloat16"))


@requires_muon
def test_muon_refuses_an_unknown_ns_dtype():
    with pytest.raises(GPT2KitError, match="ns_dtype='float16' must be one of auto, bfloat16, float32"):
        MuonAdamW(parameter_groups(tiny_model(), FullFineTune()), ns_dtype="float16")


@requires_muon
@pytest.mark.parametrize("ns_dtype", ["bfloat16", "float32"])
def test_muon_adamw_state_dict_resumes_bit_identically(ns_dtype):
    def make():
        model = tiny_model()
        factory = functools.partial(MuonAdamW, lr=0.05, ns_dtype=ns_dtype)
        opt = build_optimizer(factory, parameter_groups(model, FullFineTune()))
        return model, opt

    straight, opt = make()
    train(straight, opt, range(5))
    resumed, opt1 = make()
    train(resumed, opt1, range(3))
    saved_model, saved_opt = copy.deepcopy(resumed.state_dict()), copy.deepcopy(opt1.state_dict())
    assert len(saved_opt["state"]) == len(list(resumed.parameters()))  # both sides' state, one dict
    fresh, opt2 = make()
    fresh.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    assert opt2.muon.param_groups[0] is opt2.param_groups[0]  # still one set of groups after loading
    train(fresh, opt2, range(3, 5))
    for a, b in zip(straight.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


@requires_muon
@pytest.mark.parametrize("shape", [(8,), (2, 3, 4)])
def test_muon_refuses_a_non_matrix(shape):
    with pytest.raises(
        GPT2KitError, match=re.escape(f"Muon takes 2-D matrices only, but a parameter of shape {shape}")
    ):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(shape))], "muon": True}])


def test_muon_on_a_torch_without_it(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    with pytest.raises(GPT2KitError, match=r"Muon needs PyTorch >= 2.9 \(torch.optim.Muon\); this is torch"):
        MuonAdamW(parameter_groups(tiny_model(), FullFineTune()))


@requires_muon
@pytest.mark.parametrize(
    "policy",
    [LastNBlocks(1), LoRA(rank=2, targets=["c_attn"]), LayerwiseLRDecay(0.5)],
    ids=lambda p: type(p).__name__,
)
def test_finetune_policies_with_muon(policy):
    model = tiny_model()
    policy.setup(model)
    scales = policy.lr_scales(model)
    opt = build_optimizer(
        functools.partial(MuonAdamW, lr=0.04, adam_lr=1e-2), parameter_groups(model, policy)
    )
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:  # each group at its share of its side's LR; Muon only on block matrices
        for p in group["params"]:
            name = names[id(p)]
            assert name in scales
            assert group.get("muon", False) == (name in hidden_matrix_names(model))
            base = 0.04 if group.get("muon") else 1e-2
            assert group["lr"] == pytest.approx(base * scales[name])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, opt, range(2))
    for name, p in model.named_parameters():
        trains = name in scales and p.requires_grad
        assert torch.equal(p, before[name]) != trains, name


@requires_muon
def test_lightning_fit_with_muon_clipping_and_schedule(tmp_path):
    module = GPTLitModule(
        tiny_config(),
        optimizer=functools.partial(MuonAdamW, lr=0.02),
        schedule=WarmupStableDecay(warmup_steps=2, cooldown_fraction=0.5, min_lr_ratio=0.1),
    )
    x = torch.randint(37, (24, 9))
    loader = DataLoader(TensorDataset(x[:, :-1], x[:, 1:]), batch_size=4)
    trainer = L.Trainer(
        max_steps=6, gradient_clip_val=0.5, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, loader)
    opt = trainer.optimizers[0]
    assert isinstance(opt, MuonAdamW) and trainer.global_step == 6
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02 * 0.1, 3e-3 * 0.1])  # cooled down
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    stored = ckpt["hyper_parameters"]["schedule"]["class_path"]  # the schedule's own module
    assert resolve_class(stored, Schedule) is WarmupStableDecay
    # older checkpoints and the recipes name it by gpt2kit.optim, which re-exports the schedules
    assert resolve_class("gpt2kit.optim.WarmupStableDecay", Schedule) is WarmupStableDecay


def test_registered_kinds():
    assert {"adamw", "muon"} <= set(registry("optimizer").names())
    assert registry("schedule").names() == ["constant", "linear", "warmup_cosine", "warmup_stable_decay"]
    assert registry("schedule").get("warmup_stable_decay") is WarmupStableDecay
