"""Which attention backend Patch SageAttention runs: one pure decision (`choose`) from the device, what is installed
(probed once per process) and the mode. Backends: "sageattention" (1.x Triton or 2.x CUDA kernels), the host's
registered "comfy-kitchen int8" and "sage3", "reference" (ours, PyTorch) and "exact" (the host's PyTorch attention)."""
import functools
import importlib.metadata
import importlib.util
from typing import Callable, NamedTuple, Optional

import torch

MODES = ("auto", "sageattention", "comfy-kitchen int8", "sage3", "reference", "disabled")
ALIASES = {"sageattn": "sageattention"}  # the mode's name in workflows saved before the other backends existed
FIXED = {"disabled": ("exact", "disabled"), "reference": ("reference", "this pack's PyTorch SageAttention")}
# The compute capabilities sageattention 2.x's `sageattn` has a kernel for; it raises on any other. 12.1 (DGX Spark's
# GB10) since thu-ml's 2.2.0 sources of 2025-12: an older build fails at its first call, and `auto` picks again.
SAGE2_CAPABILITIES = ((8, 0), (8, 6), (8, 9), (9, 0), (12, 0), (12, 1))
# sageattn3's attention kernel runs on 12.0 alone (RTX 50xx, RTX PRO Blackwell; not B200, whatever it builds), and on
# 12.1 (DGX Spark) since its sources of 2025-12: an older build fails at its first call there, and stays exact.
SAGE3_CAPABILITIES = ((12, 0), (12, 1))


class Installed(NamedTuple):
    sageattention: Optional[str] = None  # its version, None if it is not installed
    triton: bool = False
    kitchen_int8: bool = False           # the host registered a "comfy_kitchen_int8" attention function
    sage3: bool = False                  # the host registered a "sage3" attention function
    failed: tuple = ()                   # (backend, why) of backends whose kernels failed at run time


def canonical(mode):
    mode = ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"attention mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def sage_major(version):
    """1 or 2 (or more) from sageattention's version; 1 when it cannot be read, so 1.x's workarounds apply."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 1


def _cc(capability):
    return f"{capability[0]}.{capability[1]}"


class Needs(NamedTuple):
    missing: Optional[str]   # why the backend is not installed, or None
    kernels: str             # its kernels, as "... need an NVIDIA GPU" names them
    fits: Callable           # (major, minor) -> whether it has kernels for that GPU
    needs: str               # what it needs of the GPU
    runs: str                # what runs


def _needs(mode, pkgs):
    if mode == "comfy-kitchen int8":
        return Needs(None if pkgs.kitchen_int8 else "ComfyUI registered no comfy_kitchen_int8 attention (it needs "
                     "comfy-kitchen with its CUDA kernels and a GPU of compute capability 7.5+)",
                     "comfy-kitchen's int8 attention kernels", lambda cc: cc >= (7, 5),
                     "comfy-kitchen's int8 attention needs 7.5+",
                     "ComfyUI's comfy_kitchen_int8 attention (CUDA kernel)")
    if mode == "sage3":
        return Needs(None if pkgs.sage3 else "ComfyUI registered no sage3 attention (it needs the sageattn3 package)",
                     "sage3's kernels", lambda cc: cc in SAGE3_CAPABILITIES,
                     "sage3's attention kernel runs on 12.0 and 12.1 only",
                     "ComfyUI's sage3 attention (Blackwell FP4 kernels)")
    version, missing = pkgs.sageattention, None
    if version is None:
        missing = "No module named 'sageattention' (pip install sageattention)"
    elif not pkgs.triton:  # every sageattention imports triton; it does not declare it and Windows torch lacks it
        missing = "No module named 'triton' (sageattention's kernels need it: pip install triton, or triton-windows)"
    if sage_major(version) >= 2:
        return Needs(missing, "the sageattention kernels", lambda cc: cc in SAGE2_CAPABILITIES,
                     f"sageattention {version} has kernels for {', '.join(map(_cc, SAGE2_CAPABILITIES))}",
                     f"sageattention {version} (CUDA kernels)")
    return Needs(missing, "the sageattention kernels", lambda cc: cc >= (8, 0),
                 "the sageattention 1.x kernels need 8.0+", f"sageattention {version} (Triton kernels)")


def _backend(mode, device_type, capability, pkgs):
    """(mode, what runs) or ("exact", why it cannot run here). What is missing is named before the device, so a user
    on the wrong machine still learns what to install."""
    failed = dict(pkgs.failed).get(mode)
    if failed:
        return "exact", failed
    need = _needs(mode, pkgs)
    if need.missing:
        return "exact", need.missing
    if device_type != "cuda":
        return "exact", f"{device_type} device ({need.kernels} need an NVIDIA GPU)"
    if not need.fits(tuple(capability)):
        return "exact", f"GPU compute capability {_cc(capability)} ({need.needs})"
    return mode, need.runs


def choose(mode, device_type, capability, pkgs, cudnn=False):
    """(backend, reason) for `mode` on a device of `device_type` ("cuda", "cpu", ...) with compute capability
    `capability` ((major, minor), None off CUDA) and the packages `pkgs` (an Installed); `cudnn`: PyTorch runs
    cuDNN's attention first on this GPU (pytorch_prefers_cudnn). Pure: same in, same out."""
    mode = canonical(mode)
    if mode in FIXED:
        return FIXED[mode]
    if mode != "auto":
        return _backend(mode, device_type, capability, pkgs)
    if device_type != "cuda":
        return "exact", f"{device_type} device (8-bit attention kernels need an NVIDIA GPU)"
    # sageattention 2.x, else comfy-kitchen int8, else sageattention 1.x, else exact (with every reason); where
    # PyTorch runs cuDNN's attention first, exact attention through it comes before sageattention 1.x (measured
    # slower there; comfy-kitchen's int8 attention is not measured there)
    sage2 = sage_major(pkgs.sageattention) >= 2
    order = ("sageattention", "comfy-kitchen int8") if sage2 else (
        ("comfy-kitchen int8",) + ("sageattention",) * (not cudnn))
    found = [_backend(m, "cuda", capability, pkgs) for m in order]
    if cudnn and not sage2:
        found.append(("exact", f"PyTorch runs cuDNN's attention first on this GPU ({_cc(capability)}), faster here "
                               "than sageattention 1.x's kernels"))
    return next((b for b in found if b[0] != "exact"), ("exact", "; ".join(reason for _, reason in found)))


@functools.cache
def pytorch_prefers_cudnn(device):
    """Whether PyTorch's own SDPA order runs cuDNN's attention first on `device`, asked of PyTorch once per device
    with a Wan-shaped call: it does on an H100/H200/B200 with a recent cuDNN and CUDA, and not on other GPUs, ROCm,
    or where a user turned it off (its rules, not copied here). ComfyUI puts FlashAttention-2 first; on an H200
    (2026-12-04, bench/sample.py) a 1.3B Sample Video step took 2.25 s with cuDNN's attention, 2.79 s with
    sageattention 1.0.6's 8-bit kernels and 3.25 s with FlashAttention-2."""
    if device.type != "cuda":
        return False
    from torch.nn.attention import SDPBackend
    try:
        probe = torch.zeros(1, 12, 1024, 128, device=device, dtype=torch.bfloat16)
        return torch._fused_sdp_choice(probe, probe, probe) == SDPBackend.CUDNN_ATTENTION.value
    except (AttributeError, RuntimeError) as e:   # AttributeError: a private function, a torch without it
        if out_of_memory(e):    # the first call of a run, at its peak: no answer to keep for the process
            raise
        return False


def out_of_memory(e):
    """Whether `e` is memory running out, as ComfyUI's is_oom tells (quant/act_quant.py has the same test): that goes
    up as it is, since ComfyUI then frees models and the next run may fit; it must not turn the kernels off."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


@functools.cache
def installed_packages():
    """(sageattention's version or None, whether triton is installed), found once without importing either."""
    try:
        version = importlib.metadata.version("sageattention")
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path has no metadata
        version = "unknown" if importlib.util.find_spec("sageattention") else None
    return version, importlib.util.find_spec("triton") is not None


@functools.cache
def device_capability(device):
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None
