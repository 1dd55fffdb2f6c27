"""Which attention backend Patch SageAttention runs: one pure decision from the device, what is installed and the
mode asked for (`choose`). What is installed is probed once per process (`installed_packages`), never per call.

Backends: "sageattention" (the package's kernels: 1.x Triton or 2.x CUDA), "comfy-kitchen int8" and "sage3" (the
host's registered attention functions of those names), "reference" (this pack's PyTorch SageAttention) and
"exact" (the host's PyTorch attention).
"""
import functools
import importlib.metadata
import importlib.util
from typing import NamedTuple, Optional

import torch

MODES = ("auto", "sageattention", "comfy-kitchen int8", "sage3", "reference", "disabled")
ALIASES = {"sageattn": "sageattention"}  # the mode's name in workflows saved before the other backends existed
# The compute capabilities sageattention 2.x's `sageattn` has a kernel for; it raises on any other.
SAGE2_CAPABILITIES = ((8, 0), (8, 6), (8, 9), (9, 0), (12, 0))
KITCHEN_MIN_CAPABILITY = (7, 5)  # comfy-kitchen's int8 attention kernel
SAGE1_MIN_CAPABILITY = (8, 0)    # sageattention 1.x's Triton kernels
SAGE3_MIN_CAPABILITY = (10, 0)   # sageattn3 is Blackwell-only


class Installed(NamedTuple):
    sageattention: Optional[str] = None  # its version, None if it is not installed
    triton: bool = False
    kitchen_int8: bool = False           # the host registered a "comfy_kitchen_int8" attention function
    sage3: bool = False                  # the host registered a "sage3" attention function


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


def _off_cuda(device_type, what):
    return "exact", f"{device_type} device ({what} need an NVIDIA GPU)"


def _sageattention(device_type, capability, pkgs):
    """("sageattention", what runs) or ("exact", why it cannot run here). Each backend's check names what is
    missing before the device, so a user on the wrong machine still learns what to install."""
    if pkgs.sageattention is None:
        return "exact", "No module named 'sageattention' (pip install sageattention)"
    if not pkgs.triton:  # every sageattention imports triton; it does not declare it and Windows torch lacks it
        return "exact", ("No module named 'triton' (sageattention's kernels need it: pip install triton, or "
                         "triton-windows)")
    if device_type != "cuda":
        return _off_cuda(device_type, "the sageattention kernels")
    version = pkgs.sageattention
    if sage_major(version) >= 2:
        if tuple(capability) not in SAGE2_CAPABILITIES:
            return "exact", (f"GPU compute capability {_cc(capability)} (sageattention {version} has kernels for "
                             f"{', '.join(map(_cc, SAGE2_CAPABILITIES))})")
        return "sageattention", f"sageattention {version} (CUDA kernels)"
    if tuple(capability) < SAGE1_MIN_CAPABILITY:
        return "exact", f"GPU compute capability {_cc(capability)} (the sageattention 1.x kernels need 8.0+)"
    return "sageattention", f"sageattention {version} (Triton kernels)"


def _kitchen(device_type, capability, pkgs):
    if not pkgs.kitchen_int8:
        return "exact", ("ComfyUI registered no comfy_kitchen_int8 attention (it needs comfy-kitchen with its CUDA "
                         "kernels and a GPU of compute capability 7.5+)")
    if device_type != "cuda":
        return _off_cuda(device_type, "comfy-kitchen's int8 attention kernels")
    if tuple(capability) < KITCHEN_MIN_CAPABILITY:
        return "exact", f"GPU compute capability {_cc(capability)} (comfy-kitchen's int8 attention needs 7.5+)"
    return "comfy-kitchen int8", "ComfyUI's comfy_kitchen_int8 attention (CUDA kernel)"


def _sage3(device_type, capability, pkgs):
    if not pkgs.sage3:
        return "exact", "ComfyUI registered no sage3 attention (it needs the sageattn3 package)"
    if device_type != "cuda":
        return _off_cuda(device_type, "sage3's kernels")
    if tuple(capability) < SAGE3_MIN_CAPABILITY:
        return "exact", f"GPU compute capability {_cc(capability)} (sage3 needs a Blackwell GPU, 10.0+)"
    return "sage3", "ComfyUI's sage3 attention (Blackwell FP4 kernels)"


def _auto(capability, pkgs):
    """sageattention 2.x, else comfy-kitchen int8, else sageattention 1.x, else exact (with every reason)."""
    sage, kitchen = _sageattention("cuda", capability, pkgs), _kitchen("cuda", capability, pkgs)
    sage2 = pkgs.sageattention is not None and sage_major(pkgs.sageattention) >= 2
    order = (sage, kitchen) if sage2 else (kitchen, sage)
    for backend, reason in order:
        if backend != "exact":
            return backend, reason
    return "exact", "; ".join(reason for _, reason in order)


def choose(mode, device_type, capability, pkgs):
    """(backend, reason) for `mode` on a device of `device_type` ("cuda", "cpu", ...) with compute capability
    `capability` ((major, minor), None off CUDA) and the packages `pkgs` (an Installed). Pure: same in, same out."""
    mode = canonical(mode)
    if mode == "disabled":
        return "exact", "disabled"
    if mode == "reference":
        return "reference", "this pack's PyTorch SageAttention"
    if mode == "auto":
        return _off_cuda(device_type, "8-bit attention kernels") if device_type != "cuda" else _auto(capability, pkgs)
    backend = {"sageattention": _sageattention, "comfy-kitchen int8": _kitchen, "sage3": _sage3}[mode]
    return backend(device_type, capability, pkgs)


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
    """(major, minor) of a CUDA device, None for any other; asked once per device."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)
