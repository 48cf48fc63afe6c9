"""gpt2kit tokenizers and chat templates as Hugging Face tokenizer files, and back.

``export-hf`` writes, next to the weights, what ``transformers.AutoTokenizer.from_pretrained`` reads:

- ``tokenizer.json``: a `tokenizers` tokenizer that gives gpt2kit's ids on any text (``Tokenizer.from_file``
  loads it). Byte-level BPE (GPT-2's and trained ones) becomes a ``BPE`` model with GPT-2's split and byte
  alphabet; a char tokenizer a ``WordLevel`` model over single characters, with a ``Fuse`` decoder. Special
  tokens are added tokens with gpt2kit's ids.
- ``tokenizer_config.json``: the tokenizer class, the end-of-text token, and a chat checkpoint's template
  as a Jinja ``chat_template`` (rendered from the template's own pieces, so ``apply_chat_template`` writes
  what gpt2kit's template writes); plus ``gpt2kit_chat_template`` to restore the gpt2kit template exactly.
- ``vocab.json`` + ``merges.txt`` for BPE (what older GPT-2 readers take).

A tokenizer that no `tokenizers` model reproduces is refused (:func:`gpt2kit.tokenizers.hf_export.backend_for`), never written as a
silently empty tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpt2kit.tokenizers import EOT, Tokenizer
from gpt2kit.tokenizers.hf_export import backend_for

CHAT_TEMPLATE_KEY = "gpt2kit_chat_template"
"""tokenizer_config.json's copy of the gpt2kit chat template (class and arguments), read back by import."""

_CONTENT = "\x00gpt2kit-content\x00"  # a marker no template writes: the content's place in a turn


def jinja_chat_template(template: Any) -> str:
    """A Jinja chat template (Hugging Face's ``chat_template``) that renders what ``template`` renders.

    Built from the template's pieces for each role, so any :class:`~gpt2kit.chat.template.ChatTemplate`
    (a plugin's too) is written exactly: the text before and after each message's content, and the
    reply header that ``add_generation_prompt`` appends.
    """

    def around(pieces: list[Any]) -> tuple[str, str]:
        text = "".join(_CONTENT if p.text == _CONTENT else p.text for p in pieces)
        before, _, after = text.partition(_CONTENT)
        return before, after

    lines = ["{%- for message in messages -%}"]
    for i, role in enumerate(("system", "user", "assistant")):
        before, after = around(template.turn(role, _CONTENT))
        keyword = "if" if i == 0 else "elif"
        lines.append(
            f"{{%- {keyword} message['role'] == {json.dumps(role)} -%}}"
            f"{{{{ {json.dumps(before)} }}}}{{{{ message['content'] }}}}{{{{ {json.dumps(after)} }}}}"
        )
    lines.append("{%- else -%}{{ raise_exception('unknown role: ' + message['role']) }}")
    lines.append("{%- endif -%}")
    lines.append("{%- endfor -%}")
    header = "".join(p.text for p in template.reply_header())
    lines.append(f"{{%- if add_generation_prompt -%}}{{{{ {json.dumps(header)} }}}}{{%- endif -%}}")
    return "".join(lines)


def save_hf_tokenizer(
    tok: Tokenizer, out_dir: str | Path, chat_template: dict[str, Any] | None = None
) -> None:
    """Write ``tok`` (and a chat template, as stored in a checkpoint) as Hugging Face tokenizer files."""
    out_dir = Path(out_dir)
    backend = backend_for(tok)
    backend.save(str(out_dir / "tokenizer.json"))
    if type(backend.model).__name__ == "BPE":
        backend.model.save(str(out_dir))  # vocab.json + merges.txt
    eot = EOT if tok.token_id(EOT) is not None else None
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(1e30),
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
    }
    if chat_template is not None:
        from gpt2kit.chat.template import ChatTemplate

        config["chat_template"] = jinja_chat_template(ChatTemplate.from_dict(chat_template))
        config[CHAT_TEMPLATE_KEY] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special = {k: v for k, v in config.items() if k in ("bos_token", "eos_token", "unk_token") and v}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def read_chat_template(hf_dir: str | Path) -> dict[str, Any] | None:
    """The gpt2kit chat template an exported folder carries (``tokenizer_config.json``), or None."""
    path = Path(hf_dir) / "tokenizer_config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get(CHAT_TEMPLATE_KEY)
