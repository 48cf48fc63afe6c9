"""The component zoo: every attention x position combination keeps the contract of gpt2kit.testing,
each variant computes what its paper says, and each one trains from YAML and survives a checkpoint."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
import yaml

from gpt2kit import GPT, GPT2KitError, registry
from gpt2kit.commands import main
from gpt2kit.nn import (
    ALiBiPosition,
    CausalSelfAttention,
    ExactGeluMLP,
    GeluMLP,
    GroupedQueryAttention,
    LayerNorm,
    LearnedPosition,
    MathAttention,
    NoPosition,
    ReluMLP,
    RMSNorm,
    RotaryPosition,
    SequenceClassificationHead,
    SinusoidalPosition,
    SlidingWindowAttention,
    SwiGLUMLP,
    UntiedLMHead,
)
from gpt2kit.nn.mlp import swiglu_hidden
from gpt2kit.nn.position import alibi_slopes
from gpt2kit.testing import (
    assert_close,
    build,
    check_cache_matches_forward,
    check_causal,
    check_checkpoint_roundtrip,
    check_gradients_flow,
    check_left_padding,
    check_matches_reference,
    random_tokens,
    tiny_config,
)

partial = functools.partial

ATTENTIONS = {
    "causal": CausalSelfAttention,
    "math": MathAttention,
    "sliding_window": partial(SlidingWindowAttention, window=3),  # well below block_size=16
    "grouped_query": partial(GroupedQueryAttention, n_kv_head=2),
    "multi_query": partial(GroupedQueryAttention, n_kv_head=1),
}
POSITIONS = {
    "learned": LearnedPosition,
    "none": NoPosition,
    "sinusoidal": SinusoidalPosition,
    "rotary": RotaryPosition,
    "alibi": ALiBiPosition,
}


def gpt(attention=CausalSelfAttention, position=LearnedPosition, **kwargs):
    config = kwargs.pop("config", None) or tiny_config()
    return partial(GPT, config, attention=attention, position=position, **kwargs)


# --- the contract, for every attention x position ---------------------------------------------------


@pytest.mark.parametrize(("attention", "position"), itertools.product(ATTENTIONS, POSITIONS))
def test_contract(attention, position):
    make = gpt(ATTENTIONS[attention], POSITIONS[position])
    check_causal(make)
    check_cache_matches_forward(make)
    check_left_padding(make)
    check_gradients_flow(make)


def test_other_components_keep_the_contract():
    for kwargs in (
        dict(norm=RMSNorm, mlp=SwiGLUMLP, head=UntiedLMHead),
        dict(norm=partial(LayerNorm, bias=False), mlp=ReluMLP),
        dict(mlp=ExactGeluMLP),
    ):
        make = gpt(position=RotaryPosition, **kwargs)
        check_causal(make)
        check_cache_matches_forward(make, prefills=[3])
        check_gradients_flow(make)


def test_exact_gelu_mlp_is_nanogpts_erf_gelu_not_gpt2s_tanh():
    h = torch.linspace(-4, 4, 101)
    erf_gelu = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # nanoGPT's nn.GELU()
    exact, tanh = ExactGeluMLP(tiny_config()), GeluMLP(tiny_config())
    torch.testing.assert_close(exact.activation(h), erf_gelu)
    assert (exact.activation(h) - tanh.activation(h)).abs().max() > 1e-4  # a different function


# --- attention variants -----------------------------------------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_sdpa_kernel_equals_math_reference(with_mask, with_bias):
    torch.manual_seed(0)
    config = tiny_config()
    sdpa, math_ = CausalSelfAttention(config), MathAttention(config)
    B, nh, T, hs = 3, config.n_head, 7, config.head_dim
    q, k, v = (torch.randn(B, nh, T, hs) for _ in range(3))
    mask = bias = None
    if with_mask:
        mask = torch.rand(B, 1, T, T) < 0.6
        mask[..., 0] = True  # every query sees at least one key
    if with_bias:
        bias = torch.randn(1, nh, T, T)
    assert_close(sdpa.attend(q, k, v, mask, bias), math_.attend(q, k, v, mask, bias), 1e-5, "attend")


@pytest.mark.parametrize("position", POSITIONS)
def test_model_equals_math_reference(position):
    """Same weights, same logits: plain, padded (masks) and with ALiBi (bias)."""
    check_matches_reference(
        gpt(CausalSelfAttention, POSITIONS[position]), gpt(MathAttention, POSITIONS[position])
    )


@pytest.mark.parametrize("window", [16, 100])
@pytest.mark.parametrize("position", ["learned", "alibi"])
def test_sliding_window_at_least_T_is_full_attention(window, position):
    window_attention = partial(SlidingWindowAttention, window=window)
    check_matches_reference(gpt(window_attention, POSITIONS[position]), gpt(position=POSITIONS[position]))


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_sliding_window_sees_only_the_last_w_tokens(position):
    w = 4
    make = gpt(partial(SlidingWindowAttention, window=w), POSITIONS[position], config=tiny_config(n_layer=1))
    model = build(make)
    idx = random_tokens(model, batch=1)
    T = idx.size(1)
    with torch.no_grad():
        base = model(idx)
        for j in range(T):
            changed = idx.clone()
            changed[0, j] = (idx[0, j] + 1) % model.config.vocab_size
            delta = (model(changed) - base).abs().amax(-1)[0]  # (T,) per output position
            for t in range(j, T):
                if t - j >= w:  # token j is w or more back: out of t's window
                    assert delta[t] == 0, f"output {t} depends on token {j}, {t - j} back (window {w})"
                else:
                    assert delta[t] > 1e-4, f"output {t} ignores token {j}, inside its window"


def test_gqa_with_all_kv_heads_equals_mha():
    n_head = tiny_config().n_head
    check_matches_reference(gpt(partial(GroupedQueryAttention, n_kv_head=n_head)), gpt(CausalSelfAttention))


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_gqa_equals_mha_with_shared_kv_weights(n_kv_head):
    """MHA whose key/value heads are copies within each group computes exactly what GQA computes."""
    config = tiny_config(n_layer=1)
    gqa = build(gpt(partial(GroupedQueryAttention, n_kv_head=n_kv_head), config=config))
    mha = build(gpt(config=config), seed=1)
    state = gqa.state_dict()
    C, hs, group = config.n_embd, config.head_dim, config.n_head // n_kv_head
    for name in ("weight", "bias"):
        key = f"blocks.0.attn.c_attn.{name}"
        q, k, v = state[key].split([C, n_kv_head * hs, n_kv_head * hs])
        k, v = (t.unflatten(0, (n_kv_head, hs)).repeat_interleave(group, 0).flatten(0, 1) for t in (k, v))
        state[key] = torch.cat([q, k, v])  # (3C, ...) kv head i serves query heads i*group ... (i+1)*group-1
    mha.load_state_dict(state)
    idx = random_tokens(gqa)
    with torch.no_grad():
        assert_close(gqa(idx), mha(idx), 1e-5, "GQA vs MHA with repeated kv weights")
    cache = gqa.new_cache(2, 16)[0]
    assert cache.k.shape == (2, n_kv_head, 16, hs)  # the cache stores only the kv heads


# --- position encodings -----------------------------------------------------------------------------


def test_rope_closed_form():
    base, hs = 100.0, 8
    rope = RotaryPosition(tiny_config(n_head=4, n_embd=4 * hs), base=base)
    t = torch.randn(1, 1, 1, hs)
    for p in (0, 1, 5, 1000):
        out = rope.rotate(t, torch.tensor([[p]]))[0, 0, 0]
        a, b = t[0, 0, 0, : hs // 2], t[0, 0, 0, hs // 2 :]
        theta = p * base ** (-torch.arange(0, hs, 2) / hs)
        expected = torch.cat([a * theta.cos() - b * theta.sin(), b * theta.cos() + a * theta.sin()])
        assert_close(out, expected, 1e-4, f"RoPE at position {p}")


def test_rope_scores_depend_only_on_the_offset():
    rope = RotaryPosition(tiny_config())
    q, k = torch.randn(2, 1, 4, 1, 8).unbind(0)  # (1, nh, 1, hs) each

    def score(m, n):
        return (rope.rotate(q, torch.tensor([[m]])) * rope.rotate(k, torch.tensor([[n]]))).sum(-1)

    for m, n in [(3, 0), (7, 7), (10, 2)]:
        for shift in (1, 5, 40):
            assert_close(score(m + shift, n + shift), score(m, n), 1e-4, f"score({m}+{shift}, {n}+{shift})")
    assert not torch.allclose(score(3, 0), score(4, 0))


@pytest.mark.parametrize("position", ["rotary", "alibi"])
def test_relative_encodings_ignore_a_shift_of_all_positions(position):
    model = build(gpt(position=POSITIONS[position]))
    idx = random_tokens(model)
    with torch.no_grad():
        shifted = model(idx, pos=torch.arange(50, 66)[None])
        assert_close(shifted, model(idx), 1e-4, f"{position}: positions shifted by 50")


@pytest.mark.parametrize(
    ("n_head", "expected"),
    [
        (1, [2**-8]),
        (4, [2**-2, 2**-4, 2**-6, 2**-8]),
        (8, [2**-i for i in range(1, 9)]),
        # not powers of two: slopes of the power below, then every other slope of twice that power
        (6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]),
        (12, [*[2**-i for i in range(1, 9)], 2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]),
    ],
)
def test_alibi_slopes_as_in_the_paper(n_head, expected):
    assert_close(alibi_slopes(n_head), torch.tensor(expected), 1e-7, f"slopes for {n_head} heads")


def test_alibi_bias_is_minus_slope_times_distance():
    alibi = ALiBiPosition(tiny_config(n_head=4))
    pos = torch.arange(5)[None]
    bias = alibi.bias(pos, pos)  # (1, nh, 5, 5)
    for h, m in enumerate([2**-2, 2**-4, 2**-6, 2**-8]):
        for i, j in itertools.product(range(5), range(5)):
            assert bias[0, h, i, j].item() == pytest.approx(-m * (i - j))


def test_sinusoidal_closed_form():
    C = 10
    sinusoidal = SinusoidalPosition(tiny_config(n_head=2, n_embd=C), scale=1.0)  # the paper's formula
    positions = [0, 1, 7, 15, 1000]  # past block_size too
    pe = sinusoidal.embed(torch.zeros(1, len(positions), C), torch.tensor([positions]))[0]
    for row, p in zip(pe, positions, strict=True):
        for i in range(C // 2):
            angle = p / 10000 ** (2 * i / C)
            assert row[2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert row[2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    default = SinusoidalPosition(tiny_config(n_head=2, n_embd=C))  # as weighty as a learned table at init
    assert torch.allclose(default.embed(torch.zeros(1, 5, C), torch.tensor([positions])), 0.02 * pe[None])


# --- norms, MLPs, heads -------------------------------------------------------------------------------


def test_rmsnorm():
    norm = RMSNorm(tiny_config(), eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 3, 32)
    expected = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * norm.weight
    assert_close(norm(x), expected, 1e-5, "RMSNorm")


def test_gelu_mlp_is_gpt2_tanh_gelu():
    mlp = GeluMLP(tiny_config())
    x = torch.randn(2, 3, 32)
    h = mlp.c_fc(x)
    gelu = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))
    assert_close(mlp(x), mlp.c_proj(gelu), 1e-5, "GeluMLP vs GPT-2's GELU formula")


def test_sequence_classification_pools_the_last_real_token():
    config = tiny_config()
    make = partial(GPT, config, head=partial(SequenceClassificationHead, num_classes=3))
    model = build(make)
    idx = random_tokens(model, batch=3)
    lengths = [16, 9, 1]
    valid = torch.arange(16)[None] < torch.tensor(lengths)[:, None]  # right padding
    with torch.no_grad():
        out = model(idx, valid=valid)
        assert out.shape == (3, 3)
        junk = torch.where(valid, idx, (idx + 5) % config.vocab_size)  # other tokens on the padding
        assert_close(model(junk, valid=valid), out, 1e-6, "output depends on padding tokens")
        for b, n in enumerate(lengths):
            assert_close(model(idx[b : b + 1, :n])[0], out[b], 1e-5, f"row {b} vs unpadded")


def test_parameter_counts():
    C, nh, L, V = 64, 8, 2, 37
    config = tiny_config(n_embd=C, n_head=nh, n_layer=L, vocab_size=V)
    hs = C // nh

    def attention_params(model):
        return sum(p.numel() for p in model.blocks[0].attn.parameters())

    mha = GPT(config)
    assert attention_params(mha) == (C * 3 * C + 3 * C) + (C * C + C)
    for n_kv in (1, 2, 4):
        gqa = GPT(config, attention=partial(GroupedQueryAttention, n_kv_head=n_kv))
        qkv = (nh + 2 * n_kv) * hs
        assert attention_params(gqa) == (C * qkv + qkv) + (C * C + C)
        assert mha.num_params() - gqa.num_params() == L * 2 * (nh - n_kv) * hs * (C + 1)

    assert [swiglu_hidden(c) for c in (32, 64, 768, 1024)] == [128, 192, 2048, 2752]
    assert swiglu_hidden(4096, multiple_of=256) == 11008  # Llama-7B's FFN width
    swiglu = SwiGLUMLP(config)  # H = 192
    assert sum(p.numel() for p in swiglu.parameters()) == (C * 2 * 192 + 2 * 192) + (192 * C + C)
    no_bias = SwiGLUMLP(tiny_config(n_embd=C, bias=False), hidden=100)
    assert sum(p.numel() for p in no_bias.parameters()) == 3 * C * 100

    untied = GPT(config, head=UntiedLMHead)
    assert untied.num_params() - mha.num_params() == V * C
    classify = GPT(config, head=partial(SequenceClassificationHead, num_classes=5))
    assert classify.num_params() - mha.num_params() == 5 * C
    assert GPT(config, norm=RMSNorm).num_params() - mha.num_params() == -(2 * L + 1) * C  # no biases


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build_it", "words"),
    [
        (lambda c: SlidingWindowAttention(c, window=0), ["window=0"]),
        (lambda c: SlidingWindowAttention(c, window=-3), ["window=-3"]),
        (lambda c: GroupedQueryAttention(c, n_kv_head=3), ["n_kv_head=3", "n_head=4", "[1, 2, 4]"]),
        (lambda c: GroupedQueryAttention(c, n_kv_head=0), ["n_kv_head=0"]),
        (lambda c: RotaryPosition(tiny_config(n_embd=12, n_head=4)), ["RotaryPosition", "= 3", "even"]),
        (lambda c: SequenceClassificationHead(c, num_classes=0), ["num_classes=0"]),
        (lambda c: registry("attention").get("sliding"), ["sliding_window", "causal", "math"]),
    ],
)
def test_bad_input_is_one_clear_line(build_it, words):
    with pytest.raises(GPT2KitError) as info:
        build_it(tiny_config())
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


class NoBiasAttention(CausalSelfAttention):
    """An attention whose kernel cannot add a bias (stands in for e.g. a flash-only plugin)."""

    supports_bias = False


def test_alibi_refused_with_an_attention_without_bias():
    with pytest.raises(GPT2KitError, match="ALiBiPosition.*NoBiasAttention"):
        GPT(tiny_config(), attention=NoBiasAttention, position=ALiBiPosition)
    GPT(tiny_config(), attention=NoBiasAttention, position=RotaryPosition)  # no bias: fine


def test_every_component_is_registered_and_public():
    import gpt2kit.nn

    for kind in ("attention", "position", "norm", "mlp", "head"):
        for entry in registry(kind).entries():
            if entry.source != "built-in":  # a plugin another test loaded into this worker
                continue
            assert entry.cls.__name__ in gpt2kit.nn.__all__, f"{entry.class_path} is not exported"


# --- checkpoints and training from YAML ------------------------------------------------------------------

COMPONENTS = {  # every attention × position pair: test_every_attention_position_pair_round_trips_...
    "norm=rmsnorm": {"norm": partial(RMSNorm, eps=1e-6)},
    "norm=layernorm_no_bias": {"norm": partial(LayerNorm, bias=False)},
    "mlp=relu": {"mlp": ReluMLP},
    "mlp=gelu_exact": {"mlp": ExactGeluMLP},
    "mlp=swiglu": {"mlp": partial(SwiGLUMLP, multiple_of=32)},
    "head=untied": {"head": UntiedLMHead},
    "head=classification": {"head": partial(SequenceClassificationHead, num_classes=4)},
}


@pytest.mark.parametrize("components", COMPONENTS.values(), ids=COMPONENTS.keys())
def test_checkpoint_roundtrip(tmp_path, components):
    check_checkpoint_roundtrip(tmp_path, tiny_config(), **components)


@pytest.mark.parametrize(("attention", "position"), itertools.product(ATTENTIONS, POSITIONS))
def test_every_attention_position_pair_round_trips_through_a_checkpoint(tmp_path, attention, position):
    check_checkpoint_roundtrip(
        tmp_path, tiny_config(), attention=ATTENTIONS[attention], position=POSITIONS[position]
    )


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A tiny pretraining recipe over a small generated text file."""
    root = tmp_path_factory.mktemp("recipe")
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
    g = torch.Generator().manual_seed(0)
    text = "\n".join(
        " ".join(words[i] for i in torch.randint(len(words), (10,), generator=g)) for _ in range(200)
    )
    (root / "text.txt").write_text(text)
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 3,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 1,
        },
        "model": {
            "arch": {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 16},
            "optim": {"lr": 1e-3, "warmup_steps": 1},
        },
        "data": {
            "class_path": "TextDataModule",
            "init_args": {"source": str(root / "text.txt"), "batch_size": 4, "cache": str(root / "cache")},
        },
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


CLI_RUNS = {
    "window+rotary+rmsnorm+swiglu+untied": [
        "--model.attention=SlidingWindowAttention",
        "--model.attention.window=4",
        "--model.position=RotaryPosition",
        "--model.norm=RMSNorm",
        "--model.mlp=SwiGLUMLP",
        "--model.head=UntiedLMHead",
    ],
    "gqa+alibi+relu": [
        "--model.attention=GroupedQueryAttention",
        "--model.attention.n_kv_head=2",
        "--model.position=ALiBiPosition",
        "--model.mlp=ReluMLP",
    ],
    "math+sinusoidal+nobias_layernorm": [
        "--model.attention=MathAttention",
        "--model.position=SinusoidalPosition",
        "--model.norm=LayerNorm",
        "--model.norm.bias=false",
    ],
    "causal+none": ["--model.position=NoPosition"],
}


@pytest.mark.parametrize("overrides", CLI_RUNS.values(), ids=CLI_RUNS.keys())
def test_trains_from_yaml_through_the_cli(recipe, tmp_path, overrides, monkeypatch):
    monkeypatch.setattr("sys.argv", ["gpt2kit"])  # main() sets sys.argv for LightningCLI
    main(["fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path}", *overrides])
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]
    for option in overrides:
        key, value = option.removeprefix("--model.").split("=")
        slot, *arg = key.split(".")
        spec = saved[slot]
        if arg:
            assert spec["init_args"][arg[0]] == yaml.safe_load(value)
        else:
            assert spec["class_path"] == f"gpt2kit.nn.{value}"


def test_cli_refuses_bad_components_in_one_line(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["gpt2kit"])
    for overrides, words in [
        (["--model.attention=SlidingWindowAttention", "--model.attention.window=0"], ["window=0"]),
        (["--model.attention=SlidingWindow"], ["unknown attention", "SlidingWindowAttention"]),
        (["--model.position=RotaryPosition", "--model.arch.n_embd=12"], ["RotaryPosition", "even"]),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path}", *overrides])
        assert info.value.code != 0
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and all(w in errors[0] for w in words), errors


def test_component_help_lists_its_options(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["gpt2kit"])
    with pytest.raises(SystemExit) as info:
        main(["fit", "--model.attention.help", "SlidingWindowAttention"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--model.attention.window WINDOW" in out and "default: 512" in out


def test_math_attention_is_a_causal_softmax():
    att = MathAttention(tiny_config())
    q = k = torch.randn(1, 4, 5, 8)
    v = torch.eye(5).expand(1, 4, 5, 5)  # the output is the attention matrix itself
    weights = att.attend(q, k, v, None, None)
    assert_close(weights.sum(-1), torch.ones(1, 4, 5), 1e-6, "attention rows")
    assert (weights.triu(1) == 0).all()
