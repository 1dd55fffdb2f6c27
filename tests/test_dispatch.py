"""The backend decision of Patch SageAttention (attention.dispatch.choose): every mode on sm75 ... sm121 and on a
CPU, against each combination of what is installed. The expected tables are written out by hand."""
import itertools

import pytest
import torch
from torch.nn.attention import SDPBackend

import attention.dispatch as dispatch
from attention.dispatch import Installed, choose

GPUS = {"sm75": (7, 5), "sm80": (8, 0), "sm86": (8, 6), "sm89": (8, 9), "sm90": (9, 0), "sm100": (10, 0),
        "sm120": (12, 0), "sm121": (12, 1)}
CUDNN_FIRST = {"sm90", "sm100"}   # where PyTorch's own order runs cuDNN's attention first (torch 2.11, recent cuDNN)
SAGE_VERSIONS = (None, "1.0.6", "2.2.0")
SHORT = {"sage": "sageattention", "kitchen": "comfy-kitchen int8", "sage3": "sage3", "exact": "exact"}

# auto, with triton installed: (sageattention, comfy_kitchen_int8 registered) -> backend on sm75 80 86 89 90 100 120
# 121
# (on sm90 and sm100, where PyTorch runs cuDNN's attention first, exact attention is faster than sageattention 1.x)
AUTO = {
    (None, False): "exact exact exact exact exact exact exact exact",
    (None, True): "kitchen kitchen kitchen kitchen kitchen kitchen kitchen kitchen",
    ("1.0.6", False): "exact sage sage sage exact exact sage sage",
    ("1.0.6", True): "kitchen kitchen kitchen kitchen kitchen kitchen kitchen kitchen",
    ("2.2.0", False): "exact sage sage sage sage exact sage sage",
    ("2.2.0", True): "kitchen sage sage sage sage kitchen sage sage",
}
# sageattention mode, with triton installed: sageattention version -> backend on the same GPUs
SAGEATTENTION = {
    None: "exact exact exact exact exact exact exact exact",
    "1.0.6": "exact sage sage sage sage sage sage sage",
    "2.2.0": "exact sage sage sage sage exact sage sage",
}
COMBOS = list(itertools.product(SAGE_VERSIONS, (True, False), (True, False), (True, False)))


def expected(row):
    return dict(zip(GPUS, (SHORT[b] for b in row.split())))


@pytest.mark.parametrize("sage,triton,kitchen,sage3", COMBOS)
def test_auto(sage, triton, kitchen, sage3):
    pkgs = Installed(sage, triton, kitchen, sage3)
    # every sageattention imports triton: without it the row is the one without sageattention
    want = expected(AUTO[(sage if triton else None, kitchen)])
    got = {gpu: choose("auto", "cuda", cc, pkgs, gpu in CUDNN_FIRST)[0] for gpu, cc in GPUS.items()}
    assert got == want
    # where PyTorch does not put cuDNN first (an older cuDNN or CUDA, ROCm, turned off), sm90 as sm89
    assert choose("auto", "cuda", (9, 0), pkgs)[0] == got["sm89"]


@pytest.mark.parametrize("sage,triton,kitchen,sage3", COMBOS)
def test_each_mode_runs_only_its_own_backend(sage, triton, kitchen, sage3):
    pkgs = Installed(sage, triton, kitchen, sage3)
    for mode, row in (("sageattention", SAGEATTENTION[sage if triton else None]),
                      ("sageattn", SAGEATTENTION[sage if triton else None]),
                      ("comfy-kitchen int8", " ".join(["kitchen" if kitchen else "exact"] * 8)),
                      # sageattn3's attention kernel refuses all but 12.0 and 12.1, B200 (10.0) too
                      ("sage3", "exact exact exact exact exact exact " + ("sage3 sage3" if sage3 else "exact exact")),
                      ("reference", None), ("disabled", None)):
        want = expected(row) if row else {gpu: "reference" if mode == "reference" else "exact" for gpu in GPUS}
        assert {gpu: choose(mode, "cuda", cc, pkgs, gpu in CUDNN_FIRST)[0] for gpu, cc in GPUS.items()} == want, mode


@pytest.mark.parametrize("sage,triton,kitchen,sage3", COMBOS)
def test_off_cuda_only_the_reference_is_8_bit(sage, triton, kitchen, sage3):
    pkgs = Installed(sage, triton, kitchen, sage3)
    for device in ("cpu", "mps"):
        for mode in dispatch.MODES:
            assert choose(mode, device, None, pkgs)[0] == ("reference" if mode == "reference" else "exact")


def test_reasons_name_what_is_missing_before_the_device():
    nothing = Installed()
    assert choose("sageattention", "cpu", None, nothing)[1] == ("No module named 'sageattention' "
                                                                "(pip install sageattention)")
    assert choose("sageattention", "cpu", None, Installed("1.0.6"))[1].startswith("No module named 'triton'")
    assert choose("sageattention", "cpu", None, Installed("1.0.6", True))[1] == (
        "cpu device (the sageattention kernels need an NVIDIA GPU)")
    assert "comfy_kitchen_int8" in choose("comfy-kitchen int8", "cuda", (9, 0), nothing)[1]
    assert choose("comfy-kitchen int8", "cuda", (7, 0), Installed(kitchen_int8=True))[1] == (
        "GPU compute capability 7.0 (comfy-kitchen's int8 attention needs 7.5+)")
    # sageattn3's attention kernel checks for 12.0 (and 12.1 since 2025-12) and refuses B200 and B300 (its issues
    # 346 and 358)
    assert choose("sage3", "cuda", (10, 0), Installed(sage3=True))[1] == (
        "GPU compute capability 10.0 (sage3's attention kernel runs on 12.0 and 12.1 only)")
    assert [choose("sage3", "cuda", cc, Installed(sage3=True))[0] for cc in ((10, 3), (12, 0), (12, 1))] == \
        ["exact", "sage3", "sage3"]
    assert choose("sageattention", "cuda", (10, 0), Installed("2.2.0", True))[1].startswith(
        "GPU compute capability 10.0 (sageattention 2.2.0 has kernels for 8.0, 8.6")
    assert choose("auto", "cpu", None, nothing) == ("exact", "cpu device (8-bit attention kernels need an NVIDIA "
                                                             "GPU)")
    # auto with nothing to run on a GPU says why for each candidate
    backend, why = choose("auto", "cuda", (8, 9), nothing)
    assert backend == "exact" and "comfy_kitchen_int8" in why and "No module named 'sageattention'" in why
    assert choose("auto", "cuda", (9, 0), Installed("2.1.1+cu128", True)) == (
        "sageattention", "sageattention 2.1.1+cu128 (CUDA kernels)")
    backend, why = choose("auto", "cuda", (9, 0), Installed("1.0.6", True), cudnn=True)
    assert backend == "exact" and "comfy_kitchen_int8" in why and why.endswith(
        "; PyTorch runs cuDNN's attention first on this GPU (9.0), faster here than sageattention 1.x's kernels")
    assert choose("auto", "cuda", (10, 0), Installed("2.2.0", True), cudnn=True) == ("exact", (
        "GPU compute capability 10.0 (sageattention 2.2.0 has kernels for 8.0, 8.6, 8.9, 9.0, 12.0, 12.1); ComfyUI "
        "registered no comfy_kitchen_int8 attention (it needs comfy-kitchen with its CUDA kernels and a GPU of "
        "compute capability 7.5+)"))


def test_off_cuda_pytorch_is_not_asked_about_cudnn_attention():
    # On any machine. On a GPU the answer is PyTorch's own (torch._fused_sdp_choice on a Wan-shaped call):
    # CUDNN_ATTENTION on the H200 of 2026-12-04 (bench/attention.py prints it), so auto ran exact attention there.
    assert dispatch.pytorch_prefers_cudnn(torch.device("cpu")) is False


def test_a_gpu_out_of_memory_is_no_answer_about_cudnn(monkeypatch):
    # the probe runs in the first attention call, at the run's peak: out of memory there goes up as the run's error
    # (its attention would not fit either) and is not kept as "no cuDNN" for every later run (a stand-in device)
    gpu = type("Device", (), {"type": "cuda"})()
    for error in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 MiB"),
                  RuntimeError("CUDA error: out of memory")):      # as ComfyUI's is_oom tells them
        def full(*args, **kwargs):
            raise error
        monkeypatch.setattr(dispatch.torch, "zeros", full)
        with pytest.raises(RuntimeError, match="out of memory"):
            dispatch.pytorch_prefers_cudnn(gpu)
    monkeypatch.setattr(dispatch.torch, "zeros", lambda *a, **kw: None)
    monkeypatch.setattr(dispatch.torch, "_fused_sdp_choice", lambda *a: SDPBackend.CUDNN_ATTENTION.value,
                        raising=False)
    assert dispatch.pytorch_prefers_cudnn(gpu) is True


def test_modes_and_the_old_name():
    assert dispatch.canonical("sageattn") == "sageattention"
    with pytest.raises(ValueError, match="attention mode must be one of"):
        choose("fast", "cuda", (9, 0), Installed())


@pytest.mark.parametrize("version,major", [("1.0.6", 1), ("2.2.0", 2), ("2.1.1+cu128torch2.7", 2), ("unknown", 1)])
def test_sage_major(version, major):
    assert dispatch.sage_major(version) == major


def test_installed_packages_is_probed_once(monkeypatch):
    dispatch.installed_packages.cache_clear()
    calls = []
    monkeypatch.setattr(dispatch.importlib.metadata, "version", lambda name: calls.append(name) or "2.2.0")
    monkeypatch.setattr(dispatch.importlib.util, "find_spec", lambda name: calls.append(name) or object())
    try:
        assert dispatch.installed_packages() == ("2.2.0", True)
        assert dispatch.installed_packages() == ("2.2.0", True)
        assert calls == ["sageattention", "triton"]
    finally:
        dispatch.installed_packages.cache_clear()


def test_device_capability_off_cuda_is_none():
    assert dispatch.device_capability(torch.device("cpu")) is None


def test_a_backend_that_failed_at_run_time_is_passed_over():
    # Patch SageAttention records a backend whose kernels failed in a call (Installed.failed); auto then takes the
    # next one, an explicit mode names the failure.
    why = "the sageattention kernels failed (ImportError: DLL load failed while importing _fused)"
    pkgs = Installed("2.2.0", True, kitchen_int8=True, failed=(("sageattention", why),))
    assert choose("auto", "cuda", (8, 9), pkgs) == ("comfy-kitchen int8",
                                                    "ComfyUI's comfy_kitchen_int8 attention (CUDA kernel)")
    assert choose("sageattention", "cuda", (8, 9), pkgs) == ("exact", why)
    both = pkgs._replace(failed=pkgs.failed + (("comfy-kitchen int8", "comfy-kitchen int8 failed (RuntimeError)"),))
    assert choose("auto", "cuda", (8, 9), both) == ("exact", f"{why}; comfy-kitchen int8 failed (RuntimeError)")


def test_sage3_only_on_the_capabilities_its_kernel_runs_on():
    assert choose("sage3", "cuda", (12, 0), Installed(sage3=True))[0] == "sage3"
    assert choose("sage3", "cuda", (13, 0), Installed(sage3=True))[0] == "exact"
