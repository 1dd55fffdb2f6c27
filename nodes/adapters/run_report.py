"""Sample Video's report: time per model call, peak memory, and the FP8 and attention paths that actually ran."""
import sys
import time
from collections import Counter

import psutil
import torch

from ...quant import fp8
from . import fp8_ops
from .sage_override import describe


def weights_summary(model):
    """("Linear weights: 400 float8_e4m3fn (per-channel), 11 bfloat16", fp8 matmul on, any fp8 weights)."""
    modules = model.model.diffusion_model.modules()
    linears = [m for m in modules if "Linear" in type(m).__name__ and hasattr(m, "weight")]
    kinds = Counter(_kind(m.weight) for m in linears)
    parts = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    fp8_matmul = any(getattr(type(m), "skyreels_fp8_matmul", None) for m in linears)
    return f"Linear weights: {parts}", fp8_matmul, any(k.startswith("float8") for k in kinds)


def patches_lines(model):
    """Lines counting the weights LoRAs and model merges (ComfyUI's ModelMerge* add each weight as a list) patch: a LoRA
    whose keys ComfyUI did not load is only logged, so its missing line shows it here. Load LoRA (Bypass)'s adapters,
    injected into the layers rather than patched into the weights, have a line of their own."""
    merged = sum(1 for entries in model.patches.values() if any(isinstance(e[1], list) for e in entries))
    lora = sum(1 for entries in model.patches.values() if any(not isinstance(e[1], list) for e in entries))
    lines = [f"weight patches (LoRAs): {lora} weights"] if lora else []
    lines += [f"weight patches (model merge): {merged} weights"] if merged else []
    if getattr(model, "injections", {}).get("bypass_lora"):
        lines.append("LoRAs in bypass mode (Load LoRA (Bypass) (For debugging)): applied beside the weights")
    return lines


def _kind(w):
    gguf = getattr(w, "tensor_type", None)          # ComfyUI-GGUF's GGMLTensor: a GGMLQuantizationType
    if gguf is not None:
        return f"{getattr(gguf, 'name', gguf)} (GGUF)"
    qdata = getattr(w, "_qdata", None)
    if qdata is None:
        return str(w.dtype).replace("torch.", "")
    layout = getattr(w, "_layout_cls", None) or getattr(w, "layout_type", None)
    name = layout if isinstance(layout, str) else getattr(layout, "__name__", str(layout))
    if name == fp8_ops.LAYOUT or name.startswith("TensorCoreFP8"):   # FP8 with one scale, or one per row
        name = "per-channel" if w._params.scale.dim() > 0 and w._params.scale.numel() > 1 else "per-tensor"
    return f"{qdata.dtype}".replace("torch.", "") + f" ({name})"


def clock(device):
    """time.perf_counter() once the work queued on `device` is done (CUDA runs it asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Meter:
    """Wall time and peak memory of a run: CUDA peak allocation on a GPU (and the weights ComfyUI's Dynamic VRAM holds
    for `model`, which PyTorch's allocator does not count), the process's peak RSS on CPU."""

    def __init__(self, device, model=None):
        self.device, self.model = device, model
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.rss_before = psutil.Process().memory_info().rss / 2**20
        try:   # Linux: restart the process's peak (VmHWM) from its current RSS; elsewhere it runs from the start
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.peak_reset = True
        except OSError:
            self.peak_reset = False
        self.stats_before, self.reasons_before = dict(fp8.stats), dict(fp8.fallback_reasons)
        self.start = clock(device)

    def finish(self):
        self.seconds = clock(self.device) - self.start
        self.memory = self._cuda_peak() if self.cuda else self._cpu_peak()
        self.products = {k: fp8.stats[k] - self.stats_before[k] for k in fp8.stats}
        self.fallback_reasons = [r for r, n in fp8.fallback_reasons.items() if n > self.reasons_before.get(r, 0)]
        return self

    def _cuda_peak(self):
        line = f"peak VRAM {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f} MiB"
        # Under Dynamic VRAM comfy-aimdo maps the weights' memory itself, so max_memory_allocated leaves it out; the
        # host's loaded_size() is it plus the small weights it loads the plain way (those PyTorch counts).
        if self.model is not None and getattr(self.model, "is_dynamic", lambda: False)():   # older hosts: no is_dynamic
            held = self.model.loaded_size() - self.model.model.model_loaded_weight_memory
            line += (f" + {held / 2**20:.0f} MiB of weights held by ComfyUI's Dynamic VRAM at the end (outside "
                     "PyTorch's allocator)")
        return line

    def _cpu_peak(self):
        before = f"{self.rss_before:.0f} MiB before the run"
        peak = _peak_rss_mib()
        if peak is None:
            return f"peak RSS n/a (this OS does not report it; {before})"
        since = "process" if self.peak_reset else "process, since ComfyUI started"
        return f"peak RSS {peak:.0f} MiB ({since}; {before})"


def _peak_rss_mib():
    """The process's peak resident memory: VmHWM on Linux, the peak working set on Windows, ru_maxrss on macOS."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = getattr(psutil.Process().memory_info(), "peak_wset", None)   # Windows only
    if peak is not None:
        return peak / 2**20
    try:
        import resource          # macOS and the BSDs (Windows has none)
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024       # bytes on macOS, KiB elsewhere


def matmul_summary(fp8_matmul, has_fp8, products, compute_dtype, reasons=()):
    dtype = str(compute_dtype).replace("torch.", "")
    if not has_fp8:
        return f"matmul: {dtype}"
    if not fp8_matmul:
        return f"matmul: fp8 weights upcast to {dtype}"
    done, fell, why = products["w8a8"], products["fallback"], "; ".join(reasons)
    if fell and not done:
        return f"matmul: fp8 unavailable here, upcast ({fell} products: {why})"
    if not done:    # ComfyUI dequantized every weight first: it does for a compute dtype other than the loader's
        return (f"matmul: fp8 weights upcast to {dtype} (no FP8 product ran: ComfyUI dequantized the weights "
                "before them, as it does after e.g. ModelComputeDtype)")
    return f"matmul: fp8 w8a8 ({done} products" + (f", {fell} upcast: {why})" if fell else ")")


def _sage(model):
    """Patch SageAttention's override, also under the sequence-parallel one (which keeps it as `inner`)."""
    override = model.model_options.get("transformer_options", {}).get("optimized_attention_override")
    return getattr(override, "inner", override)


def attention_summary(model, counts_before):
    """What the Patch SageAttention override did during the run, or whose attention ran if it is not set."""
    override = _sage(model)
    counts = getattr(override, "counts", None)
    if override is None:
        return "attention: ComfyUI's (no Patch SageAttention)"
    if counts is None:      # e.g. KJNodes' Patch Sage Attention KJ: the host runs one override, the last applied
        return f"attention: another node's override, {describe(override)} (not Patch SageAttention; not counted)"
    sage, exact = (counts[k] - counts_before.get(k, 0) for k in ("sage", "exact"))
    ran = sorted(getattr(override, "ran", ()))
    backends = f" ({', '.join(ran)})" if ran else ""
    bits = "FP4" if ran == ["sage3"] else "8-bit"      # sage3's kernels quantize to FP4
    cudnn = " (cuDNN first)" if exact and getattr(override, "cudnn_first", False) else ""
    return f"attention: {getattr(override, 'mode', '?')} - {sage} calls {bits}{backends}, {exact} exact{cudnn}"


def attention_counts(model):
    return dict(getattr(_sage(model), "counts", {}) or {})


def bypassed_by(model):
    """Who replaced the model's forward pass so that no attention call of the last sampling pass reached Patch
    SageAttention (foreign_forward.SageWatch), or []."""
    return getattr(_sage(model), "bypassed_by", [])
