"""Tokenizers: GPT-2's exact ids (against OpenAI's own algorithm), round trips, BPE training, special tokens."""

import json
from functools import lru_cache

import pytest
import regex
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2kit import GPT, GPT2KitError, preset
from gpt2kit.data import fetch_corpus
from gpt2kit.data.readers import cut_pieces
from gpt2kit.nn import UntiedLMHead
from gpt2kit.tokenizers import EOT, ByteLevelBPETokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer
from gpt2kit.tokenizers.bpe import bytes_to_unicode

# --- OpenAI's encoder (openai/gpt-2 src/encoder.py), the reference the gpt2 tokenizer must match -------


@lru_cache
def ref_bytes_to_unicode():
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def ref_get_pairs(word):
    pairs = set()
    prev_char = word[0]
    for char in word[1:]:
        pairs.add((prev_char, char))
        prev_char = char
    return pairs


class RefEncoder:
    def __init__(self, encoder, bpe_merges):
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.byte_encoder = ref_bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.bpe_ranks = dict(zip(bpe_merges, range(len(bpe_merges)), strict=True))
        self.cache = {}
        self.pat = regex.compile(
            r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
        )

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        pairs = ref_get_pairs(word)
        if not pairs:
            return token
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = ref_get_pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def encode(self, text):
        bpe_tokens = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[bpe_token] for bpe_token in self.bpe(token).split(" "))
        return bpe_tokens

    def decode(self, tokens):
        text = "".join([self.decoder[token] for token in tokens])
        return bytearray([self.byte_decoder[c] for c in text]).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def ref():
    root = fetch_corpus("gpt2-bpe")
    encoder = json.loads((root / "encoder.json").read_text(encoding="utf-8"))
    bpe_data = (root / "vocab.bpe").read_text(encoding="utf-8")
    merges = [tuple(line.split()) for line in bpe_data.split("\n")[1:-1]]
    return RefEncoder(encoder, merges)


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


# --- GPT-2: exact ids ------------------------------------------------------------------------------------

# Ids published for GPT-2 (tiktoken's and Hugging Face's docs use the first) and checked against OpenAI's
# encoder above.
LITERAL = [
    ("Hello world", [15496, 995]),
    (" Hello world!", [18435, 995, 0]),
    ("<|endoftext|>", [27, 91, 437, 1659, 5239, 91, 29]),  # text, not the special token, unless allowed
    ("a\n\nb", [64, 198, 198, 65]),
    ("  hi   there\n\n\n", [220, 23105, 220, 220, 612, 628, 198]),
    ("I'm can't we'll", [40, 1101, 460, 470, 356, 1183]),
    ("你好，世界", [19526, 254, 25001, 121, 171, 120, 234, 10310, 244, 45911, 234]),
    ("🤖👍🏽", [8582, 97, 244, 41840, 235, 8582, 237, 121]),
]

VARIED = [
    "",
    " ",
    "\n",
    "The quick brown fox jumps over the lazy dog.",
    "It's, they're, we've, I'm, you'll, he'd, 'S 'T 'RE — capitals are not contractions",
    "    indented code:\n\tif (x != 0) { return y**2; }\n\n\n    # comment\r\n",
    "numbers 1234567890 3.14159 -42 1e10 0x1F 100,000 ½ ² ٣",
    "a  b   c    d\t\te\n \n  \n   f",
    "trailing spaces   ",
    "\u00a0non-breaking\u2009thin\u3000ideographic\u200bzero-width\u2028line sep",
    "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。",
    "日本語のテキスト、カタカナとひらがな。한국어 텍스트입니다.",
    "العربية من اليمين إلى اليسار",
    "हिन्दी में देवनागरी लिपि (combining marks)",
    "Ελληνικά και Кириллица",
    "emoji 👨‍👩‍👧‍👦 family, 🇫🇷 flag, ❤️ heart, 🏳️‍🌈",
    "mixed<|endoftext|>special<|endoftext|>",
    "URL https://example.com/path?q=1&r=2#frag and e-mail a.b@c.org",
    "∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x|",
    "\x00\x01\x7f control \x1b[31m",
    "x" * 300 + " " + "ab" * 200,
    "!!!???... --- ''' \"\"\" ```",
]


@pytest.mark.parametrize("text,ids", LITERAL)
def test_gpt2_literal_ids(gpt2, ref, text, ids):
    assert gpt2.encode(text) == ids
    assert ref.encode(text) == ids
    assert gpt2.decode(ids) == text


def test_gpt2_ids_equal_openai_on_varied_text(gpt2, ref):
    corpora = {
        "tinyshakespeare": "input.txt",
        "gutenberg-english": "1342-0.txt",
        "chinese-poetry": "songci300.json",
    }
    texts = list(VARIED)
    for corpus, name in corpora.items():
        text = (fetch_corpus(corpus) / name).read_text(encoding="utf-8")
        texts += [text[i : i + 2000] for i in range(0, len(text), len(text) // 12)]
    batch = gpt2.encode_batch(texts)
    hf = [e.ids for e in _hf_gpt2_pipeline().encode_batch(texts, add_special_tokens=False)]
    for text, ids, hf_ids in zip(texts, batch, hf, strict=True):
        assert ids == ref.encode(text), text[:80]
        assert ids == hf_ids, text[:80]  # a third implementation, with its own regex engine, agrees
        assert gpt2.encode(text) == ids
        assert gpt2.decode(ids) == text


def test_gpt2_classifies_unicode_as_openai_does(gpt2, ref):
    """Letter, digit or other: each code point in a letter run, a digit run and a run of its own."""
    points = [c for c in range(0, 0x110000, 16) if not 0xD800 <= c <= 0xDFFF]
    for i in range(0, len(points), 4096):
        text = " ".join(f"a{chr(c)}1 {chr(c)}{chr(c)}" for c in points[i : i + 4096])
        assert gpt2.encode_ordinary(text) == ref.encode(text), hex(points[i])


def _hf_gpt2_pipeline():
    """Hugging Face's GPT-2 tokenizer pipeline (Oniguruma regex), built from the same two files."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    root = fetch_corpus("gpt2-bpe")
    backend = Backend(models.BPE.from_file(str(root / "encoder.json"), str(root / "vocab.bpe")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return backend


def test_gpt2_special_token_only_where_allowed(gpt2):
    assert gpt2.eot_id == 50256 and gpt2.vocab_size == 50257
    text = "one<|endoftext|>two"
    assert gpt2.encode(text) == [505, 27, 91, 437, 1659, 5239, 91, 29, 11545]
    assert gpt2.encode(text, allowed_special="all") == [505, 50256, 11545]
    assert gpt2.encode(text, allowed_special={EOT}) == [505, 50256, 11545]
    assert gpt2.encode_batch([text], allowed_special="all") == [[505, 50256, 11545]]
    assert gpt2.decode([505, 50256, 11545]) == text
    with pytest.raises(GPT2KitError, match="not special tokens"):
        gpt2.encode(text, allowed_special={"<|im_start|>"})


def test_gpt2_state_is_self_contained(gpt2, monkeypatch):
    saved = gpt2.to_json()
    monkeypatch.setenv("GPT2KIT_DATA", "/nonexistent")  # a checkpoint's tokenizer needs no files
    monkeypatch.setenv("GPT2KIT_CACHE", "/nonexistent")
    again = Tokenizer.from_json(saved)
    assert again == gpt2 and again.encode("Hello world") == [15496, 995]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_gpt2_matches_openai_and_round_trips_on_random_unicode(gpt2, ref, text):
    ids = gpt2.encode(text)
    assert ids == ref.encode(text)
    assert gpt2.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab \n\t\r.é中"), max_size=12), max_size=12))
def test_cutting_at_line_starts_never_changes_ids(gpt2, parts):
    text = "".join(parts)
    pieces = list(cut_pieces(parts, size=3))
    assert "".join(pieces) == text
    assert [i for p in pieces for i in gpt2.encode(p)] == gpt2.encode(text)


def test_decode_rejects_ids_outside_the_vocabulary(gpt2):
    with pytest.raises(GPT2KitError, match="token id 50257 is not in the gpt2 vocabulary"):
        gpt2.decode([1, 50257])
    with pytest.raises(GPT2KitError, match="token id -1"):
        gpt2.decode([-1])


def test_streaming_decode_waits_for_whole_characters(gpt2):
    from gpt2kit.decoding import Detokenizer  # the one incremental detokenizer (the engine's)

    ids = gpt2.encode("你好 🤖")
    detok, pieces = Detokenizer(gpt2, []), []
    for i in ids:
        before = len(detok.text)
        detok.add(i)
        pieces.append(detok.text[before:])
    assert "".join(pieces) == "你好 🤖"
    assert all("\ufffd" not in piece for piece in pieces)


# --- trainable byte-level BPE -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shakespeare():
    return (fetch_corpus("tinyshakespeare") / "input.txt").read_text()[:300_000]


def test_bpe_training_is_deterministic_and_streamable(shakespeare):
    a = ByteLevelBPETokenizer(vocab_size=600)
    a.train([shakespeare])
    b = ByteLevelBPETokenizer(vocab_size=600)
    b.train(cut_pieces([shakespeare], size=1000))  # in pieces, as preparation streams it
    assert a.to_dict() == b.to_dict() and a.vocab_size == 600
    assert a.eot_id == 0 and set(bytes_to_unicode().values()) <= set(a.tokens)  # every byte is a token
    ids = a.encode(shakespeare)
    assert len(ids) < len(shakespeare) / 2 and a.decode(ids) == shakespeare
    assert Tokenizer.from_json(a.to_json()).encode("ROMEO: what?") == a.encode("ROMEO: what?")


def test_bpe_chinese_round_trip():
    poems = (fetch_corpus("chinese-poetry") / "shijing.json").read_text(encoding="utf-8")
    bpe = ByteLevelBPETokenizer(vocab_size=1000, min_frequency=2)
    bpe.train([poems])
    line = "关关雎鸠，在河之洲。窈窕淑女，君子好逑。"
    ids = bpe.encode(line)
    assert bpe.decode(ids) == line and len(ids) < len(line.encode("utf-8")) / 2  # learned whole characters
    assert bpe.decode(bpe.encode("未见过的字：龘靐 and English")) == "未见过的字：龘靐 and English"  # bytes


@pytest.mark.parametrize("vocab_size", [300, 3000])
def test_trained_bpe_ids_equal_the_merge_list_reference(shakespeare, vocab_size):
    """Encoding ranks merges by token id (tiktoken); OpenAI's encoder applies the merge list in order."""
    poems = (fetch_corpus("chinese-poetry") / "shijing.json").read_text(encoding="utf-8")
    bpe = ByteLevelBPETokenizer(vocab_size=vocab_size, special_tokens=[EOT, "<|im_start|>"])
    bpe.train([shakespeare[:100_000], poems[:100_000]])
    encoder = {t: i for i, t in enumerate(bpe.tokens) if t not in bpe.special_tokens}
    ref = RefEncoder(encoder, [tuple(m.split(" ")) for m in bpe.merges])
    text = shakespeare[-20_000:] + poems[-20_000:] + "  Tabs\t\tand émoji 🙂 and 未见过的字"
    assert bpe.encode(text) == ref.encode(text)


def test_bpe_vocab_smaller_than_byte_alphabet_is_refused():
    with pytest.raises(GPT2KitError, match=r"vocab_size=200 is smaller than the byte alphabet.*>= 257"):
        ByteLevelBPETokenizer(vocab_size=200)
    with pytest.raises(GPT2KitError, match=r">= 258"):
        ByteLevelBPETokenizer(vocab_size=257, special_tokens=[EOT, "<|pad|>"])
    ByteLevelBPETokenizer(vocab_size=256, special_tokens=[])  # bytes alone are a valid vocabulary


def test_untrained_bpe_says_so():
    with pytest.raises(GPT2KitError, match="not trained yet"):
        ByteLevelBPETokenizer(vocab_size=300).encode("x")


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=40))
def test_bpe_round_trips_random_unicode(text):
    assert _small_bpe().decode(_small_bpe().encode(text)) == text


@lru_cache
def _small_bpe() -> ByteLevelBPETokenizer:
    bpe = ByteLevelBPETokenizer(vocab_size=300)
    bpe.train(["hello world, hello there; 你好你好"] * 5)
    return bpe


# --- special tokens for chat --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_add_special_tokens_appends_ids_and_survives_saving(kind):
    if kind == "char":
        tok = CharTokenizer(special_tokens=[EOT])
        tok.train(["hello world"])
    elif kind == "bpe":
        tok = ByteLevelBPETokenizer(vocab_size=280)
        tok.train(["hello world"] * 3)
    else:
        tok = GPT2Tokenizer()
    before, n = tok.encode("hello world"), tok.vocab_size
    ids = tok.add_special_tokens(["<|im_start|>", "<|im_end|>", EOT])
    assert ids[:2] == [n, n + 1] and ids[2] == tok.eot_id and tok.vocab_size == n + 2
    assert tok.encode("hello world") == before  # existing ids never move
    assert tok.add_special_tokens(["<|im_start|>"]) == [n]  # adding again is a no-op
    text = "<|im_start|>hello<|im_end|>"
    ids = tok.encode(text, allowed_special="all")
    assert ids[0] == n and ids[-1] == n + 1 and tok.decode(ids) == text
    if kind != "char":  # (the char vocabulary has no '<' or '|')
        assert n not in tok.encode(text)  # text unless allowed
    again = Tokenizer.from_json(tok.to_json())
    assert again == tok and again.encode(text, allowed_special="all") == ids


def test_char_tokenizer_hints_at_allowed_special():
    tok = CharTokenizer(special_tokens=[EOT])
    tok.train(["abc"])
    assert tok.encode("ab" + EOT + "c", allowed_special="all") == [0, 1, 3, 2]
    with pytest.raises(GPT2KitError, match="allowed_special"):
        tok.encode("ab" + EOT)


def test_special_tokens_need_a_trained_tokenizer():
    with pytest.raises(GPT2KitError, match="after training it"):
        ByteLevelBPETokenizer(vocab_size=300).add_special_tokens(["<|im_start|>"])


def test_resize_token_embeddings_keeps_rows_and_tying():
    torch.manual_seed(0)
    model = GPT(preset("nano", vocab_size=65)).eval()
    idx = torch.randint(0, 65, (2, 9))
    before = model(idx)
    old = model.wte.weight.detach().clone()
    model.resize_token_embeddings(70)
    assert model.config.vocab_size == 70 and model.wte.weight.shape == (70, 32)
    assert torch.equal(model.wte.weight[:65], old)
    assert model.wte.weight[65:].std().item() == pytest.approx(0.02, rel=0.6)  # GPT-2's init
    after = model(idx)
    assert after.shape == (2, 9, 70) and torch.allclose(after[..., :65], before, atol=1e-6)
    assert model(torch.tensor([[69]])).shape == (1, 1, 70)  # new ids embed and are predicted (tied head)
    with pytest.raises(GPT2KitError, match="only growing"):
        model.resize_token_embeddings(60)


def test_resize_token_embeddings_grows_an_untied_head():
    torch.manual_seed(0)
    model = GPT(preset("nano", vocab_size=65), head=UntiedLMHead).eval()
    idx = torch.randint(0, 65, (2, 9))
    before = model(idx)
    model.resize_token_embeddings(70)
    assert model.head.lm_head.weight.shape == (70, 32)
    assert torch.allclose(model(idx)[..., :65], before, atol=1e-6)  # old logits unchanged, new ids predicted
    assert model(torch.tensor([[69]])).shape == (1, 1, 70)
