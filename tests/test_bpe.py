"""Byte-level BPE (chapter 02): trainer equality, parity with tiktoken, round trips, every error."""

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanogpt_lib.bpe import (
    ASCII_SPLITS,
    CL100K_SPLIT_PATTERN,
    ENDOFTEXT,
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    apply_merges,
    merge_pair,
    merges_from_ranks,
    split_pattern,
    train_merges,
    whole_tokens,
)
from nanogpt_lib.data import load_text, tokenizer_from_meta

EDGE_CASES = [
    "",
    " ",
    "\n",
    "   \n\n \t  \r\n",
    "trailing spaces   ",
    "  leading spaces",
    "1234567890 3.14159 1,000,000 2024-01-01 ٣٤٥",
    "I'm you're he'll we've they'd it's I'M YOU'RE 's 't",
    "👋🏽 👨‍👩‍👧‍👦 🇫🇷 🏳️‍🌈",
    "中文字符，日本語のテキスト、한국어",
    "e\u0301 a\u0308 n\u0303 Z̤͔ͧ̑̓ क्षि",
    "zero\u200bwidth\u200djoiner\ufeff",
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 20,
    "a" * 5000,
    "\x00\x01\x7f control \u2028 separators \u00a0 nbsp",
    "<|endoftext|> is only ordinary text here",
    "mixed\r\nline\rends\n\n\n",
]


@pytest.fixture(scope="module")
def text() -> str:
    return load_text("tinyshakespeare")  # the local copy named by NANOGPT_TINYSHAKESPEARE


@pytest.fixture(scope="module")
def enc() -> tiktoken.Encoding:
    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    return BPETokenizer.from_tiktoken("gpt2")


@pytest.fixture(scope="module")
def small(text: str) -> BPETokenizer:
    return BPETokenizer.train(text[:50_000], 400, special_tokens=[ENDOFTEXT])


def naive_merges(chunks: list[bytes], num_merges: int) -> list[tuple[int, int]]:
    """Reference trainer: recount all pairs of every chunk before each merge; ties to the smallest pair."""
    seqs = [list(c) for c in chunks]
    merges = []
    for k in range(num_merges):
        counts = Counter()
        for s in seqs:
            counts.update(zip(s, s[1:], strict=False))
        if not counts:
            break
        top = max(counts.values())
        best = min(p for p, c in counts.items() if c == top)
        seqs = [merge_pair(s, best, 256 + k) for s in seqs]
        merges.append(best)
    return merges


def chunks_of(s: str, pattern: str = GPT2_SPLIT_PATTERN) -> list[bytes]:
    return [c.encode("utf-8") for c in regex.findall(pattern, s)]


# --- the building blocks -------------------------------------------------------------------


def test_merge_pair_left_to_right():
    assert merge_pair([1, 1, 1], (1, 1), 256) == [256, 1]
    assert merge_pair([1, 2, 1, 2, 3], (1, 2), 300) == [300, 300, 3]
    assert merge_pair([2, 1], (1, 2), 300) == [2, 1]
    assert merge_pair([], (1, 2), 300) == []


def test_apply_merges_follows_learned_order():
    ranks = {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    assert apply_merges(list(b"aaabdaaabac"), ranks) == [258, 100, 258, 97, 99]
    assert apply_merges([97], ranks) == [97]
    assert apply_merges([], ranks) == []


def test_split_pattern_names_and_errors():
    assert split_pattern("gpt2") == GPT2_SPLIT_PATTERN
    assert split_pattern("cl100k") == CL100K_SPLIT_PATTERN
    assert split_pattern(r"\w+") == r"\w+"
    with pytest.raises(ValueError, match="pattern must be one of"):
        split_pattern("")


# --- the fast trainer equals the naive one -------------------------------------------------


@pytest.mark.parametrize(
    "sample, num_merges",
    [
        ("shakespeare", 120),
        ("naïve café 中文字符 中文 😀😀😀 ÅÅÅ ünïcödé " * 30, 60),
        ("a" * 41 + " " + "a" * 12 + " aaa" * 5, 12),
        ("abababab cdcdcd abcd " * 10, 20),
        ("the theme then there these " * 50, 40),
    ],
)
def test_fast_trainer_equals_naive_trainer(sample: str, num_merges: int, text: str):
    if sample == "shakespeare":
        sample = text[:15_000]
    chunks = chunks_of(sample)
    expected = naive_merges(chunks, num_merges)
    assert train_merges(Counter(chunks), num_merges) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # some samples run out of pairs: both trainers stop there
        assert BPETokenizer.train(sample, 256 + num_merges).merges == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.text(min_size=1, max_size=300) | st.text(alphabet="ab cé中😀\n", min_size=1, max_size=300),
    num_merges=st.integers(1, 40),
)
def test_fast_trainer_equals_naive_trainer_on_random_unicode(sample: str, num_merges: int):
    chunks = chunks_of(sample)
    assert train_merges(Counter(chunks), num_merges) == naive_merges(chunks, num_merges)


def test_training_is_a_prefix_of_longer_training(text: str):
    short = BPETokenizer.train(text[:30_000], 300)
    long = BPETokenizer.train(text[:30_000], 600)
    assert long.merges[:44] == short.merges


def test_train_whole_text_shape(text: str):
    tok = BPETokenizer.train(text, 512)
    assert tok.vocab_size == 512 and len(tok.merges) == 256
    assert tok.token_bytes(256) in {b" t", b"he", b"th", b"e "}  # the commonest pair of English text
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < 0.6 * len(text)
    assert_tokens_encode_to_themselves(tok)


# --- parity with tiktoken ------------------------------------------------------------------


def test_from_tiktoken_recovers_gpt2(gpt2: BPETokenizer, enc: tiktoken.Encoding):
    assert gpt2.vocab_size == enc.n_vocab == 50257
    assert len(gpt2.merges) == 50_000 and gpt2.special_tokens == {ENDOFTEXT: 50256}
    for token_id in [0, 255, 256, 1000, 30_000, 50255]:
        assert gpt2.token_bytes(token_id) == enc.decode_single_token_bytes(token_id)


def test_parity_on_whole_tiny_shakespeare(gpt2: BPETokenizer, enc: tiktoken.Encoding, text: str):
    ids = gpt2.encode(text)
    assert ids == enc.encode(text)
    assert gpt2.decode(ids) == text


@pytest.mark.parametrize("s", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_parity_on_edge_cases(gpt2: BPETokenizer, enc: tiktoken.Encoding, s: str):
    ids = gpt2.encode(s, disallowed_special=())
    assert ids == enc.encode(s, disallowed_special=())
    assert gpt2.encode_ordinary(s) == enc.encode_ordinary(s)
    assert gpt2.decode(ids) == s


ASCII = st.characters(max_codepoint=127)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=ASCII, max_size=200) | st.text(alphabet=" \t\n\r\x0b\x0c\x1c\x1fa1'.", max_size=60))
def test_the_ascii_twin_of_gpt2s_pattern_finds_the_same_chunks(gpt2: BPETokenizer, enc: tiktoken.Encoding, s: str):
    """Every ASCII character, whitespace and control characters included, is split as the regex module splits it."""
    assert ASCII_SPLITS[GPT2_SPLIT_PATTERN].findall(s) == regex.findall(GPT2_SPLIT_PATTERN, s)
    assert gpt2.encode_ordinary(s) == enc.encode_ordinary(s)


def test_the_ascii_twin_covers_each_character_and_the_whole_tokens_are_tokens(gpt2: BPETokenizer):
    twin = ASCII_SPLITS[GPT2_SPLIT_PATTERN]
    for c in map(chr, range(128)):
        for s in (c, c * 3, f"a{c}b", f" {c} ", f"{c}\n", f"'s{c}", f"1{c}x"):
            assert twin.findall(s) == regex.findall(GPT2_SPLIT_PATTERN, s), repr(s)
    whole = whole_tokens([gpt2.token_bytes(i) for i in range(50257)])
    assert whole[" the"] == gpt2.encode_ordinary(" the")[0] and all(
        gpt2.token_bytes(i).decode("utf-8") == t for t, i in list(whole.items())[::97]
    )
    assert ASCII_SPLITS.get(BPETokenizer.train("ab ab ab", 258, pattern="cl100k").pattern) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parity_on_random_unicode(gpt2: BPETokenizer, enc: tiktoken.Encoding, s: str):
    assert gpt2.encode_ordinary(s) == enc.encode_ordinary(s)


def test_parity_with_the_cl100k_split_pattern(gpt2: BPETokenizer, enc: tiktoken.Encoding, text: str):
    """GPT-2's merges under GPT-4's split pattern, against tiktoken running the same combination."""
    ref = tiktoken.Encoding(
        "gpt2-merges-cl100k-split",
        pat_str=CL100K_SPLIT_PATTERN,
        mergeable_ranks=enc._mergeable_ranks,
        special_tokens={ENDOFTEXT: 50256},
    )
    ours = BPETokenizer(gpt2.merges, "cl100k", gpt2.special_tokens, gpt2.byte_order)
    for s in [text[:100_000], *EDGE_CASES]:
        assert ours.encode_ordinary(s) == ref.encode_ordinary(s)


def test_lone_surrogates_are_replaced_like_tiktoken(gpt2: BPETokenizer, enc: tiktoken.Encoding):
    for s in ["a\ud800b", "\udfff", "ok \ud83d\ude00 pair"]:
        assert gpt2.encode(s) == enc.encode(s)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50256), max_size=12))
def test_decode_of_invalid_utf8_matches_tiktoken(gpt2: BPETokenizer, enc: tiktoken.Encoding, ids: list[int]):
    assert gpt2.decode(ids) == enc.decode(ids)
    assert gpt2.decode_bytes(ids) == enc.decode_bytes(ids)


def test_decode_of_split_multibyte_characters(gpt2: BPETokenizer, enc: tiktoken.Encoding):
    emoji = gpt2.encode("👋")
    assert len(emoji) == 2
    for ids in [emoji[:1], emoji[1:], emoji[::-1], [gpt2.encode("\x00")[0], 188, 94]]:
        assert gpt2.decode(ids) == enc.decode(ids)
    assert "\ufffd" in gpt2.decode(emoji[:1])


def test_decode_accepts_numpy_ids(gpt2: BPETokenizer):
    ids = np.array(gpt2.encode("To be, or not to be"), dtype=np.int64)
    assert gpt2.decode(ids) == "To be, or not to be"


def test_decode_unknown_id_raises(gpt2: BPETokenizer):
    with pytest.raises(ValueError, match=r"token id 50257 is not in this tokenizer's vocabulary \(ids 0..50256\)"):
        gpt2.decode([50257])
    with pytest.raises(ValueError, match="token id -1"):
        gpt2.decode([-1])


# --- round trips ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_any_string(gpt2: BPETokenizer, small: BPETokenizer, s: str):
    assert gpt2.decode(gpt2.encode(s, disallowed_special=())) == s
    assert small.decode(small.encode(s, disallowed_special=())) == s


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", " ", "é", "<|endoftext|>", "\n"]), max_size=30).map("".join))
def test_roundtrip_with_special_tokens(small: BPETokenizer, s: str):
    ids = small.encode(s, allowed_special="all")
    assert ids.count(small.special_tokens[ENDOFTEXT]) == s.count(ENDOFTEXT)
    assert small.decode(ids) == s


# --- special tokens ------------------------------------------------------------------------


def test_special_tokens_follow_tiktoken(gpt2: BPETokenizer, enc: tiktoken.Encoding):
    doc = "First.<|endoftext|>Second <|endoftext|><|endoftext|> third"
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at index 6.*allowed_special"):
        gpt2.encode(doc)
    with pytest.raises(ValueError):
        enc.encode(doc)
    for kwargs in [
        {"allowed_special": {ENDOFTEXT}},
        {"allowed_special": "all"},
        {"disallowed_special": ()},
        {"allowed_special": set(), "disallowed_special": ()},
    ]:
        assert gpt2.encode(doc, **kwargs) == enc.encode(doc, **kwargs), kwargs
    assert gpt2.encode(doc, allowed_special="all").count(50256) == 3
    assert gpt2.encode_ordinary(doc) == enc.encode_ordinary(doc)
    assert gpt2.decode(gpt2.encode(doc, allowed_special="all")) == doc


def test_disallowed_special_can_name_any_string(gpt2: BPETokenizer):
    with pytest.raises(ValueError, match="'forbidden' at index 4"):
        gpt2.encode("the forbidden word", disallowed_special={"forbidden"})


def test_allowed_special_must_exist(gpt2: BPETokenizer):
    with pytest.raises(ValueError, match=r"allowed_special names \['<\|im_start\|>'\]"):
        gpt2.encode("hi", allowed_special={"<|im_start|>"})


def test_training_with_special_tokens(text: str):
    corpus = ENDOFTEXT.join(text[i : i + 250] for i in range(0, 15_000, 250))  # 60 documents
    tok = BPETokenizer.train(corpus, 300, special_tokens=[ENDOFTEXT, "<|pad|>"])
    assert tok.vocab_size == 300 and len(tok.merges) == 42
    assert tok.special_tokens == {ENDOFTEXT: 298, "<|pad|>": 299}
    # merges never learn pieces of the special token's string: same merges as training on the parts
    parts = Counter(c for piece in corpus.split(ENDOFTEXT) for c in chunks_of(piece))
    assert tok.merges == train_merges(parts, 42)
    assert train_merges(Counter(chunks_of(corpus)), 42) != tok.merges
    ids = tok.encode(corpus, allowed_special="all")
    assert ids.count(298) == 59 and tok.decode(ids) == corpus
    with pytest.raises(ValueError, match="special token"):
        tok.encode(corpus)


# --- errors --------------------------------------------------------------------------------


def test_vocab_size_below_256_is_refused():
    with pytest.raises(ValueError, match="vocab_size=255 is too small.*at least 256"):
        BPETokenizer.train("some text", 255)
    with pytest.raises(ValueError, match="256 byte tokens and 1 special tokens, so at least 257"):
        BPETokenizer.train("some text", 256, special_tokens=[ENDOFTEXT])
    with pytest.raises(ValueError, match="too small"):
        BPETokenizer.train("some text", 300.0)


def test_empty_text_is_refused():
    with pytest.raises(ValueError, match="empty text"):
        BPETokenizer.train("", 512)
    with pytest.raises(ValueError, match="empty text"):
        BPETokenizer.train(None, 512)


def test_unreachable_vocab_size_warns_and_returns_what_was_reached():
    with pytest.warns(UserWarning, match="after 4 merges: the vocabulary has 260 tokens, not the 1000 asked for"):
        tok = BPETokenizer.train("abcabc abc", 1000)
    assert tok.vocab_size == 260
    assert [tok.token_bytes(i) for i in range(256, 260)] == [b"ab", b"abc", b" abc", b"abcabc"]
    with pytest.warns(UserWarning, match="after 0 merges"):
        single = BPETokenizer.train("x", 300, special_tokens=[ENDOFTEXT])
    assert single.vocab_size == 257 and single.special_tokens == {ENDOFTEXT: 256}


def test_the_warning_for_an_unreachable_vocab_size_points_at_the_caller():
    with pytest.warns(UserWarning, match="ran out of pairs") as train_warning:
        BPETokenizer.train("abcabc abc", 1000)
    with pytest.warns(UserWarning, match="ran out of pairs") as chunks_warning:
        BPETokenizer.train_from_chunks({"abc": 2}, 1000)
    assert [w.filename for w in [*train_warning, *chunks_warning]] == [__file__, __file__]


def test_training_text_with_lone_surrogates():
    tok = BPETokenizer.train("ab\ud800ab ab", 260)
    assert tok.token_bytes(256) == b"ab"


def test_constructor_rejects_inconsistent_state():
    with pytest.raises(ValueError, match="does not exist yet"):
        BPETokenizer([(97, 256)])
    with pytest.raises(ValueError, match="repeats merge 0"):
        BPETokenizer([(97, 98), (97, 98)])
    with pytest.raises(ValueError, match="byte_order"):
        BPETokenizer([], byte_order=bytes(255))
    with pytest.raises(ValueError, match="id >= 257"):
        BPETokenizer([(97, 98)], special_tokens={ENDOFTEXT: 100})
    with pytest.raises(ValueError, match="distinct ids"):
        BPETokenizer([], special_tokens={"<|a|>": 300, "<|b|>": 300})


def test_merges_from_ranks_rejects_non_bpe_vocabularies():
    singles = {bytes([b]): b for b in range(256)}
    assert merges_from_ranks({**singles, b"ab": 256, b"abc": 257}) == ([(97, 98), (256, 99)], bytes(range(256)))
    with pytest.raises(ValueError, match="256 single bytes"):
        merges_from_ranks({bytes([b]): b for b in range(255)})
    with pytest.raises(ValueError, match="without gaps"):
        merges_from_ranks({**singles, b"ab": 300})
    with pytest.raises(ValueError, match=r"token b'abc' \(rank 256\) is not the merge of two"):
        merges_from_ranks({**singles, b"abc": 256})


def test_from_tiktoken_unknown_encoding():
    with pytest.raises(RuntimeError, match="could not load tiktoken's encoding 'gpt3000'.*TIKTOKEN_CACHE_DIR"):
        BPETokenizer.from_tiktoken("gpt3000")


# --- save / load ---------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path: Path, gpt2: BPETokenizer, small: BPETokenizer, text: str):
    for name, tok in [("gpt2", gpt2), ("small", small)]:
        path = tmp_path / f"{name}.json"
        tok.save(path)
        back = BPETokenizer.load(path)
        assert back.merges == tok.merges and back.pattern == tok.pattern
        assert back.special_tokens == tok.special_tokens and back.byte_order == tok.byte_order
        assert back.encode(text[:20_000]) == tok.encode(text[:20_000])
        assert BPETokenizer.from_dict(tok.to_dict()).to_dict() == tok.to_dict()
        assert json.loads(path.read_text(encoding="utf-8")) == tok.to_dict(), "the file is to_dict() as JSON"
    d = json.loads((tmp_path / "small.json").read_text())
    assert (d["format"], d["version"], d["pattern"]) == ("nanogpt-bpe", 2, GPT2_SPLIT_PATTERN)
    assert d["special_tokens"] == {"<|endoftext|>": 399} and len(d["merges"]) == 143
    assert d["byte_order"] == list(range(256))
    assert json.loads((tmp_path / "gpt2.json").read_text())["byte_order"][:3] == [33, 34, 35]
    a, b = gpt2.merges[0]
    assert (tmp_path / "gpt2.json").read_text().splitlines()[2] == f"[{a}, {b}],", "one merge per line"


def _replace(key, value):
    return lambda d: {**d, key: value}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: "not json {", "not a JSON file"),
        (lambda d: [1, 2], 'expected a JSON object with "format": "nanogpt-bpe"'),
        (_replace("format", "other"), '"format": "nanogpt-bpe"'),
        (_replace("version", 1), "field 'version': 1; this library reads version 2"),
        (_replace("type", "char"), "expected type 'bpe'"),
        (_replace("pattern", "(a+)+$"), "field 'pattern': .* not one of the known split patterns"),
        (_replace("byte_order", [1, 2, 3]), "byte_order"),
        (_replace("byte_order", ["a"] * 256), "field 'byte_order'"),
        (_replace("merges", [[1, 2, 3]]), "field 'merges'"),
        (_replace("merges", [["x", "y"]]), "field 'merges'"),
        (_replace("merges", [[1, 9999]]), "does not exist yet"),
        (_replace("special_tokens", {"<|x|>": "1"}), "field 'special_tokens'"),
    ],
)
def test_load_rejects_corrupt_files(tmp_path: Path, small: BPETokenizer, mutate, message: str):
    path = tmp_path / "tok.json"
    small.save(path)
    changed = mutate(json.loads(path.read_text()))
    path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(ValueError, match=message) as info:
        BPETokenizer.load(path)
    assert str(path) in str(info.value) and "BPETokenizer.save" in str(info.value)


def test_known_pattern_names_and_values_are_accepted(small: BPETokenizer):
    for pattern in ("gpt2", "cl100k", GPT2_SPLIT_PATTERN, CL100K_SPLIT_PATTERN):
        assert BPETokenizer.from_dict({**small.to_dict(), "pattern": pattern}).merges == small.merges
    with pytest.raises(ValueError, match="never compiled unchecked"):
        BPETokenizer.from_dict({**small.to_dict(), "pattern": GPT2_SPLIT_PATTERN + "|x"})


def test_train_from_chunks_equals_train_on_the_text(text: str):
    chunks = Counter(regex.findall(GPT2_SPLIT_PATTERN, text[:50_000]))
    assert BPETokenizer.train_from_chunks(chunks, 400).merges == BPETokenizer.train(text[:50_000], 400).merges


def test_from_dict_rejects_other_tokenizers():
    with pytest.raises(ValueError, match="expected type 'bpe' \\(got 'char'\\)"):
        BPETokenizer.from_dict({"type": "char", "chars": "ab"})
    with pytest.raises(ValueError, match="with 'merges' and 'pattern'"):
        BPETokenizer.from_dict({"type": "bpe", "merges": []})


def test_prepared_data_metadata_can_carry_a_bpe_tokenizer(small: BPETokenizer, text: str):
    meta = json.loads(json.dumps({"tokenizer": small.to_dict()}))  # as stored in meta.json
    tok = tokenizer_from_meta(meta)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == small.vocab_size
    assert tok.encode(text[:5_000]) == small.encode(text[:5_000])


# --- every token is reachable --------------------------------------------------------------


def assert_tokens_encode_to_themselves(tok: BPETokenizer):
    ordinary = tok.vocab_size - len(tok.special_tokens)
    for token_id in range(ordinary):
        assert apply_merges([tok.byte_order.index(b) for b in tok.token_bytes(token_id)], tok._ranks) == [token_id]


def test_every_gpt2_token_is_what_its_bytes_encode_to(gpt2: BPETokenizer):
    assert_tokens_encode_to_themselves(gpt2)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=400) | st.text(alphabet="ab c\n", min_size=1, max_size=400))
def test_every_trained_token_is_what_its_bytes_encode_to(sample: str):
    """Trained vocabularies have no two tokens with the same bytes, and no token the merges cannot reach."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tok = BPETokenizer.train(sample, 300)
    assert_tokens_encode_to_themselves(tok)
    assert len({tok.token_bytes(i) for i in range(tok.vocab_size)}) == tok.vocab_size
