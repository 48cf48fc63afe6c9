import pytest
import torch

from gpt2kit import GPT, GPT2KitError, GPTConfig, preset


def tiny(**kw) -> GPTConfig:
    return preset("nano", **kw)


# Parameter counts of OpenAI's released models (tied head, learned positions, vocab 50257).
@pytest.mark.parametrize(
    "name,count",
    [
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_preset_parameter_counts(name, count):
    with torch.device("meta"):  # count without allocating or initialising real memory
        model = GPT(preset(name))
    assert model.num_params() == count


def test_forward_shapes():
    model = GPT(tiny())
    idx = torch.randint(0, 65, (3, 17))
    assert model(idx).shape == (3, 17, 65)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 65, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = torch.randint(0, 65, (2, 8))
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_kv_cache_decoding_equals_full_forward():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 65, (2, 24))
    full = model(idx)
    cache = model.new_cache(2)
    steps = [model(idx[:, :5], cache=cache)] + [model(idx[:, i : i + 1], cache=cache) for i in range(5, 24)]
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-5)


def test_residual_projections_get_scaled_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=16, vocab_size=50))
    proj = model.blocks[0].attn.c_proj.weight.std().item()
    fc = model.blocks[0].mlp.c_fc.weight.std().item()
    assert proj == pytest.approx(0.02 / (2 * 8) ** 0.5, rel=0.1)
    assert fc == pytest.approx(0.02, rel=0.1)


def test_lm_head_is_tied_to_the_token_embedding():
    model = GPT(tiny()).eval()
    assert not list(model.head.parameters())
    hidden = {}
    model.ln_f.register_forward_hook(lambda m, i, out: hidden.setdefault("h", out))
    logits = model(torch.randint(0, 65, (2, 7)))
    assert torch.allclose(logits, hidden["h"] @ model.wte.weight.T, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_embd": 30, "n_head": 4}, "n_embd=30 is not divisible by n_head=4"),
        ({"n_layer": 0}, "n_layer=0 must be a positive integer"),
        ({"dropout": 1.5}, "dropout=1.5"),
    ],
)
def test_bad_sizes_are_refused(kwargs, match):
    with pytest.raises(GPT2KitError, match=match):
        GPTConfig(**kwargs)


def test_learned_positions_never_index_past_their_table():
    model = GPT(tiny(block_size=8))
    with pytest.raises(GPT2KitError, match="block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_unknown_preset():
    with pytest.raises(GPT2KitError, match="choose one of gpt2"):
        preset("gpt3")
