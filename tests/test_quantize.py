"""Int8 decoding: a copy of the model with int8 linear layers, close to float, original untouched."""

import contextlib
import copy
import dataclasses
import io
import os
import subprocess
import sys
import tempfile

import pytest
import torch
from test_generate import ckpt, model, tokenizer  # noqa: F401  (ckpt is a fixture)

from gpt2kit import GPT, GPT2KitError, preset, quantize
from gpt2kit.commands import main
from gpt2kit.decoding import Engine, Request, SamplingConfig, generate
from gpt2kit.decoding.int8 import Int8Linear, Int8TiedLMHead, check_engine, cpu_has_vnni, quantize_int8
from gpt2kit.finetune import LoRALinear
from gpt2kit.nn import SwiGLUMLP, UntiedLMHead


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def test_int8_copy_is_close_to_float_and_leaves_the_model_as_it_was():
    gpt = model()
    state = {k: v.clone() for k, v in gpt.state_dict().items()}
    idx = torch.randint(0, gpt.config.vocab_size, (3, 12))
    int8 = quantize_int8(gpt)
    with torch.no_grad():
        ref, out = gpt(idx), int8(idx)
    assert 0 < relative_error(out, ref) < 0.05  # quantized (not the float path), yet within a few percent
    n_layer = gpt.config.n_layer
    assert sum(isinstance(m, Int8Linear) for m in int8.modules()) == 4 * n_layer + 1  # + the tied head
    assert isinstance(int8.head, Int8TiedLMHead)
    assert not any(isinstance(m, Int8Linear) for m in gpt.modules())  # the original keeps its layers
    assert all(torch.equal(v, state[k]) for k, v in gpt.state_dict().items())
    assert int8.wte.weight is gpt.wte.weight  # everything but the linear layers is shared, not copied


@pytest.mark.parametrize("in_features", [64, 40])  # 40: padded to the kernel's multiple of 16
def test_weight_only_layer_is_the_rounded_weights_times_float_activations(in_features):
    g = torch.Generator().manual_seed(0)
    w, b, x = (
        torch.randn(24, in_features, generator=g),
        torch.randn(24, generator=g),
        torch.randn(2, 5, in_features, generator=g),
    )
    scale = (w.abs().amax(1, keepdim=True) / 127).bfloat16().float()  # one per row, as the layer keeps it
    rounded = (w / scale).round().clamp(-128, 127) * scale
    out = Int8Linear(w, b, "weight_only")(x)
    assert out.shape == (2, 5, 24) and out.dtype == torch.float32
    assert relative_error(out, x @ rounded.T + b) < 0.01  # only the activations' bfloat16 rounding left
    assert relative_error(out, x @ w.T + b) > 1e-3  # and the weights really are int8


def test_weight_only_int8_is_as_accurate_on_every_cpu_kind():
    gpt = model()
    idx = torch.randint(0, gpt.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = gpt(idx), quantize_int8(gpt, "weight_only")(idx)
    assert relative_error(out, ref) < 0.05
    # The same product with torch's plain C++ kernels (what a CPU with no AVX at all runs): the same
    # numbers up to the order of the float32 sums, so the bound above holds whatever the CPU has.
    script = (
        "import sys, torch; sys.path.insert(0, 'tests'); from test_generate import model; "
        "from gpt2kit.decoding.int8 import quantize_int8; g = model(); idx = torch.load(sys.argv[1]); "
        "torch.save(quantize_int8(g, 'weight_only')(idx).detach(), sys.argv[1])"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "io.pt")
        torch.save(idx, path)
        env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
        subprocess.run([sys.executable, "-c", script, path], check=True, env=env, timeout=120)
        plain = torch.load(path)
    assert relative_error(plain, out) < 0.01
    assert relative_error(plain, ref) < 0.05


def test_dynamic_int8_error_depends_on_the_cpus_vnni():
    gpt = model()
    idx = torch.randint(0, gpt.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, dynamic = gpt(idx), quantize_int8(gpt, "dynamic")(idx)
        weight_only = quantize_int8(gpt, "weight_only")(idx)
    # FBGEMM rounds activations to 8 bits with VNNI, to 7 bits without (measured here: 3-5% and 6-10%).
    vnni = cpu_has_vnni()
    bound, kind = (0.06, "with VNNI") if vnni else (0.10, "without VNNI (7-bit activations)")
    assert relative_error(dynamic, ref) < bound, f"FBGEMM dynamic int8 on an x86 CPU {kind}"
    assert relative_error(weight_only, ref) < relative_error(dynamic, ref)  # float activations: closer


def test_int8_handles_any_component_with_linear_layers_and_lora():
    torch.manual_seed(0)
    gpt = GPT(preset("nano", vocab_size=50), mlp=SwiGLUMLP, head=UntiedLMHead).eval()
    block = gpt.blocks[0].attn
    block.c_attn = LoRALinear(block.c_attn, rank=4, alpha=8, dropout=0.0)
    torch.nn.init.normal_(block.c_attn.lora_B, std=0.5)  # an update that changes the output
    idx = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        ref, out = gpt(idx), quantize_int8(gpt)(idx)
    assert relative_error(out, ref) < 0.05  # the LoRA update is in the int8 matrix


def test_int8_generation_tracks_float_and_serves_a_prompt_cache():
    gpt, tok = model(), tokenizer()
    int8 = quantize_int8(gpt)
    cfg = SamplingConfig(max_new_tokens=8, temperature=0)
    prompt = tok.encode("Hello there")
    ref = generate(gpt, [prompt], cfg)[0].tokens
    assert generate(int8, [prompt], cfg)[0].tokens[:4] == ref[:4]
    batch = generate(int8, [prompt, tok.encode("Hi")], cfg)  # a left-padded batch runs too
    assert len(batch[0].tokens) == len(batch[1].tokens) == 8
    engine, short = (
        Engine(int8, max_batch=1),
        dataclasses.replace(cfg, max_new_tokens=6),
    )  # within the context
    first = engine.submit(Request(prompt, short, keep_cache=True))
    engine.run_until_idle()
    follow = prompt + first.tokens + tok.encode("Hi")
    again = engine.submit(Request(follow, short, keep_cache=True))
    engine.run_until_idle()
    assert again.reused == len(prompt) + 5  # the prompt and the first 5 new tokens came from the kept row
    assert again.tokens == generate(int8, [follow], short)[0].tokens


def test_int8_needs_the_x86_engine_and_a_cpu_float_model():
    with pytest.raises(GPT2KitError, match=r"CPU from float weights.*--dtype bfloat16"):
        quantize_int8(model().to("meta"))
    with pytest.raises(GPT2KitError, match=r"x86 quantized engine.*kernel='weight_only'"):
        check_engine(["qnnpack"])  # e.g. PyTorch on an ARM CPU: only the dynamic kernel needs FBGEMM
    check_engine(torch.backends.quantized.supported_engines)
    with pytest.raises(GPT2KitError, match=r"int8 kernel 'int4' is not one of auto, weight_only, dynamic"):
        quantize_int8(model(), "int4")


@pytest.mark.parametrize("vnni", [True, False])
def test_auto_kernel_is_fbgemms_only_where_it_is_accurate(monkeypatch, vnni):
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: vnni)
    int8 = quantize_int8(model())
    kernels = {m.kernel for m in int8.modules() if isinstance(m, Int8Linear)}
    assert kernels == {"dynamic" if vnni else "weight_only"}


def test_cli_generate_with_int8_weights(ckpt, capsys):  # noqa: F811
    main(["generate", "--ckpt", str(ckpt), "--prompt", "Hello", "--max_new_tokens", "10",
          "--temperature", "0", "--dtype", "int8"])  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("Hello") and len(out.rstrip("\n")) > len("Hello")
    with pytest.raises(SystemExit):
        main(["generate", "--ckpt", str(ckpt), "--dtype", "int4"])
    assert "int4" in capsys.readouterr().err


# -- what --dtype really runs: every leaf module the decoding calls, seen through a global forward hook -----


@contextlib.contextmanager
def modules_run():
    """(module type, weight dtype, input dtype) of every leaf module called inside the block."""
    seen = []

    def hook(module, args, output):
        if next(module.children(), None) is None:
            weight = next(module.parameters(recurse=False), None)
            x = next((a for a in args if torch.is_tensor(a) and a.is_floating_point()), None)
            seen.append((type(module), getattr(weight, "dtype", None), getattr(x, "dtype", None)))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def linears(seen):
    return {(w, x) for cls, w, x in seen if issubclass(cls, torch.nn.Linear)}


def int8_layers(seen):
    return {cls for cls, _, _ in seen if "int8" in cls.__name__.lower()}


def check_dtype_ran(seen, dtype: str, n_layer: int) -> None:
    if dtype == "int8":  # no float matmul left: every linear layer (and the tied head) is an int8 one
        assert not linears(seen) and int8_layers(seen)
        assert sum("int8" in cls.__name__.lower() for cls, _, _ in seen) >= 4 * n_layer + 1
    else:
        want = getattr(torch, dtype)
        assert linears(seen) == {(want, want)}, linears(seen)  # weights and activations in that dtype
        assert not int8_layers(seen)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_cli_generate_dtype_changes_what_runs(ckpt, capsys, dtype):  # noqa: F811
    with modules_run() as seen:
        main(["generate", "--ckpt", str(ckpt), "--prompt", "Hello", "--max_new_tokens", "4",
              "--temperature", "0", "--dtype", dtype])  # fmt: skip
    assert capsys.readouterr().out.startswith("Hello")
    check_dtype_ran(seen, dtype, model().config.n_layer)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_cli_chat_dtype_changes_what_runs(tmp_path, monkeypatch, capsys, dtype):
    from test_chat_repl import tiny_checkpoint

    chat_ckpt = tiny_checkpoint(tmp_path / "chat.ckpt")
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n/exit\n"))
    with modules_run() as seen:
        main(["chat", "--ckpt", chat_ckpt, "--temperature", "0", "--max_new_tokens", "4", "--dtype", dtype])
    assert len(capsys.readouterr().out.splitlines()) == 1  # one reply
    check_dtype_ran(seen, dtype, n_layer=2)


def test_int8_and_bfloat16_logits_differ_from_float32_yet_stay_close():
    gpt = model()
    idx = torch.randint(0, gpt.config.vocab_size, (2, 12))
    with torch.no_grad():
        ref = gpt(idx)
        int8 = quantize_int8(gpt)(idx)
        bf16 = copy.deepcopy(gpt).to(torch.bfloat16)(idx).float()
    for out in (int8, bf16):
        assert 0 < relative_error(out, ref) < 0.05
