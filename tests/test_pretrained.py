"""Loading GPT-2 from Hugging Face's format and writing it back (chapter 08), against `transformers` itself, offline."""

import json

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
