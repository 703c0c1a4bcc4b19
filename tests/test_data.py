"""nanogpt_lib.data: datasets, the character tokenizer, prepared splits, batches, `nanogpt prepare`."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt_lib import cli, data
from nanogpt_lib.data import (
    DATASETS,
    BigramLanguageModel,
    CharTokenizer,
    DownloadError,
    dataset_path,
    get_batch,
    load_prepared,
    load_text,
    prepare_char_dataset,
    tokenizer_from_meta,
)

SHAKESPEARE = os.environ.get("NANOGPT_TINYSHAKESPEARE")
needs_shakespeare = pytest.mark.skipif(
    not SHAKESPEARE or not Path(SHAKESPEARE).is_file(), reason="NANOGPT_TINYSHAKESPEARE names no local copy"
)
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


# --- the character tokenizer -------------------------------------------------------------------


def test_round_trip_and_vocabulary_order():
    tok = CharTokenizer.from_text(TEXT)
    assert tok.chars == "".join(sorted(set(TEXT))) and tok.vocab_size == len(set(TEXT))
    ids = tok.encode(TEXT)
    assert ids == [tok.chars.index(c) for c in TEXT]
    assert tok.decode(ids) == TEXT
    assert tok.decode(np.array(ids, dtype=np.uint16)) == TEXT
    assert tok.decode(torch.tensor(ids)) == TEXT
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_round_trip_of_unicode_text():
    text = "naïve café — 東京 🙂\tend"
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text and tok.vocab_size == len(set(text))


def test_constructor_keeps_the_given_order():
    tok = CharTokenizer(["b", "a", "\n"])
    assert tok.encode("ab\n") == [1, 0, 2]
    assert CharTokenizer("ba\n") == tok


@pytest.mark.parametrize(
    "chars, match",
    [("", "at least one"), (["ab"], "single characters"), ("abca", "more than once: \\['a'\\]")],
)
def test_bad_vocabularies_are_refused(chars, match):
    with pytest.raises(ValueError, match=match):
        CharTokenizer(chars)


def test_unknown_characters_are_named_with_their_first_position():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(ValueError) as info:
        tok.encode("abc x y x z")
    msg = str(info.value)
    assert "3 character(s)" in msg
    assert "'x' (first at position 4)" in msg and "'y' (first at position 6)" in msg
    assert "'z' (first at position 10)" in msg
    assert "unknown=" in msg and "from_text" in msg


def test_many_unknown_characters_are_summarised():
    tok = CharTokenizer("a")
    with pytest.raises(ValueError, match="15 character.*and 5 more"):
        tok.encode("a" + "bcdefghijklmnop")


def test_unknown_replacement_is_explicit():
    assert CharTokenizer("ab?").unknown is None
    tok = CharTokenizer("ab?", unknown="?")
    assert tok.decode(tok.encode("abXbaY")) == "ab?ba?"
    assert tok.encode("ab") == [0, 1]
    with pytest.raises(ValueError, match="unknown='#' is not in the vocabulary"):
        CharTokenizer("ab?", unknown="#")


def test_decode_refuses_ids_out_of_range():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="token id 3 at position 1"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="token id -1 at position 0"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="token ids must be integers"):
        tok.decode([1.0])
    assert tok.decode([np.int64(2), np.uint16(0)]) == "ca"


def test_save_and_load_json(tmp_path):
    tok = CharTokenizer.from_text(TEXT + "é?", unknown="?")
    path = tmp_path / "tok.json"
    tok.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d == {"type": "char", "chars": tok.chars, "unknown": "?"}
    back = CharTokenizer.load(path)
    assert back == tok and back.encode("é\n") == tok.encode("é\n")
    assert CharTokenizer.from_dict(tok.to_dict()) == tok


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text("not json")
    with pytest.raises(ValueError, match="not a JSON tokenizer file"):
        CharTokenizer.load(path)
    path.write_text(json.dumps({"type": "bpe", "merges": []}))
    with pytest.raises(ValueError, match="not a character tokenizer"):
        CharTokenizer.load(path)


# --- datasets -------------------------------------------------------------------------------------


def test_tinyshakespeare_is_described():
    ds = DATASETS["tinyshakespeare"]
    assert ds.url == "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    assert ds.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert ds.size == 1_115_394


@pytest.fixture
def fake_dataset(monkeypatch, tmp_path):
    """A small dataset registered under the name 'tiny', with an unreachable URL."""
    payload = TEXT.encode()
    monkeypatch.setitem(
        DATASETS,
        "tiny",
        data.Dataset("tiny", "http://127.0.0.1:9/t.txt", "tiny.txt", hashlib.sha256(payload).hexdigest(), len(payload)),
    )
    monkeypatch.delenv("NANOGPT_TINY", raising=False)
    src = tmp_path / "copy.txt"
    src.write_bytes(payload)
    return src


def test_local_copy_is_verified_and_used_in_place(fake_dataset, tmp_path):
    src = fake_dataset
    before = (src.stat().st_mtime_ns, src.read_bytes())
    data_dir = tmp_path / "data"
    assert dataset_path("tiny", source=src, data_dir=data_dir) == src
    assert load_text("tiny", source=src, data_dir=data_dir) == TEXT
    assert (src.stat().st_mtime_ns, src.read_bytes()) == before
    assert not data_dir.exists(), "a local copy must not be copied or downloaded"


def test_environment_variable_names_the_local_copy(fake_dataset, monkeypatch, tmp_path):
    monkeypatch.setenv("NANOGPT_TINY", str(fake_dataset))
    assert dataset_path("tiny", data_dir=tmp_path / "data") == fake_dataset


def test_local_copy_with_wrong_checksum_is_refused(fake_dataset, monkeypatch, tmp_path):
    fake_dataset.write_bytes(TEXT.encode() + b"tampered")
    with pytest.raises(DownloadError, match=r"argument source\) has sha256 .* not the expected .*not used"):
        dataset_path("tiny", source=fake_dataset, data_dir=tmp_path)
    monkeypatch.setenv("NANOGPT_TINY", str(fake_dataset))
    with pytest.raises(DownloadError, match="environment variable NANOGPT_TINY"):
        dataset_path("tiny", data_dir=tmp_path)


def test_missing_local_copy_and_unknown_dataset(fake_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt .* is not a file"):
        dataset_path("tiny", source=tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="unknown dataset 'shakespear'.*tinyshakespeare"):
        dataset_path("shakespear")


def test_without_local_copy_it_downloads_into_data_dir(fake_dataset, tmp_path):
    with pytest.raises(DownloadError, match=str(tmp_path / "data" / "tiny" / "tiny.txt")):
        dataset_path("tiny", data_dir=tmp_path / "data")


@needs_shakespeare
def test_the_real_local_copy():
    text = load_text("tinyshakespeare")
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")


# --- prepared splits --------------------------------------------------------------------------------


def test_prepare_writes_splits_and_metadata(tmp_path):
    meta = prepare_char_dataset(TEXT, tmp_path / "out")
    n = len(TEXT)
    n_train = int(n * 0.9)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "train.bin", "val.bin"]
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk == meta
    tok = CharTokenizer.from_text(TEXT)
    assert meta == {
        "format": "nanogpt-tokens",
        "version": 1,
        "dtype": "uint16",
        "vocab_size": tok.vocab_size,
        "tokenizer": {"type": "char", "chars": tok.chars, "unknown": None},
        "train_tokens": n_train,
        "val_tokens": n - n_train,
        "source_sha256": hashlib.sha256(TEXT.encode()).hexdigest(),
    }
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16)
    assert train.tolist() == tok.encode(TEXT[:n_train]) and val.tolist() == tok.encode(TEXT[n_train:])


def test_prepare_split_fraction_and_bad_fractions(tmp_path):
    meta = prepare_char_dataset("abcdefghij" * 10, tmp_path, val_fraction=0.25)
    assert (meta["train_tokens"], meta["val_tokens"]) == (75, 25)
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            prepare_char_dataset("abcdefghij", tmp_path / "bad", val_fraction=bad)
    with pytest.raises(ValueError, match="cannot be split"):
        prepare_char_dataset("a", tmp_path / "short")


def test_large_vocabularies_use_uint32(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c < 0xE000]  # no lone surrogates
    text = "".join(chars)
    meta = prepare_char_dataset(text, tmp_path)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == len(chars) >= 2**16
    prepared = load_prepared(tmp_path)
    assert prepared.train.dtype == np.uint32 and int(prepared.val.max()) >= 2**16 - 1000
    assert prepared.tokenizer.decode(prepared.train[:10]) == text[:10]


def test_load_prepared_round_trip(tmp_path):
    prepare_char_dataset(TEXT, tmp_path)
    p = load_prepared(tmp_path)
    assert isinstance(p.train, np.memmap) and p.train.dtype == np.uint16 and p.val.dtype == np.uint16
    assert p.tokenizer == CharTokenizer.from_text(TEXT) and p.vocab_size == p.tokenizer.vocab_size
    assert p.tokenizer.decode(p.train) + p.tokenizer.decode(p.val) == TEXT
    assert p.meta["train_tokens"] == len(p.train)


def test_load_prepared_missing_folder_or_file_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*nanogpt prepare shakespeare_char --out"):
        load_prepared(tmp_path / "nothing")
    prepare_char_dataset(TEXT, tmp_path)
    (tmp_path / "val.bin").unlink()
    with pytest.raises(FileNotFoundError, match="val.bin is missing.*nanogpt prepare"):
        load_prepared(tmp_path)


def test_load_prepared_detects_truncation_and_foreign_metadata(tmp_path):
    prepare_char_dataset(TEXT, tmp_path)
    train = tmp_path / "train.bin"
    train.write_bytes(train.read_bytes()[:-3])
    with pytest.raises(ValueError, match="train.bin holds .* truncated"):
        load_prepared(tmp_path)
    prepare_char_dataset(TEXT, tmp_path)
    meta_path = tmp_path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(ValueError, match="format version 2"):
        load_prepared(tmp_path)
    meta_path.write_text(json.dumps({"vocab_size": 3}))
    with pytest.raises(ValueError, match="does not describe a 'nanogpt-tokens' dataset"):
        load_prepared(tmp_path)
    meta_path.write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_prepared(tmp_path)


def test_tokenizer_from_meta():
    tok = CharTokenizer("xyz", unknown="z")
    meta = {"tokenizer": tok.to_dict()}
    assert tokenizer_from_meta(meta) == tok
    assert tokenizer_from_meta(tok.to_dict()) == tok
    with pytest.raises(ValueError, match="unknown tokenizer type 'sentencepiece'"):
        tokenizer_from_meta({"tokenizer": {"type": "sentencepiece"}})


def test_tokenizer_from_meta_builds_a_bpe_tokenizer():
    from nanogpt_lib.bpe import BPETokenizer

    bpe = BPETokenizer.train(TEXT * 3, 270)
    back = tokenizer_from_meta({"tokenizer": json.loads(json.dumps(bpe.to_dict()))})
    assert isinstance(back, BPETokenizer) and back.merges == bpe.merges and back.encode(TEXT) == bpe.encode(TEXT)
    assert back.decode(back.encode("Speak, speak.")) == "Speak, speak."


# --- batches ------------------------------------------------------------------------------------------


def test_get_batch_shapes_and_shift():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = get_batch(tokens, batch_size=6, block_size=10, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (6, 10) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1), "y is x shifted by one token"
    assert torch.equal(x - x[:, :1], torch.arange(10).expand(6, 10)), "each row is a contiguous window"
    assert int(x.min()) >= 0 and int(y.max()) <= 99


def test_get_batch_reaches_both_ends_and_no_further():
    tokens = np.arange(12, dtype=np.uint16)
    x, y = get_batch(tokens, batch_size=400, block_size=10, generator=torch.Generator().manual_seed(1))
    assert set(x[:, 0].tolist()) == {0, 1}
    x, y = get_batch(tokens[:11], batch_size=5, block_size=10)
    assert torch.equal(x, torch.arange(10).expand(5, 10)) and torch.equal(y, torch.arange(1, 11).expand(5, 10))


def test_get_batch_is_deterministic_with_a_generator():
    tokens = np.random.default_rng(0).integers(0, 65, size=5000).astype(np.uint16)
    a = get_batch(tokens, 8, 16, generator=torch.Generator().manual_seed(42))
    b = get_batch(tokens, 8, 16, generator=torch.Generator().manual_seed(42))
    c = get_batch(tokens, 8, 16, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    starts = torch.randint(5000 - 16, (8,), generator=torch.Generator().manual_seed(42))
    expected = torch.stack([torch.from_numpy(tokens[s : s + 16].astype(np.int64)) for s in starts.tolist()])
    assert torch.equal(a[0], expected), "window starts are torch.randint draws from the generator"


def test_get_batch_on_a_memmap(tmp_path):
    prepare_char_dataset(TEXT, tmp_path)
    p = load_prepared(tmp_path)
    x, y = get_batch(p.val, 3, 5)
    assert p.tokenizer.decode(x[0]) in TEXT and p.tokenizer.decode(y[0])[:-1] == p.tokenizer.decode(x[0])[1:]


def test_get_batch_too_short_text_is_a_clear_error():
    with pytest.raises(ValueError, match=r"has 8 tokens.*block_size \+ 1 = 9"):
        get_batch(np.arange(8, dtype=np.uint16), batch_size=2, block_size=8)
    with pytest.raises(ValueError, match="at least 1"):
        get_batch(np.arange(80, dtype=np.uint16), batch_size=0, block_size=8)


# --- `nanogpt prepare` ----------------------------------------------------------------------------------


@needs_shakespeare
def test_cli_prepare_end_to_end(tmp_path):
    out = tmp_path / "prepared"
    command = ["prepare", "shakespeare_char", "--source", SHAKESPEARE, "--out", str(out)]
    r = subprocess.run(
        [sys.executable, "-m", "nanogpt_lib.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "NANOGPT_TINYSHAKESPEARE": ""},
    )
    assert r.returncode == 0, r.stderr
    assert "train.bin (1,003,854 tokens)" in r.stdout and "val.bin (111,540 tokens)" in r.stdout
    p = load_prepared(out)
    text = Path(SHAKESPEARE).read_text(encoding="utf-8")
    assert p.vocab_size == 65 and p.meta["source_sha256"] == DATASETS["tinyshakespeare"].sha256
    assert p.tokenizer.decode(p.train[:14]) == "First Citizen:" and p.tokenizer.decode(p.val[-20:]) == text[-20:]
    assert not (tmp_path / "data").exists(), "with --source nothing is downloaded"


def test_cli_prepare_default_out_dir_uses_the_environment_copy(fake_dataset, monkeypatch, tmp_path):
    monkeypatch.setitem(data.PREPARED_DATASETS, "shakespeare_char", "tiny")
    monkeypatch.setenv("NANOGPT_TINY", str(fake_dataset))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare", "shakespeare_char"]) == 0
    assert load_prepared(tmp_path / "data" / "shakespeare_char").tokenizer == CharTokenizer.from_text(TEXT)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["shakespeare_char"]


def test_cli_prepare_with_a_bad_source_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "input.txt"
    bad.write_text("First Citizen:\nnot quite the play\n")
    out = tmp_path / "prepared"
    assert cli.main(["prepare", "shakespeare_char", "--source", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "nanogpt prepare: error:" in err and "has sha256" in err and DATASETS["tinyshakespeare"].sha256 in err
    assert not out.exists() and bad.read_text() == "First Citizen:\nnot quite the play\n"
    assert cli.main(["prepare", "shakespeare_char", "--source", str(tmp_path / "missing.txt"), "--out", str(out)]) == 1
    assert "is not a file" in capsys.readouterr().err and not out.exists()


# --- the bigram baseline --------------------------------------------------------------------------------


def test_bigram_forward_is_a_table_lookup_with_cross_entropy():
    torch.manual_seed(0)
    model = BigramLanguageModel(11)
    idx = torch.randint(11, (3, 7))
    targets = torch.randint(11, (3, 7))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 7, 11) and model(idx)[1] is None
    torch.testing.assert_close(logits, model.logits_table.weight[idx])
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)))
    assert abs(loss.item() - math.log(11)) < 0.05, "a fresh bigram predicts nearly uniformly"


def test_bigram_learns_a_deterministic_sequence_and_generates_it():
    tok = CharTokenizer("abcd")
    ids = np.array(tok.encode("abcd" * 200), dtype=np.uint16)
    torch.manual_seed(0)
    model = BigramLanguageModel(tok.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        _, loss = model(*get_batch(ids, 8, 16, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    out = model.generate(torch.tensor([[tok.stoi["b"]]]), 9, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 10) and tok.decode(out[0]) == "bcdabcdabc"
