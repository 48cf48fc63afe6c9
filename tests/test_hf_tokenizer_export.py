"""export-hf carries the tokenizer: transformers and `tokenizers` read it with gpt2kit's ids, for each kind.

Also: a chat checkpoint's template becomes a Jinja chat_template that renders what gpt2kit renders, and
import-hf restores tokenizer, template and every config field (export → import → export is unchanged).
"""

import json

import pytest
import torch

from gpt2kit.chat.template import ChatEncoder, ChatMLTemplate, Message, RoleTokensTemplate
from gpt2kit.checkpoint import load_module, save_checkpoint
from gpt2kit.interop.hf import export_hf, import_hf
from gpt2kit.testing import tiny_config
from gpt2kit.tokenizers import ByteLevelBPETokenizer, CharTokenizer, GPT2Tokenizer
from gpt2kit.training.lit import GPTLitModule

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SAMPLES = [
    "Hello world",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
    "  spaces   and\ttabs\n\n\nnewlines ",
    "it's we'll 1234 don't!!",
    "ROMEO: Is the day so young?",
]
ZH = ["床前明月光，疑是地上霜。", "举头望明月\n低头思故乡"]


def _text(n: int = 20000) -> str:
    from conftest import SHARED_DATA

    return (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:n]


def _tokenizer(kind: str):
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "bpe":
        tok = ByteLevelBPETokenizer(vocab_size=400)
        tok.train([_text(), *ZH])
        return tok
    tok = CharTokenizer(special_tokens=["<|endoftext|>"] if kind == "char" else [])  # "char-plain": none
    tok.train([_text(), *ZH, *SAMPLES])
    return tok


def _export(tmp_path, tok, template=None, name="hf"):
    if template is not None:
        tok.add_special_tokens(template.special_tokens())
    torch.manual_seed(0)
    module = GPTLitModule(tiny_config(vocab_size=tok.vocab_size, block_size=32))
    module.tokenizer = tok
    if template is not None:
        module.chat_template = template.to_dict()
    ckpt = save_checkpoint(module, tmp_path / f"{name}.ckpt")
    return ckpt, export_hf(ckpt, tmp_path / name)


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char", "char-plain"])
def test_exported_tokenizer_gives_gpt2kit_ids(tmp_path, kind):
    tok = _tokenizer(kind)
    _, out = _export(tmp_path, tok)
    fast = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(out)
    texts = SAMPLES + (ZH if kind != "gpt2" else ZH)
    for text in texts:
        ids = tok.encode(text)
        assert ids, text
        assert fast.encode(text, add_special_tokens=False).ids == ids, text
        assert auto.encode(text, add_special_tokens=False) == ids, text
        assert auto.decode(ids) == tok.decode(ids) == text
    eot = tok.token_id("<|endoftext|>")
    assert len(auto) == tok.vocab_size
    assert auto.eos_token_id == eot
    if eot is None:  # nanoGPT's char tokenizer: no end-of-text token, so no special token at all
        assert kind == "char-plain" and auto.bos_token_id is None and not auto.all_special_ids
        assert auto.decode(ids, skip_special_tokens=True) == text  # no character is special
    else:
        assert auto.convert_tokens_to_ids("<|endoftext|>") == eot


def test_gpt2_model_and_tokenizer_load_in_transformers_and_generate(tmp_path):
    tok = _tokenizer("bpe")
    ckpt, out = _export(tmp_path, tok)
    ours = load_module(ckpt).model
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    auto = transformers.AutoTokenizer.from_pretrained(out)
    ids = auto("First Citizen:", return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tok.encode("First Citizen:")
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max() < 1e-4
        new = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8)
    assert new.shape[1] == ids.shape[1] + 8
    assert isinstance(auto.decode(new[0]), str)


@pytest.mark.parametrize("template_cls", [RoleTokensTemplate, ChatMLTemplate])
@pytest.mark.parametrize("kind", ["gpt2", "char"])
def test_chat_template_renders_as_gpt2kit(tmp_path, template_cls, kind):
    tok, template = _tokenizer(kind), template_cls()
    _, out = _export(tmp_path, tok, template)
    auto = transformers.AutoTokenizer.from_pretrained(out)
    conversation = [
        Message("system", "Be brief."),
        Message("user", "Hi there, who are you?"),
        Message("assistant", "A player."),
        Message("user", "And?"),
    ]
    encoder = ChatEncoder(template, tok)
    chat = [{"role": m.role, "content": m.content} for m in conversation]
    rendered = auto.apply_chat_template(chat, tokenize=False)
    assert rendered == encoder.render(conversation)
    prompt = auto.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    header = tok.decode(encoder.reply_header_ids())
    assert prompt == encoder.render(conversation) + header
    ids = auto.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False)
    expected = [i for turn in encoder.encode(conversation) for i in turn.ids] + encoder.reply_header_ids()
    assert list(ids) == expected


def test_import_restores_tokenizer_template_and_config(tmp_path):
    tok, template = _tokenizer("char"), ChatMLTemplate()
    _, out = _export(tmp_path, tok, template, name="first")
    config = json.loads((out / "config.json").read_text())
    config["activation_function"] = "gelu_pytorch_tanh"
    config["initializer_range"] = 0.05
    config["summary_type"] = "cls_index"  # a field gpt2kit has no use for
    (out / "config.json").write_text(json.dumps(config))
    ckpt = import_hf(out, tmp_path / "imported.ckpt")
    module = load_module(ckpt)
    assert module.tokenizer == tok
    assert module.chat_template == template.to_dict()
    again = export_hf(ckpt, tmp_path / "second")
    assert json.loads((again / "config.json").read_text()) == config
    assert json.loads((again / "tokenizer_config.json").read_text()) == json.loads(
        (out / "tokenizer_config.json").read_text()
    )
    assert (again / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()


def test_prepared_data_tokenizer_json_is_a_tokenizers_file(tmp_path):
    """A prepared dataset's tokenizer.json loads with `tokenizers` and gives the dataset's ids."""
    from gpt2kit.data import prepare

    src = tmp_path / "corpus.txt"
    src.write_text(_text(5000), encoding="utf-8")
    prepared = _prepare(src, tmp_path / "prepared")
    fast = tokenizers.Tokenizer.from_file(str(prepared.path / "tokenizer.json"))
    for text in SAMPLES[:2]:
        assert fast.encode(text, add_special_tokens=False).ids == prepared.tokenizer.encode(text)
    assert prepare is not None


def _prepare(src, root):
    from gpt2kit.data import TextSource, prepare

    return prepare(TextSource.resolve(str(src)), CharTokenizer(), root, 0.1, progress=False)
