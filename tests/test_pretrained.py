"""Loading GPT-2 from Hugging Face's format and writing it back (chapter 08), against `transformers` itself, offline."""

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")  # the `hf` extra; `dev` installs it
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from nanogpt_lib import pretrained  # noqa: E402
from nanogpt_lib.generate import generate  # noqa: E402
from nanogpt_lib.model import GPT, GPTConfig  # noqa: E402
from nanogpt_lib.pretrained import (  # noqa: E402
    PretrainedError,
    check_init_from,
    config_from_hf,
    export_hf,
    init_model,
    load_hf_gpt2,
)

VOCAB = 100


def hf_model(seed=0, **overrides) -> GPT2LMHeadModel:
    """A small random GPT-2 made by transformers, with non-trivial biases and LayerNorm gains, and MLP inputs
    of order one (where exact and tanh GELU differ)."""
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0)
    cfg |= overrides
    model = GPT2LMHeadModel(GPT2Config(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            if name.endswith("mlp.c_fc.weight"):
                p.mul_(30)
    return model


@pytest.fixture
def hf_folder(tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    return tmp_path / "hf", model


def ids(batch=2, length=12, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_same_model(ours: GPT, theirs: GPT2LMHeadModel) -> None:
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x, all_logits=True)[0], theirs(x).logits, atol=1e-5, rtol=1e-5)
    prompt = ids(1, 5, seed=2)
    want = theirs.generate(prompt, max_new_tokens=15, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 15, temperature=0), want)


def test_loads_safetensors_with_the_references_logits_and_greedy_text(hf_folder):
    folder, theirs = hf_folder
    ours = load_hf_gpt2(str(folder))
    assert ours.config == GPTConfig(VOCAB, 32, 2, 2, 64, gelu_approx="tanh")
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert_same_model(ours, theirs)


def test_the_tanh_gelu_matters_for_parity(hf_folder):
    """With the exact GELU the logits differ by more than the tolerance: the option is what gives parity."""
    folder, theirs = hf_folder
    ours = load_hf_gpt2(folder)
    for block in ours.transformer.h:
        block.mlp.gelu.approximate = "none"
    x = ids()
    with torch.no_grad():
        assert (ours(x, all_logits=True)[0] - theirs(x).logits).abs().max() > 1e-5


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path, monkeypatch):
    theirs = hf_model(seed=3)
    theirs.save_pretrained(tmp_path, safe_serialization=False)
    if not (tmp_path / "pytorch_model.bin").exists():  # newer transformers always write safetensors
        torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")
        (tmp_path / "model.safetensors").unlink(missing_ok=True)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    assert_same_model(load_hf_gpt2(tmp_path), theirs)
    assert calls and all(k.get("weights_only") is True for k in calls)


def test_a_pickle_with_code_is_refused(tmp_path):
    hf_model().config.save_pretrained(tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("this would have run",))

    torch.save({"transformer.wte.weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(PretrainedError, match="tensors only"):
        load_hf_gpt2(tmp_path)


def test_gpt2model_names_and_stored_masks_are_accepted(tmp_path, hf_folder):
    """Files saved from the bare GPT2Model have no `transformer.` prefix and may carry the causal mask."""
    folder, theirs = hf_folder
    from safetensors.torch import load_file, save_file

    tensors = {k.removeprefix("transformer."): v for k, v in load_file(folder / "model.safetensors").items()}
    tensors["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    (tmp_path / "bare").mkdir()
    save_file(tensors, tmp_path / "bare" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "bare" / "config.json").write_text((folder / "config.json").read_text())
    assert_same_model(load_hf_gpt2(tmp_path / "bare"), theirs)


def test_shape_mismatches_and_missing_tensors_are_named(tmp_path, hf_folder):
    folder, _ = hf_folder
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.h.1.mlp.c_fc.weight"] = tensors["transformer.h.1.mlp.c_fc.weight"][:, :7].contiguous()
    del tensors["transformer.ln_f.bias"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PretrainedError) as e:
        load_hf_gpt2(folder)
    message = str(e.value)
    assert "transformer.h.1.mlp.c_fc.weight (7, 64) (ours (256, 64))" in message
    assert "missing: transformer.ln_f.bias" in message


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(activation_function="relu"), "activation_function 'relu'"),
        (dict(n_inner=100), "n_inner 100"),
        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
        (dict(scale_attn_weights=False), "scale_attn_weights=False"),
        (dict(tie_word_embeddings=False), "tie_word_embeddings=False"),
        (dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon=1e-06"),
        (dict(model_type="llama"), "model_type is 'llama'"),
    ],
)
def test_configurations_our_model_cannot_represent_are_refused(hf_folder, change, named):
    folder, _ = hf_folder
    config = json.loads((folder / "config.json").read_text()) | change
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match="cannot represent") as e:
        load_hf_gpt2(folder)
    assert named in str(e.value)


def test_exact_gelu_config_loads_as_exact():
    c = config_from_hf(hf_model(activation_function="gelu").config.to_dict())
    assert c.gelu_approx == "none"


@pytest.mark.parametrize("bias, gelu", [(True, "tanh"), (False, "none"), (True, "none")])
def test_export_is_read_by_transformers_with_the_same_logits(tmp_path, bias, gelu):
    torch.manual_seed(4)
    ours = GPT(GPTConfig(VOCAB, 32, 2, 2, 64, bias=bias, gelu_approx=gelu)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))  # gains and biases away from 1 and 0
    export_hf(ours, tmp_path / "out")
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert_same_model(ours, theirs)
    assert_same_model(load_hf_gpt2(tmp_path / "out"), theirs)  # and back again


def test_round_trip_keeps_every_tensor(hf_folder, tmp_path):
    folder, theirs = hf_folder
    export_hf(load_hf_gpt2(folder), tmp_path / "again")
    from safetensors.torch import load_file

    before, after = load_file(folder / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert set(after) == {k for k in before if not k.endswith((".attn.bias", ".attn.masked_bias"))} - {"lm_head.weight"}
    for k in after:
        assert torch.equal(before[k], after[k]), k


def test_no_network_says_what_to_do(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("could not connect to huggingface.co")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.delenv(pretrained.GPT2_DIR_ENV, raising=False)
    with pytest.raises(PretrainedError, match=r"no network.*[Dd]ownload the folder elsewhere and pass its path"):
        load_hf_gpt2("gpt2-medium")
    with pytest.raises(PretrainedError, match="neither a folder nor one of gpt2"):
        load_hf_gpt2("gpt3")


def test_a_name_is_found_in_the_local_folder_first(hf_folder, monkeypatch):
    folder, theirs = hf_folder
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("must not download"))
    monkeypatch.setenv(pretrained.GPT2_DIR_ENV, str(folder))
    assert_same_model(load_hf_gpt2("gpt2"), theirs)


def test_init_model_for_finetuning(hf_folder):
    folder, theirs = hf_folder
    run = GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=1, n_embd=8, dropout=0.1)
    model = init_model(str(folder), run)
    assert model.training and model.config.block_size == 16 and model.config.n_embd == 64
    assert model.transformer.wpe.weight.shape == (16, 64) and model.config.dropout == 0.1
    x = ids(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x, all_logits=True)[0], theirs(x).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="vocabulary of 100 tokens but the dataset has 65"):
        init_model(str(folder), GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=1, n_embd=8))
    assert init_model("scratch", run).config == run
    check_init_from(str(folder))
    check_init_from("gpt2-xl")
    with pytest.raises(ValueError, match="--init-from must be"):
        check_init_from("gpt-2")


# --- the command line: finetune, resume, export, sample -----------------------------------------


def test_command_line_finetunes_resumes_exports_and_samples(hf_folder, tmp_path, capsys):
    import random

    from nanogpt_lib.cli import main
    from nanogpt_lib.data import prepare_char_dataset
    from nanogpt_lib.train import load_checkpoint

    folder, theirs = hf_folder
    alphabet = [chr(c) for c in range(0x100, 0x100 + VOCAB)]  # a dataset with exactly the model's vocabulary size
    rng = random.Random(0)
    prepare_char_dataset("".join(alphabet) + "".join(rng.choice(alphabet) for _ in range(3000)), tmp_path / "data")
    run = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--block-size", "16", "--batch-size", "2",
           "--learning-rate", "1e-9", "--min-lr", "1e-10", "--eval-iters", "1", "--eval-interval", "2",
           "--warmup-iters", "0", "--device", "cpu", "--precision", "fp32"]  # fmt: skip
    assert main(["train", "--init-from", str(folder), *run, "--max-iters", "2"]) == 0
    model, _, info = load_checkpoint(tmp_path / "run")
    assert info["model_config"]["n_embd"] == 64 and info["model_config"]["gelu_approx"] == "tanh"
    x = ids(2, 16)
    with torch.no_grad():  # a learning rate of 1e-9 leaves GPT-2's weights as they were
        torch.testing.assert_close(model(x, all_logits=True)[0], theirs(x).logits, atol=1e-4, rtol=1e-4)
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--max-iters", "4"]) == 0
    assert load_checkpoint(tmp_path / "run" / "last")[2]["step"] == 4
    capsys.readouterr()
    assert main(["train", "--init-from", str(folder), *run, "--n-embd", "32", "--overwrite"]) == 1  # GPT-2's sizes
    assert "--n-embd cannot change when finetuning" in capsys.readouterr().err

    assert main(["export", "--format", "hf", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "hf_out")]) == 0
    model = load_checkpoint(tmp_path / "run")[0]
    exported = GPT2LMHeadModel.from_pretrained(tmp_path / "hf_out").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x).logits, model(x, all_logits=True)[0], atol=1e-5, rtol=1e-5)
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(tmp_path / "hf_out"), "--prompt", alphabet[5], "--max-new-tokens", "8",
                 "--seed", "1", "--temperature", "0"]) == 0  # fmt: skip
    printed = capsys.readouterr().out.strip()
    greedy = generate(model, torch.tensor([[5]]), 8, temperature=0)[0].tolist()
    assert printed == "".join(alphabet[i] for i in greedy)  # the checkpoint's tokenizer, written beside the weights


# --- files from elsewhere: checked before anything is sized --------------------------------------


@pytest.fixture
def nothing_sized(monkeypatch):
    """Fail at once if a model is built anywhere but on the meta device, or tensor data is read, while a folder
    from elsewhere is loaded: what it claims must be refused before it sizes anything."""

    class ShapesOnly(GPT):
        def __init__(self, config):
            assert torch.get_default_device().type == "meta", f"a model of {config} was built before it was checked"
            super().__init__(config)

    def no_read(*args, **kwargs):
        raise AssertionError("tensor data was read before the files were checked")

    monkeypatch.setattr(pretrained, "GPT", ShapesOnly)
    monkeypatch.setattr(pretrained, "safe_open", no_read, raising=False)
    monkeypatch.setattr(pretrained, "load_file", no_read, raising=False)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_layer": 10**9}, "n_layer is 1,000,000,000, beyond the limit of 1,024"),
        ({"n_embd": 65536}, "n_embd 65,536, .* make 384.0 GiB of float32 weights, more than the"),
        ({"vocab_size": 10**12}, "vocab_size is 1,000,000,000,000, beyond the limit of 16,777,216"),
        ({"n_positions": 1 << 21}, "n_positions is 2,097,152, beyond the limit of 1,048,576"),
        ({"n_head": 4096}, "n_head is 4,096, beyond the limit of 1,024"),
        ({"n_layer": -1}, "n_layer is -1, not a positive whole number"),
        ({"n_embd": 64.0}, "n_embd is 64.0, not a positive whole number"),
        ({"n_head": "2"}, "n_head is '2', not a positive whole number"),
        ({"n_layer": True}, "n_layer is True, not a positive whole number"),
        ({"n_head": 3}, r"n_embd \(64\) is not divisible by n_head \(3\)"),
        ({"vocab_size": None}, "has no vocab_size"),
    ],
)
def test_a_config_from_elsewhere_is_checked_before_anything_is_sized(hf_folder, nothing_sized, change, message):
    folder, _ = hf_folder
    config = {k: v for k, v in (json.loads((folder / "config.json").read_text()) | change).items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match=message) as e:
        load_hf_gpt2(folder)
    assert str(folder / "config.json") in str(e.value)


def test_the_weights_are_counted_exactly_against_the_memory_limit(hf_folder, monkeypatch):
    folder, theirs = hf_folder
    n_bytes = 4 * theirs.num_parameters()  # float32; the tied head counted once
    monkeypatch.setattr(pretrained, "_memory_limit", lambda: n_bytes)
    assert_same_model(load_hf_gpt2(folder), theirs)
    monkeypatch.setattr(pretrained, "_memory_limit", lambda: n_bytes - 1)
    with pytest.raises(PretrainedError, match="GiB of float32 weights, more than the"):
        load_hf_gpt2(folder)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nests its JSON too deeply"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"n_layer": 2', "is not valid JSON"),
        (None, "beyond the limit of 67,108,864"),  # a file larger than any config: refused by its size
    ],
)
def test_a_json_file_from_elsewhere_is_bounded_and_parsed_with_a_clear_message(hf_folder, nothing_sized, text, message):
    folder, _ = hf_folder
    config = folder / "config.json"
    if text is None:
        with open(config, "r+b") as f:
            f.truncate(pretrained.MAX_STATE_BYTES + 1)  # sparse: no disk is used
    else:
        config.write_text(text)
    with pytest.raises(PretrainedError, match=message) as e:
        load_hf_gpt2(folder)
    assert str(config) in str(e.value)


def safetensors_bytes(header, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


WTE = {"dtype": "F32", "shape": [VOCAB, 64], "data_offsets": [0, VOCAB * 64 * 4]}
BAD_WEIGHTS = {
    "truncated": (lambda w: w[: len(w) // 2], "lies at bytes .* the file is truncated"),
    "header cut": (lambda w: w[:20], "is truncated or not a safetensors file: its header claims"),
    "shorter than its length": (lambda w: b"\x01\x02", "is truncated or not a safetensors file"),
    "length 2**62": (lambda w: (2**62).to_bytes(8, "little") + w[8:], "claims 4,611,686,018,427,387,904 bytes"),
    "header not JSON": (lambda w: safetensors_bytes(b"\xff" * 10), "is not valid JSON"),
    "header nested": (lambda w: safetensors_bytes(b"[" * 100_000 + b"]" * 100_000), "nests its JSON too deeply"),
    "header a list": (lambda w: safetensors_bytes([1]), "its header is not a JSON object"),
    "unknown dtype": (lambda w: safetensors_bytes({"wte.weight": WTE | {"dtype": "Q4"}}), "is not a tensor's dtype"),
    "negative shape": (lambda w: safetensors_bytes({"wte.weight": WTE | {"shape": [-1, 64]}}), "is not a tensor's"),
    "size disagrees": (
        lambda w: safetensors_bytes({"wte.weight": WTE | {"data_offsets": [0, 100]}}, bytes(100)),
        r"wte.weight \(F32 \[100, 64\]\) needs 25,600 bytes, and its header gives it 100",
    ),
    "huge shape": (
        lambda w: safetensors_bytes({"wte.weight": WTE | {"shape": [2**40] * 2, "data_offsets": [0, 16]}}, bytes(16)),
        "needs 4,835,703,278,458,516,698,824,704 bytes",
    ),
    "past the end": (lambda w: safetensors_bytes({"wte.weight": WTE}, bytes(1000)), "of the data, which holds 1,000"),
    "shape disagrees with the config": (
        lambda w: safetensors_bytes({"wte.weight": WTE | {"shape": [64, VOCAB]}}, bytes(VOCAB * 64 * 4)),
        r"shape mismatch: transformer.wte.weight \(64, 100\) \(ours \(100, 64\)\)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_WEIGHTS, ids=list(BAD_WEIGHTS))
def test_a_bad_safetensors_file_is_refused_by_its_header_naming_the_file(hf_folder, nothing_sized, case):
    folder, _ = hf_folder
    make, message = BAD_WEIGHTS[case]
    file = folder / "model.safetensors"
    file.write_bytes(make(file.read_bytes()))
    with pytest.raises(PretrainedError, match=message) as e:
        load_hf_gpt2(folder)
    assert str(file) in str(e.value)


def test_a_100_mb_header_is_refused_before_it_is_read(hf_folder, nothing_sized, monkeypatch):
    folder, _ = hf_folder
    file = folder / "model.safetensors"
    with open(file, "wb") as f:
        f.write((100_000_000).to_bytes(8, "little") + b"{")
        f.truncate(8 + 100_000_000 + 64)  # sparse: the header's length is true, the disk holds almost nothing
    with pytest.raises(PretrainedError, match="claims 100,000,000 bytes, beyond the limit of 67,108,864") as e:
        load_hf_gpt2(folder)
    assert str(file) in str(e.value)


def test_a_real_damaged_file_gives_no_safetensors_traceback(hf_folder):
    """Without stand-ins: the library itself never sees what the header check refuses."""
    folder, _ = hf_folder
    file = folder / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(PretrainedError, match="truncated") as e:
        load_hf_gpt2(folder)
    assert str(file) in str(e.value) and "SafetensorError" not in str(e.value)


def test_a_shard_index_names_only_files_in_its_own_folder(hf_folder, nothing_sized, tmp_path):
    folder, _ = hf_folder
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((folder / "config.json").read_text())
    for outside in ("../hf/model.safetensors", str(folder / "model.safetensors"), "model.bin", 7):
        index = {"weight_map": {"transformer.wte.weight": outside}}
        (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(PretrainedError, match="must map every tensor to a .safetensors file in"):
            load_hf_gpt2(sharded)


# --- where an export may write -----------------------------------------------------------------------


def contents(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def small_run(folder):
    """A run folder as the trainer leaves it: its manifest and a checkpoint in last/."""
    from nanogpt_lib.checkpoint import MANIFEST, save_checkpoint
    from nanogpt_lib.data import CharTokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    state = {"step": 1, "model_config": model.config.to_dict(), "tokenizer": CharTokenizer("abcdefghij").to_dict()}
    save_checkpoint(folder / "last", model, torch.optim.AdamW(model.parameters()), state)
    (folder / MANIFEST).write_text(json.dumps({"format": "nanogpt-run", "files": ["last", "best", "metrics.jsonl"]}))
    return folder


def export(capsys, ckpt, out, *flags) -> tuple[int, str]:
    from nanogpt_lib.cli import main

    code = main(["export", "--ckpt", str(ckpt), "--out", str(out), *flags])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("out", ["last", ".", "last/hf", "best", "exported", "../base/last"])
def test_export_never_writes_into_a_run_or_its_checkpoints(tmp_path, capsys, out):
    run = small_run(tmp_path / "B" / "base")
    before = contents(run)
    code, err = export(capsys, run / "last", run / out, "--force")  # not even with --force
    assert code == 1 and "a run's folder or a checkpoint" in err and str(run.resolve()) in err, err
    assert contents(run) == before


def test_export_never_writes_into_a_checkpoint_outside_a_run(tmp_path, capsys):
    ckpt = small_run(tmp_path / "run") / "last"
    (tmp_path / "run" / "nanogpt_run.json").unlink()
    moved = shutil.move(ckpt, tmp_path / "ckpt")  # a checkpoint folder on its own, e.g. a copy of last/
    before = contents(tmp_path / "ckpt")
    assert export(capsys, moved, moved, "--force")[0] == 1
    assert export(capsys, moved, tmp_path / "ckpt" / "sub", "--force")[0] == 1
    assert contents(tmp_path / "ckpt") == before
    other = tmp_path / "project"  # a state.json of some other program is no checkpoint
    other.mkdir()
    (other / "state.json").write_text('{"window": [10, 20]}\n')
    assert export(capsys, moved, other / "hf") == (0, "")


def test_export_over_a_users_files_needs_force_and_touches_only_its_own_names(tmp_path, capsys):
    run = small_run(tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}\n')
    (mine / "notes.txt").write_text("my notes\n")
    before = contents(mine)
    code, err = export(capsys, run, mine)
    assert code == 1 and "config.json, notes.txt" in err and "--force" in err, err
    assert contents(mine) == before
    assert export(capsys, run, mine, "--force")[0] == 0
    assert (mine / "notes.txt").read_text() == "my notes\n"
    assert json.loads((mine / "config.json").read_text())["model_type"] == "gpt2"
    assert export(capsys, run, mine)[0] == 1  # notes.txt is still not the export's
    manifest = json.loads((mine / pretrained.EXPORT_MANIFEST).read_text())
    assert manifest["files"] == ["model.safetensors", "config.json", "nanogpt_tokenizer.json"]


def test_exporting_again_into_an_export_needs_no_flag(tmp_path, capsys):
    run = small_run(tmp_path / "run")
    out = tmp_path / "hf"
    assert export(capsys, run, out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "nanogpt_export.json", "nanogpt_tokenizer.json"]  # fmt: skip
    assert export(capsys, run, out)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no temporary folder left behind
    model = load_hf_gpt2(out)
    export_hf(model, out)  # no tokenizer this time: the earlier one, which would decode wrongly, is removed
    assert not (out / "nanogpt_tokenizer.json").exists()
    manifest = out / pretrained.EXPORT_MANIFEST  # a manifest naming a user's file does not make it the export's
    manifest.write_text(json.dumps({"format": "nanogpt-export", "files": ["model.safetensors", "notes.txt"]}))
    (out / "notes.txt").write_text("my notes\n")
    with pytest.raises(PretrainedError, match="notes.txt"):
        export_hf(model, out)
    export_hf(model, out, force=True)
    assert (out / "notes.txt").read_text() == "my notes\n"


def test_a_link_at_an_export_name_is_replaced_never_written_through(tmp_path, capsys):
    run = small_run(tmp_path / "run")
    out = tmp_path / "hf"
    assert export(capsys, run, out)[0] == 0
    users = {name: tmp_path / f"users_{name}" for name in ("config.json", "model.safetensors", "config.json.tmp")}
    for name, target in users.items():
        target.write_text(f"the user's {name}\n")
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(target)  # in place of the export's files, and at the name an old writer used
    code, err = export(capsys, run, out)
    assert code == 1 and "config.json, config.json.tmp, model.safetensors" in err, err
    assert export(capsys, run, out, "--force")[0] == 0
    for name, target in users.items():
        assert target.read_text() == f"the user's {name}\n"
    assert not (out / "config.json").is_symlink() and not (out / "model.safetensors").is_symlink()
    assert load_hf_gpt2(out).config.vocab_size == 10
