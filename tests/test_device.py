"""The device layer: every branch, with the hardware checks faked (no GPU needed)."""

import os
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch

from nanogpt_lib import device as dev


@pytest.fixture
def machine(monkeypatch):
    """Fake what the machine has: machine(cuda=..., mps=..., cpu_flags=..., cuda_bf16=...)."""
    monkeypatch.delenv(dev.DEVICE_ENV, raising=False)
    monkeypatch.delenv(dev.PRECISION_ENV, raising=False)

    def fake(cuda=False, mps=False, cpu_flags=(), cuda_bf16=True, cuda_count=1):
        monkeypatch.setattr(dev, "cuda_available", lambda: cuda)
        monkeypatch.setattr(dev, "mps_available", lambda: mps)
        monkeypatch.setattr(dev, "cpu_flags", lambda: set(cpu_flags))
        monkeypatch.setattr(dev, "cuda_has_bf16", lambda: cuda_bf16)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count if cuda else 0)

    return fake


@pytest.mark.parametrize(
    "cuda, mps, expected",
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_picks_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert dev.pick_device() == torch.device(expected)
    assert dev.pick_device("auto") == torch.device(expected)
    assert dev.available_devices()[-1] == "cpu"


def test_argument_overrides_auto(machine):
    machine(cuda=True, mps=False)
    assert dev.pick_device("cpu") == torch.device("cpu")
    assert dev.pick_device(torch.device("cuda")) == torch.device("cuda")
    assert dev.pick_device(" CUDA ") == torch.device("cuda")


def test_environment_variable_overrides_auto_and_argument_overrides_it(machine, monkeypatch):
    machine(cuda=True, mps=True)
    monkeypatch.setenv(dev.DEVICE_ENV, "mps")
    assert dev.pick_device() == torch.device("mps")
    assert dev.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv(dev.DEVICE_ENV, "")
    assert dev.pick_device() == torch.device("cuda")


def test_absent_device_is_refused_naming_what_exists(machine, monkeypatch):
    machine(cuda=False, mps=True)
    with pytest.raises(dev.DeviceError, match=r"'cuda'.*not available.*available: mps, cpu"):
        dev.pick_device("cuda")
    monkeypatch.setenv(dev.DEVICE_ENV, "cuda")
    with pytest.raises(dev.DeviceError, match=f"environment variable {dev.DEVICE_ENV}"):
        dev.pick_device()


def test_unknown_device_is_refused_listing_known_and_available(machine):
    machine()
    with pytest.raises(dev.DeviceError, match=r"unknown device 'tpu'.*cuda, mps, cpu.*Available on this machine: cpu"):
        dev.pick_device("tpu")


def test_cuda_index_is_checked(machine):
    machine(cuda=True, cuda_count=2)
    assert dev.pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(dev.DeviceError, match="has 2 cuda device"):
        dev.pick_device("cuda:2")
    with pytest.raises(dev.DeviceError, match="does not exist"):
        dev.pick_device("cuda:x")


@pytest.mark.parametrize(
    "device, fake, expected",
    [
        ("cuda", dict(cuda=True, cuda_bf16=True), "bf16"),
        ("cuda", dict(cuda=True, cuda_bf16=False), "fp16"),
        ("mps", dict(mps=True), "fp32"),
        ("cpu", dict(cpu_flags={"avx2", "avx512_bf16"}), "bf16"),
        ("cpu", dict(cpu_flags={"amx_bf16"}), "bf16"),
        ("cpu", dict(cpu_flags={"avx2", "fma"}), "fp32"),
        ("cpu", dict(cpu_flags=()), "fp32"),
    ],
)
def test_auto_precision_per_device(machine, device, fake, expected):
    machine(**fake)
    p = dev.pick_precision(device)
    assert p.name == expected and p.device_type == device
    assert p.needs_grad_scaler == (expected == "fp16")
    assert p.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[expected]


def test_precision_can_be_forced_by_argument_or_environment(machine, monkeypatch):
    machine(cpu_flags={"avx512_bf16"})
    assert dev.pick_precision("cpu", "fp32").name == "fp32"
    monkeypatch.setenv(dev.PRECISION_ENV, "fp32")
    assert dev.pick_precision("cpu").name == "fp32"
    assert dev.pick_precision("cpu", "bf16").name == "bf16"
    monkeypatch.setenv(dev.PRECISION_ENV, "fp8")
    with pytest.raises(dev.DeviceError, match=r"unknown precision 'fp8'.*fp32, bf16, fp16"):
        dev.pick_precision("cpu")


def test_fp32_autocast_is_a_no_op_and_bf16_autocast_computes_in_bf16():
    assert isinstance(dev.Precision("fp32", "cpu").autocast(), nullcontext)
    layer = torch.nn.Linear(16, 16)
    x = torch.randn(4, 16)
    with dev.Precision("bf16", "cpu").autocast():
        y = layer(x)
    assert y.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    torch.testing.assert_close(y.float(), layer(x), atol=0.05, rtol=0.02)


def test_grad_scaler_is_enabled_only_for_fp16():
    assert not dev.Precision("bf16", "cpu").grad_scaler().is_enabled()
    assert not dev.Precision("fp32", "cpu").grad_scaler().is_enabled()
    assert dev.Precision("fp16", "cpu").grad_scaler().is_enabled()


def test_cpu_flags_reads_this_machine():
    flags = dev.cpu_flags()
    if os.path.exists("/proc/cpuinfo"):
        assert flags, "Linux reports CPU flags in /proc/cpuinfo"
    assert dev.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_set_seed_repeats_every_generator():
    import random

    import numpy as np

    dev.set_seed(7)
    a = (random.random(), np.random.rand(), torch.rand(2))
    dev.set_seed(7)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    with pytest.raises(ValueError, match="non-negative int"):
        dev.set_seed(-1)


def test_measure_matmul_flops_is_counted_work_over_best_time(monkeypatch):
    """FLOP/s = the work PyTorch's FLOP counter sees in one n x n matmul / the fastest of the timed runs."""
    from torch.utils.flop_counter import FlopCounterMode

    n = 48
    with FlopCounterMode(display=False) as counter:
        torch.randn(n, n) @ torch.randn(n, n)
    durations = iter([9.0, 0.5, 0.25, 0.75])  # the first (warm-up) run is the slowest and must not count
    clock = {"now": 0.0, "start": True}

    def fake_clock():
        if not clock["start"]:
            clock["now"] += next(durations)
        clock["start"] = not clock["start"]
        return clock["now"]

    monkeypatch.setattr(dev.time, "perf_counter", fake_clock)
    assert dev.measure_matmul_flops("cpu", torch.float32, n=n, repeats=3) == counter.get_total_flops() / 0.25


def test_environment_report_names_devices_and_versions():
    report = dev.environment_report()
    assert report["torch"] == torch.__version__
    assert "cpu" in report["devices"].split(", ")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_command_line_cpu_override():
    r = _run("from nanogpt_lib.device import pick_device; print(pick_device())", NANOGPT_DEVICE="cpu")
    assert r.returncode == 0 and r.stdout.strip() == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so asking for it succeeds")
def test_command_line_absent_cuda_fails_naming_devices():
    r = _run("from nanogpt_lib.device import pick_device; print(pick_device())", NANOGPT_DEVICE="cuda")
    assert r.returncode != 0
    assert "not available on this machine" in r.stderr and "available: " in r.stderr and "cpu" in r.stderr


@pytest.mark.parametrize(
    "capability, expected", [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_cuda_bf16_only_when_native(monkeypatch, capability, expected):
    """A T4 (7.5) or V100 (7.0) emulates bf16, slowly: it gets fp16 and a gradient scaler; Ampere (8.0) on gets bf16."""
    monkeypatch.delenv(dev.PRECISION_ENV, raising=False)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # PyTorch's own answer counts emulation as support unless told not to, as the real function does
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or capability >= (8, 0)
    )
    p = dev.pick_precision("cuda")
    assert p.name == expected
    assert p.needs_grad_scaler == (expected == "fp16")


def test_free_memory_on_this_cpu_is_between_zero_and_the_total():
    free = dev.free_memory("cpu")
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert free is not None and 0 < free <= total
    assert dev.free_memory("mps") is None  # a device that cannot say: nothing is refused on a guess
