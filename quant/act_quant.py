"""Per-token FP8 (e4m3fn) quantization of Linear inputs for torch._scaled_mm, with a one-entry cache so that an
attention's q, k and v Linears quantize their shared input once. The Triton kernel and the eager chunks give the
same bytes: scale = row absmax / 448 in fp32 (1 for all-zero rows), x / scale clamped to +-448, rounded to even.
Per-tensor scales on a GPU without Triton: comfy-kitchen's CUDA kernel, as ComfyUI's own FP8 layers quantize."""
import functools
import logging
import threading
import weakref

import torch

from .scale import absmax, absmax_scale, saturate

E4M3 = torch.float8_e4m3fn
# Values in one eager chunk. CPU: a 4 MiB fp32 copy, the fastest of 2^18 ... 2^24 values on a 2-core machine (by
# 10-30%; small chunks pay each op's thread start-up). GPU: few launches (10 chunks for a 32768 x 5120 activation).
CHUNK_VALUES = {"cpu": 1 << 20, "cuda": 1 << 24}
# Values per comfy-kitchen call: its kernel counts them in 32 bits (up to 2^32 - 2048). One call up to the 14B model's
# ffn.2 input at 540P with cond and uncond batched (1.4e9); row blocks, each an fp8 temporary, only past it.
KITCHEN_VALUES = 1 << 31
_triton_failed = []   # why the Triton kernel failed here: per-tensor scales then go to comfy-kitchen's kernel


def chunk_rows(m, k, budget):
    """Rows per eager chunk: at most `budget` values and 5/16 of the rows keep its fp32 copy within 0.625x of a bf16
    activation, leaving 0.125x for the per-row scale temporaries (about 30 bytes a row: enough for K >= 48)."""
    return max(1, min(m * 5 // 16, budget // max(1, k)))


def out_of_memory(e):
    """Whether `e` is memory running out, as ComfyUI's is_oom tells (attention/dispatch.py has the same test): that goes
    up as it is, since ComfyUI then frees models and the next run may fit; any other error of a kernel means it
    cannot run here. (attention/ and quant/ import nothing of each other.)"""
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def first_line(e):
    return (str(e).strip() or "no message").splitlines()[0]


class KernelFailed(RuntimeError):
    """The Triton kernel could not run here. It compiles on the first call of each specialization (dtype, tile), and
    that can fail in ways that are no RuntimeError (Triton's CompilationError; CalledProcessError where its launcher
    finds no working C compiler)."""


@functools.cache
def fused_available():
    try:
        from . import act_quant_triton  # noqa: F401
    except Exception as e:  # ImportError, or a triton whose API this kernel does not fit
        return False, f"Triton not importable ({type(e).__name__}): no fused activation quantization"
    return True, None


def _use_fused(x):
    return x.is_cuda and fused_available()[0] and not _triton_failed


@functools.cache
def kitchen_per_tensor():
    """comfy-kitchen's per-tensor FP8 CUDA kernel, which ComfyUI's own FP8 layers quantize with: one read of the
    activation, and no Triton, which Windows installs often lack. None where comfy-kitchen or its CUDA backend is
    missing, or off (ComfyUI turns it off under a torch built with CUDA < 13). Its --use_fast_math division (within 2
    ulp) may round a value that close to a boundary to the neighbouring fp8 value where the eager chunks and the Triton
    kernel agree bit for bit; its clamp turns NaN into -448, where they keep it (as in ComfyUI's own FP8 layers)."""
    try:
        from comfy_kitchen import registry
        return registry.get_implementation("quantize_per_tensor_fp8", backend="cuda")
    except Exception:   # not installed, no CUDA backend (or disabled), or another version's API
        return None


def kitchen_missing():
    """Why kitchen_per_tensor() is None, for the loader's report: what would give FP8 products without Triton."""
    try:
        import comfy_kitchen
        cuda = comfy_kitchen.list_backends().get("cuda", {})
    except Exception as e:
        return f"comfy-kitchen not importable ({type(e).__name__})"
    if cuda.get("disabled"):
        return "comfy-kitchen's CUDA kernels are off: ComfyUI turns them off under a PyTorch built for CUDA < 13"
    return f"no comfy-kitchen CUDA kernels ({cuda.get('unavailable_reason') or 'not registered'})"


def _kitchen_takes(x):
    # Its kernel moves 16 values at a time, 16-byte aligned, with no tail: rows of 16k values keep every row block so.
    return kitchen_per_tensor() is not None and x.is_contiguous() and x.data_ptr() % 16 == 0 and x.shape[1] % 16 == 0


def kitchen_quantize(kernel, x, scale):
    """x [M, K] quantized by comfy-kitchen's per-tensor `kernel` with our scale [1, 1] (a scalar to it), in row blocks
    of at most KITCHEN_VALUES values (one scale for all of them: the blocks give the same bytes)."""
    rows, s = max(1, KITCHEN_VALUES // max(1, x.shape[1])), scale.reshape(())
    try:
        if x.shape[0] <= rows:
            return kernel(x, s, E4M3)
        q = torch.empty(x.shape, dtype=E4M3, device=x.device)
        for i in range(0, x.shape[0], rows):
            q[i:i + rows] = kernel(x[i:i + rows], s, E4M3)
        return q
    except Exception as e:
        if out_of_memory(e):
            raise
        raise KernelFailed(f"comfy-kitchen's FP8 quantization failed ({type(e).__name__}: {first_line(e)})") from e


def tensor_scale(x):
    """The one activation scale of a per-tensor plan, [1, 1] fp32: absmax / 448 (1 for all zeros)."""
    return absmax_scale(absmax(x), E4M3).reshape(1, 1)


def quantize(x, per_tensor=False, fused=None):
    """x [M, K] fp32/bf16/fp16 -> (q [M, K] e4m3fn, scale fp32 [M, 1], or [1, 1] with `per_tensor`).
    fused: Triton kernel (True), eager chunks (False), or the kernel where it runs (None; per-tensor scales on a GPU
    without Triton: comfy-kitchen's, where it is installed with its CUDA backend)."""
    given = tensor_scale(x) if per_tensor else None
    if _use_fused(x) if fused is None else fused:
        from .act_quant_triton import quantize_rows
        try:
            return quantize_rows(x, given)
        except Exception as e:
            if out_of_memory(e):
                raise
            why = f"the Triton activation quantization failed ({type(e).__name__}: {first_line(e)})"
            if not (fused is None and per_tensor and _kitchen_takes(x)):
                raise KernelFailed(why) from e
            # e.g. triton-windows that cannot compile (README): FP8 products go on, not upcast
            _triton_failed.append(why)
            logging.getLogger("skyreels_fp8").warning(
                f"FP8 products: {why}; comfy-kitchen's CUDA kernel quantizes the activations from now on")
    if fused is None and per_tensor and x.is_cuda and _kitchen_takes(x):
        return kitchen_quantize(kitchen_per_tensor(), x, given), given
    return _quantize_eager(x, given)


def _quantize_eager(x, given):
    m, k = x.shape
    q = torch.empty((m, k), dtype=E4M3, device=x.device)
    scale = given if given is not None else torch.empty((m, 1), dtype=torch.float32, device=x.device)
    rows = chunk_rows(m, k, CHUNK_VALUES.get(x.device.type, CHUNK_VALUES["cuda"]))
    for i in range(0, m, rows):
        xc = x[i:i + rows]
        s = given if given is not None else scale[i:i + rows].copy_(absmax_scale(absmax(xc, dim=1), E4M3))
        # The only chunk-sized temporary: an fp32 copy (also for fp32 input, which must not be divided in place).
        q[i:i + rows].copy_(saturate(xc.to(torch.float32, copy=True), s, E4M3))
    return q, scale


class _State(threading.local):
    # The one-entry cache, per thread: a scope opened by one thread's attention must not vouch for another's tensors.
    entry = None   # (weakref to the input, key, (q, scale))
    depth = 0      # open shared-input scopes


_state = _State()


def enter_shared_scope():
    """Open a scope whose code writes no Linear input in place between the Linears that read it: only there can a
    repeated inference tensor (which has no version counter) reuse its quantization."""
    _state.depth += 1


def exit_shared_scope():
    _state.depth -= 1
    forget()


def close_scopes():
    """At each model call: ComfyUI's Cancel raises a BaseException, which torch's always_call forward hooks do not
    see, so a scope it cut short stays open (every later inference tensor would count as shared) until here."""
    _state.depth = 0
    forget()


def forget():
    _state.entry = None


def _key(x, per_tensor):
    if x.is_inference() and not _state.depth:
        return None
    version = None if x.is_inference() else x._version   # bumped by every in-place write
    return x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device, version, per_tensor


def quantize_input(x, per_tensor=False):
    """`quantize(x.reshape(-1, K))`, or the previous result if x is the same live tensor object (a weak reference:
    a new tensor at a freed one's address never matches) with the same `_key`."""
    key = _key(x, per_tensor)
    entry = _state.entry
    if key is not None and entry is not None and entry[0]() is x and entry[1] == key:
        return entry[2]
    _state.entry = None   # free the previous activation before making the next
    result = quantize(x.reshape(-1, x.shape[-1]), per_tensor)
    if key is not None:
        def drop(ref):   # x freed: nothing can reuse its activation, so don't hold it
            if _state.entry is not None and _state.entry[0] is ref:
                _state.entry = None
        _state.entry = (weakref.ref(x, drop), key, result)
    return result
