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
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt_lib import cli, data, datasets
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
    with pytest.raises(DownloadError, match=str(tmp_path / "data" / "tiny" / "tiny.txt")) as info:
        dataset_path("tiny", data_dir=tmp_path / "data")
    assert "--source FILE" in str(info.value) and "NANOGPT_TINY " in str(info.value), "both ways out are named"


def test_failed_download_of_shakespeare_names_both_ways_out(monkeypatch, tmp_path):
    monkeypatch.delenv("NANOGPT_TINYSHAKESPEARE", raising=False)
    monkeypatch.setitem(
        DATASETS, "tinyshakespeare", data.Dataset("tinyshakespeare", "http://127.0.0.1:9/x", "input.txt", "0" * 64, 1)
    )
    with pytest.raises(DownloadError, match="could not download") as info:
        dataset_path("tinyshakespeare", data_dir=tmp_path)
    assert "--source FILE" in str(info.value) and "NANOGPT_TINYSHAKESPEARE" in str(info.value)


def test_data_home_does_not_depend_on_the_working_folder(monkeypatch, tmp_path):
    import nanogpt_lib

    monkeypatch.delenv("NANOGPT_DATA_DIR", raising=False)
    checkout = Path(nanogpt_lib.__file__).resolve().parent.parent / "data"
    assert (checkout / "README.md").is_file()
    monkeypatch.chdir(tmp_path)
    assert data.data_home() == checkout
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path / "mine"))
    assert data.data_home() == tmp_path / "mine"


def test_data_home_outside_a_checkout_is_a_user_cache(monkeypatch, tmp_path):
    import nanogpt_lib

    fake_pkg = tmp_path / "site-packages" / "nanogpt_lib"
    fake_pkg.mkdir(parents=True)
    monkeypatch.setattr(nanogpt_lib, "__file__", str(fake_pkg / "__init__.py"))
    monkeypatch.delenv("NANOGPT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.data_home() == tmp_path / "cache" / "nanogpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.data_home() == Path.home() / ".cache" / "nanogpt"


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
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path / "home"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli.main(["prepare", "shakespeare_char", "--quiet"]) == 0
    assert load_prepared(tmp_path / "home" / "shakespeare_char").tokenizer == CharTokenizer.from_text(TEXT)
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["shakespeare_char"]
    assert list((tmp_path / "elsewhere").iterdir()) == [], "nothing lands in the working folder"
    assert load_prepared("shakespeare_char").meta == load_prepared(tmp_path / "home" / "shakespeare_char").meta
    from nanogpt_lib.train import TrainConfig

    assert load_prepared(TrainConfig().data_dir).vocab_size > 0, "the trainer's default finds what prepare wrote"


def test_cli_prepare_with_a_bad_source_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "input.txt"
    bad.write_text("First Citizen:\nnot quite the play\n")
    out = tmp_path / "prepared"
    assert cli.main(["prepare", "shakespeare_char", "--source", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "nanogpt prepare: error:" in err and "has sha256" in err and DATASETS["tinyshakespeare"].sha256 in err
    assert f"nanogpt prepare text --source {bad}" in err, "the checksum error says how to use your own text"
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


# --- your own text: `nanogpt prepare text` -------------------------------------------------------------


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / ".git").mkdir()
    (src / "b" / "z.py").write_text("def f():\n    return 1\n" * 30)
    (src / "b" / "a.md").write_text("# Notes\n" * 30)  # no newline problem: ends with one
    (src / "c.txt").write_text("the end, without a newline")
    (src / "image.bin").write_bytes(b"\x00\x01\x02" * 100)
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (src / "empty.txt").write_text("")
    return src


def test_prepare_text_of_a_folder_in_sorted_order_skipping_binaries(tmp_path):
    src = _folder(tmp_path)
    got = data.prepare_text(src, tmp_path / "out", block_size=8)
    expected = "# Notes\n" * 30 + "def f():\n    return 1\n" * 30 + "the end, without a newline"
    assert (got["files"], got["binary_skipped"]) == (4, 1)  # b/a.md, b/z.py, c.txt, empty.txt; image.bin skipped
    p = load_prepared(tmp_path / "out")
    assert p.tokenizer.decode(p.train) + p.tokenizer.decode(p.val) == expected
    assert p.tokenizer == CharTokenizer.from_text(expected)
    assert p.meta["source_sha256"] == hashlib.sha256(expected.encode()).hexdigest()


def test_files_are_joined_with_a_newline_where_one_is_missing(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "1.txt").write_text("no newline at the end")
    (tmp_path / "src" / "2.txt").write_text("second file\n" * 10)
    data.prepare_text(tmp_path / "src", tmp_path / "out", block_size=4)
    p = load_prepared(tmp_path / "out")
    assert (p.tokenizer.decode(p.train) + p.tokenizer.decode(p.val)).startswith("no newline at the end\nsecond file\n")


def test_prepare_text_of_one_file_matches_prepare_char_dataset(tmp_path):
    text = "naïve café — 東京 🙂\n" * 500
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    a = data.prepare_text(tmp_path / "t.txt", tmp_path / "a", val_fraction=0.2)
    b = prepare_char_dataset(text, tmp_path / "b", val_fraction=0.2)
    assert {k: a[k] for k in b} == b
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_non_utf8_text_names_file_and_byte_offset(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes(b"x" * 300_000 + "Où est la reine ?".encode("latin-1"))  # the error is past the first read
    with pytest.raises(data.TextSourceError) as info:
        data.prepare_text(bad, tmp_path / "out")
    msg = str(info.value)
    assert str(bad) in msg and "byte offset 300001" in msg and "0xf9" in msg and "iconv -f latin1 -t utf-8" in msg
    assert not (tmp_path / "out").exists()
    cut = tmp_path / "cut.txt"
    cut.write_bytes("abc é".encode()[:-1])  # a character cut off at the end of the file
    with pytest.raises(data.TextSourceError, match="byte offset 4"):
        data.prepare_text(cut, tmp_path / "out")


def test_binary_empty_and_too_short_inputs_are_clear_errors(tmp_path):
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(data.TextSourceError, match="img.png is a binary file"):
        data.prepare_text(tmp_path / "img.png", tmp_path / "out")
    (tmp_path / "utf16.txt").write_text("To be, or not to be", encoding="utf-16")
    with pytest.raises(data.TextSourceError, match="utf16.txt is a binary file.*iconv -f utf-16 -t utf-8"):
        data.prepare_text(tmp_path / "utf16.txt", tmp_path / "out")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(data.TextSourceError, match="empty"):
        data.prepare_text(tmp_path / "empty.txt", tmp_path / "out")
    (tmp_path / "short.txt").write_text("a short text, shorter than a training window needs " * 5)
    with pytest.raises(data.TextSourceError, match=r"too short.*block_size \+ 1 = 65.*--block-size"):
        data.prepare_text(tmp_path / "short.txt", tmp_path / "out", block_size=64)
    (tmp_path / "bins").mkdir()
    (tmp_path / "bins" / "a.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(data.TextSourceError, match=r"no text files \(1 binary file"):
        data.prepare_text(tmp_path / "bins", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.prepare_text(tmp_path / "nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_prepare_text_end_to_end_with_progress(tmp_path, capsys):
    src = _folder(tmp_path)
    out = tmp_path / "mine"
    assert cli.main(["prepare", "text", "--source", str(src), "--out", str(out), "--block-size", "16"]) == 0
    captured = capsys.readouterr()
    assert "read 4 file(s)\nskipped 1 binary file(s): image.bin\n" in captured.out and "train.bin (" in captured.out
    assert "left out 1 hidden file(s) or folder(s), whose names start with '.': .git" in captured.out
    assert "encoding" in captured.err and "reading" in captured.err, "a progress bar on stderr"
    assert load_prepared(out).vocab_size == len(set("# Notes\ndef f():\n    return 1\nthe end, without a newline"))
    assert cli.main(["prepare", "text", "--out", str(out)]) == 1
    assert "needs --source" in capsys.readouterr().err
    assert cli.main(["prepare", "text", "--source", str(src), "--out", str(out), "--tokenizer", "bpe:10"]) == 1
    assert "unknown tokenizer 'bpe:10'" in capsys.readouterr().err


# --- BPE tokens: `--tokenizer gpt2` and `--tokenizer bpe:N` -------------------------------------------------


def _pieces(text: str, size: int):
    return [text[i : i + size] for i in range(0, len(text), size)]


def _chunks(pattern: str, pieces) -> list[str]:
    import regex

    from nanogpt_lib.bpe import split_pattern

    return [c for piece in pieces for c in regex.findall(split_pattern(pattern), piece)]


@needs_shakespeare
@pytest.mark.parametrize("pattern", ["gpt2", "cl100k"])
def test_safe_pieces_split_exactly_like_the_whole_text(pattern):
    text = load_text("tinyshakespeare")[:200_000]
    pieces = list(data.safe_pieces(_pieces(text, 997)))
    assert "".join(pieces) == text and len(pieces) > 100
    assert _chunks(pattern, pieces) == _chunks(pattern, [text])


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k"])
def test_safe_pieces_on_tricky_line_ends(pattern):
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    text = "word \nNext\r\nLine\n\nA 12\n3x\n'tis\n  Indented\nend.\nÉcole\n\t\nTab\n" * 50
    for size in (1, 2, 3, 7, 64):
        pieces = list(data.safe_pieces(_pieces(text, size)))
        assert "".join(pieces) == text and len(pieces) > 1
        assert _chunks(pattern, pieces) == _chunks(pattern, [text]), size
        assert [t for piece in pieces for t in enc.encode_ordinary(piece)] == enc.encode_ordinary(text), size


@needs_shakespeare
def test_cli_prepare_shakespeare_gpt2(tmp_path):
    import tiktoken

    out = tmp_path / "gpt2"
    argv = ["prepare", "shakespeare", "--tokenizer", "gpt2", "--source", SHAKESPEARE, "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    p = load_prepared(out)
    text = Path(SHAKESPEARE).read_text(encoding="utf-8")
    ids = tiktoken.get_encoding("gpt2").encode_ordinary(text)
    assert p.meta["tokenizer"] == {"type": "tiktoken", "name": "gpt2"} and p.vocab_size == 50257
    assert p.train.dtype == np.uint16 and np.concatenate([p.train, p.val]).tolist() == ids
    assert p.tokenizer.decode(p.val[-30:]) == tiktoken.get_encoding("gpt2").decode(ids[-30:])
    assert tokenizer_from_meta(json.loads((out / "meta.json").read_text())).vocab_size == 50257


@needs_shakespeare
def test_prepare_shakespeare_bpe_trains_on_the_text(tmp_path, monkeypatch):
    from nanogpt_lib.bpe import BPETokenizer

    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path))
    got = data.prepare_dataset("shakespeare", tokenizer="bpe:300")
    assert got["out_dir"] == str(tmp_path / "shakespeare_bpe300")
    p = load_prepared(tmp_path / "shakespeare_bpe300")
    text = Path(SHAKESPEARE).read_text(encoding="utf-8")
    reference = BPETokenizer.train(text, 300)
    assert isinstance(p.tokenizer, BPETokenizer) and p.tokenizer.merges == reference.merges
    assert np.concatenate([p.train, p.val]).tolist() == reference.encode_ordinary(text)
    saved = json.loads((tmp_path / "shakespeare_bpe300" / "meta.json").read_text())["tokenizer"]
    assert saved == reference.to_dict(), "meta.json holds the tokenizer in BPETokenizer's one on-disk format"
    with pytest.raises(ValueError, match="tokenized by characters"):
        data.prepare_dataset("shakespeare_char", tokenizer="gpt2")


# --- bounded memory, full disks -------------------------------------------------------------------------------


def test_preparing_a_large_text_streams_with_bounded_memory(tmp_path):
    import tracemalloc

    line = "".join(chr(c) for c in range(0x20, 0x7F)) + "äöü€\n"
    path = tmp_path / "big.txt"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(200_000):  # about 20 MB
            f.write(f"{i:07d} {line}")
    size = path.stat().st_size
    assert size > 19_000_000
    tracemalloc.start()
    try:
        meta = data.prepare_text(path, tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert meta["train_tokens"] + meta["val_tokens"] == 200_000 * len(f"{0:07d} {line}")
    assert peak < size / 4, f"peak {peak:,} bytes while preparing a {size:,}-byte text"
    p = load_prepared(tmp_path / "out")
    assert p.tokenizer.decode(p.train[:13]) == '0000000  !"#$' and p.tokenizer.decode(p.val[-30:]) == f"{line}"[-30:]
    assert p.tokenizer.decode(p.val[-(len(line) + 8) :]) == f"0199999 {line}"


@pytest.mark.parametrize("failing", ["train.bin.tmp", "val.bin.tmp", "meta.json.tmp"])
def test_a_full_disk_is_one_clear_line_and_leaves_no_partial_files(tmp_path, monkeypatch, capsys, failing):
    import errno

    src = tmp_path / "t.txt"
    src.write_text(TEXT)
    out = tmp_path / "out"
    real_create_new = datasets.create_new

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_create_new(path, mode="wb", *args, **kwargs):
        f = real_create_new(path, mode, *args, **kwargs)
        return Full(f) if Path(path).name == failing else f

    monkeypatch.setattr(datasets, "create_new", fake_create_new)  # every file of a dataset is made by create_new
    assert cli.main(["prepare", "text", "--source", str(src), "--out", str(out), "--block-size", "8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nanogpt prepare: error: no space left on the device while writing")
    assert "partial files were removed" in err[-1] and "--out" in err[-1]
    assert not out.exists(), "the folder it created is removed with the partial files"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli.main(["prepare", "text", "--source", str(src), "--out", str(out), "--quiet"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"], "only what it wrote is removed"


# --- cross-checks of prepared data ----------------------------------------------------------------------------


def _edit_meta(folder: Path, **changes):
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"vocab_size": None}, "field 'vocab_size' is None, not a count"),
        ({"train_tokens": "12"}, "field 'train_tokens' is '12', not a count"),
        ({"val_tokens": -1}, "field 'val_tokens' is -1"),
        ({"tokenizer": "char"}, "field 'tokenizer' is 'char', not a dict"),
        ({"dtype": "float32"}, "field 'dtype' names 'float32'"),
        ({"vocab_size": 70_000}, "field 'vocab_size' is 70000, which uint16"),
        ({"vocab_size": 3}, "field 'vocab_size' is 3, but the tokenizer in field 'tokenizer' has"),
        ({"tokenizer": {"type": "tiktoken", "name": "p50k"}}, "field 'tokenizer': unknown tiktoken encoding 'p50k'"),
        ({"train_tokens": 5}, "train.bin holds .* field 'train_tokens' promises 5"),
    ],
)
def test_load_prepared_names_the_file_and_the_field(tmp_path, changes, message):
    prepare_char_dataset(TEXT, tmp_path)
    _edit_meta(tmp_path, **changes)
    with pytest.raises(ValueError, match=message) as info:
        load_prepared(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_missing_required_field_is_named(tmp_path):
    prepare_char_dataset(TEXT, tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["val_tokens"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="meta.json: field 'val_tokens' is None"):
        load_prepared(tmp_path)


def test_token_ids_beyond_the_vocabulary_are_found(tmp_path):
    prepare_char_dataset(TEXT, tmp_path)
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    val[7] = 999
    val.tofile(tmp_path / "val.bin")
    with pytest.raises(ValueError, match=r"val.bin holds the token id 999 at position 7.*field 'vocab_size'"):
        load_prepared(tmp_path)


def test_a_bpe_pattern_from_meta_json_is_never_compiled_unchecked(tmp_path, monkeypatch):
    from nanogpt_lib import bpe

    tok = bpe.BPETokenizer.train(TEXT, 260)
    ids = np.array(tok.encode(TEXT), dtype=np.uint16)
    ids[:100].tofile(tmp_path / "train.bin")
    ids[100:].tofile(tmp_path / "val.bin")
    spec = {**tok.to_dict(), "pattern": "(a|aa)+$"}
    meta = {
        "format": "nanogpt-tokens",
        "version": 1,
        "dtype": "uint16",
        "vocab_size": 260,
        "tokenizer": spec,
        "train_tokens": 100,
        "val_tokens": len(ids) - 100,
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    compiled = []
    monkeypatch.setattr(bpe.regex, "compile", lambda *a, **k: compiled.append(a) or None)
    with pytest.raises(ValueError, match="meta.json: field 'tokenizer': field 'pattern'.*not one of the known"):
        load_prepared(tmp_path)
    assert compiled == []


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe:300"])
def test_bpe_datasets_train_and_sample_with_no_further_flags(tmp_path, capsys, tokenizer):
    from nanogpt_lib.bpe import BPETokenizer
    from nanogpt_lib.train import load_checkpoint

    (tmp_path / "t.txt").write_text(TEXT * 5)
    data_dir, run = tmp_path / "prepared", tmp_path / "run"
    argv = ["prepare", "text", "--source", str(tmp_path / "t.txt"), "--out", str(data_dir), "--block-size", "8"]
    assert cli.main([*argv, "--tokenizer", tokenizer, "--quiet"]) == 0
    small = ["--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--block-size", "8", "--batch-size", "2"]
    steps = ["--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1", "--device", "cpu"]
    assert cli.main(["train", "--data", str(data_dir), "--out", str(run), *small, *steps]) == 0
    model, tok, _ = load_checkpoint(run)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == load_prepared(data_dir).vocab_size
    assert model.config.vocab_size == tok.vocab_size
    capsys.readouterr()
    assert cli.main(["sample", "--ckpt", str(run), "--prompt", "Speak,", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("Speak,")


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="ab Z\n\r\t'.1é😀\u00a0", min_size=0, max_size=300),
    st.integers(min_value=1, max_value=40),
    st.sampled_from(["gpt2", "cl100k"]),
)
def test_safe_pieces_never_change_the_chunks(text, size, pattern):
    pieces = list(data.safe_pieces(_pieces(text, size)))
    assert "".join(pieces) == text
    assert _chunks(pattern, pieces) == _chunks(pattern, [text])


def test_cli_val_fraction_and_block_size(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("abcdefghij" * 10)
    out = tmp_path / "out"
    argv = ["prepare", "text", "--source", str(tmp_path / "t.txt"), "--out", str(out), "--quiet"]
    assert cli.main([*argv, "--val-fraction", "0.25", "--block-size", "20"]) == 0
    assert (load_prepared(out).meta["train_tokens"], load_prepared(out).meta["val_tokens"]) == (75, 25)
    assert cli.main([*argv, "--val-fraction", "0.25", "--block-size", "30"]) == 1
    assert "too short" in capsys.readouterr().err
    assert load_prepared(out).meta["val_tokens"] == 25, "a refused preparation leaves the previous dataset intact"
