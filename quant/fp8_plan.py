"""How torch._scaled_mm multiplies FP8 on a device, decided once per device: "rowwise" (per-token x per-channel
scales) on sm89, sm90, sm100 and CPU; "tensorwise" (one scale each, per-channel ones applied to the output) on sm120
and newer or unknown GPUs, as cuBLASLt rejects row-wise FP8 scales on sm120 (pytorch issue 192707), and on Windows,
where PyTorch does not build its row-wise kernels; else None (also on CPU where torch's kernel takes one scale per
operand: torch 2.11 and older)."""
import functools
import logging
import os
import re

import torch

from . import act_quant

# The oldest torch whose _scaled_mm takes row-wise scales on each architecture: the 2-D scale API and the sm90 kernel
# came in 2.5, the sm89 and sm100 builds of the kernel in 2.7.
ROWWISE_SINCE = {(8, 9): (2, 7), (9,): (2, 5), (10,): (2, 7)}
TENSORWISE_SINCE = (2, 5)   # _scaled_mm returning one tensor, with 2-D scales
# Row-wise scales run on PyTorch's CUTLASS kernels, which it builds on Linux only (not on Windows: cutlass issue
# 1571), or, on sm90 from torch 2.9 built with CUDA 12.9+, on cuBLASLt's (pytorch PR 157905), on Windows too.
CUBLAS_ROWWISE = ((2, 9), (12, 9))    # (torch, CUDA) from which cuBLASLt takes row-wise scales on sm90
# What a CUDA torch without row-wise kernels says when asked for them (torch 2.5 and 2.6 spelled it "currenlty").
NO_ROWWISE = re.compile(r"Rowwise scaling is not curren\w* supported")
WINDOWS = os.name == "nt"
_plans = {}


def _release(version):
    return tuple(int(n) for n in re.match(r"(\d+)\.(\d+)", version).groups())


def _applied(granularity):
    return "per-channel weight scales applied to the output" if granularity == "channel" else "per-tensor weight scales"


def scaled_mm_plan(device_type, capability, torch_version, granularity, cpu_rowwise=True, windows=False,
                   cuda_version=None):
    """("rowwise" | "tensorwise" | None, reason) for a device type ("cuda", "cpu", ...), its CUDA compute capability
    (major, minor) (None off CUDA), a torch version string and the weight's scale granularity ("tensor"/"channel");
    cpu_rowwise: whether this torch's CPU kernel takes row-wise scales (cpu_rowwise_scales()); windows: the OS;
    cuda_version: the CUDA torch is built with (torch.version.cuda)."""
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"granularity must be 'tensor' or 'channel', not {granularity!r}")
    weight = f"per-{granularity} weight scales"
    if device_type == "cpu":
        # Slow, but the same code as on a GPU: used where fp8 matmul is forced on CPU, and by the tests. Not the
        # tensorwise plan where row-wise scales are missing: one activation scale zeroes tokens 1e6 times quieter
        # than the loudest, and an upcast product is exact there.
        if not cpu_rowwise:
            return None, (f"cpu: torch {torch_version}'s torch._scaled_mm takes no per-token scales on CPU "
                          "(torch 2.14 does)")
        return "rowwise", f"cpu: torch._scaled_mm's CPU kernel, per-token activation scales x {weight}"
    if device_type != "cuda":
        return None, f"{device_type} device: no FP8 tensor cores"
    major, minor = capability
    if (major, minor) < (8, 9):
        return None, f"GPU compute capability {major}.{minor} has no FP8 tensor cores (needs 8.9+)"
    release = _release(torch_version)
    since = ROWWISE_SINCE.get((major, minor)) or ROWWISE_SINCE.get((major,))
    cublas = major == 9 and cuda_version is not None and release >= CUBLAS_ROWWISE[0] \
        and _release(cuda_version) >= CUBLAS_ROWWISE[1]
    if since and (not windows or cublas):
        if release < since:
            return None, (f"torch {torch_version} has no row-wise torch._scaled_mm for sm{major}{minor} "
                          f"(needs {since[0]}.{since[1]}+)")
        return "rowwise", f"sm{major}{minor}: per-token activation scales x {weight}"
    if release < TENSORWISE_SINCE:
        return None, f"torch {torch_version} is too old for torch._scaled_mm (needs 2.5+)"
    applied = _applied(granularity)
    if since:    # Windows
        sm90 = " (cuBLAS has them on sm90 with torch 2.9+ built with CUDA 12.9+)" if major == 9 else ""
        why = f"PyTorch builds its row-wise FP8 kernels on Linux only{sm90}"
        return "tensorwise", f"sm{major}{minor} on Windows: per-tensor activation scales, {applied} ({why})"
    return "tensorwise", (f"sm{major}{minor}: per-tensor activation scales, {applied} (cuBLASLt has no row-wise FP8 "
                          "here, pytorch issue 192707)")


def device_plan(device, granularity):
    """scaled_mm_plan for this device, worked out on its first call (no capability query per product)."""
    key = (device.type, device.index, granularity)
    if key not in _plans:
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        cpu_rowwise = cpu_rowwise_scales() if device.type == "cpu" else True
        _plans[key] = scaled_mm_plan(device.type, capability, torch.__version__, granularity, cpu_rowwise, WINDOWS,
                                     torch.version.cuda)
    return _plans[key]


def without_rowwise(device, error):
    """A row-wise product failed for want of the kernel (`error`: a torch built without it, where scaled_mm_plan
    expected one): this device's products take per-tensor activation scales from now on, as on Windows."""
    logging.getLogger("skyreels_fp8").warning(
        f"FP8 products on {device}: this PyTorch has no row-wise FP8 kernel ({error}); per-tensor activation scales "
        "from now on")
    for granularity in ("tensor", "channel"):
        _plans[(device.type, device.index, granularity)] = (
            "tensorwise", f"per-tensor activation scales, {_applied(granularity)} (this torch: {error})")


@functools.cache
def cpu_rowwise_scales():
    """Whether this torch's CPU _scaled_mm takes row-wise scales, tried once on a 16 x 16 product: torch 2.8 and 2.11
    (measured) fail an internal assert on them ("please report a bug to PyTorch. Now _scaled_mm only supports
    per-tensor scaling for CPU backend"), which the report would otherwise show as the reason for upcasting."""
    a = torch.zeros((16, 16), dtype=torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones((16, 1)), scale_b=torch.ones((1, 16)), out_dtype=torch.float32)
    except RuntimeError:   # also NotImplementedError: a torch without a CPU kernel at all
        return False
    return True


def fused_quant_available(device):
    """(True, a note for the report or None) on a CUDA device with an FP8 plan and a one-pass activation quantization
    (triton; for per-tensor scales comfy-kitchen's CUDA kernel too), else (False, why not)."""
    if device.type != "cuda":
        return False, f"{device.type} device: no FP8 tensor cores"
    plan, reason = device_plan(device, "channel")
    if plan is None:
        return False, reason
    ok, why = act_quant.fused_available()
    if ok:
        return True, reason if plan == "tensorwise" else None
    if plan != "tensorwise":
        return False, why
    if act_quant.kitchen_per_tensor() is None:
        return False, f"{why}; {act_quant.kitchen_missing()}"
    return True, (f"{reason}; its activations quantized by comfy-kitchen's CUDA kernel, as ComfyUI's own FP8 layers "
                  f"do ({why.split(':')[0]})")


def compute_dtype(host_dtype, device_type, plan, fp8_products, fp16_asked=False):
    """The dtype a model computes in: the host's choice (`host_dtype`), except bf16 instead of fp16 where its products
    run in FP8 on CUDA (`plan` not None): _scaled_mm writes them in bf16 there, so an fp16 model cast every Linear's
    output (on an H200, 300 casts a step of the 1.3B model at 540P: 169 ms of 3.5 s). bf16 is also what SkyReels-V2's
    pipelines compute in; every GPU with FP8 tensor cores has it. Not where the user asked for fp16 (fp16_asked)."""
    if fp8_products and device_type == "cuda" and plan is not None and host_dtype == torch.float16 and not fp16_asked:
        return torch.bfloat16
    return host_dtype
