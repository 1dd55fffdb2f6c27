"""Patch SageAttention's override: 8-bit attention for one MODEL's every attention call, through the host's per-model
attention override (nothing global is patched). "Exact" is the host's PyTorch attention from its registry, never its
global choice, which is itself 8-bit under --use-sage-attention."""
import contextlib
import functools
import inspect
import logging
import os
import threading

import comfy.ops
import folder_paths
import torch
from comfy.ldm.modules import attention as host_attention

from ...attention.dispatch import (Installed, canonical, choose, device_capability, installed_packages, out_of_memory,
                                  pytorch_prefers_cudnn)
from ...attention.guard import StepIndex, all_finite, guard_cosine, phase
from ...attention.sage import KernelsUnavailable, kernel_unavailable, log_once, miscounted_padding, sage_attention
from ...quant.act_quant import first_line

KEY = "skyreels_sage"   # the MODEL's outer-sample wrapper: one guard pass per sampling pass (SageOverride.new_pass)
HOST_KERNELS = ("comfy-kitchen int8", "sage3")   # backends whose kernels come with the host (registered by it)
# Backends whose kernels failed at run time in this process (a sageattention wheel built for another torch, a driver
# too old for comfy-kitchen's CUDA build, a Triton that cannot compile): backend -> why. They stay failed.
FAILED = {}


def host_function(name):
    """The host's registered attention function `name` without its override hook (this override is what that hook
    calls, so going through it again would loop), or None where the host did not register it."""
    fn = host_attention.get_attention_function(name, None)
    return None if fn is None else inspect.unwrap(fn)


PYTORCH = host_function("pytorch")  # "exact" everywhere in this node


_ORDER = threading.Lock()
_reordered = {"calls": 0, "saved": None}    # exact calls inside the reorder (threads: core's multi-GPU CFG split)


@contextlib.contextmanager
def sdpa_cudnn_first(device):
    """Yields whether this exact call runs PyTorch's cuDNN attention first: on a GPU where PyTorch's own order does
    (dispatch.pytorch_prefers_cudnn), where ComfyUI's order (FlashAttention-2 first) is reordered for the call. The
    host reads its list at each call, inside its own sdpa_kernel context (which overrides any opened around it), so
    the list itself is reordered while any such call runs and restored by the last one out. Without the host's list,
    its attention runs PyTorch's own order, cuDNN first already."""
    if not pytorch_prefers_cudnn(device):
        yield False
        return
    order = getattr(comfy.ops, "SDPA_BACKEND_PRIORITY", None)
    with _ORDER:
        if order and not _reordered["calls"]:
            _reordered["saved"] = list(order)
            order[:] = sorted(order, key=lambda backend: backend.name != "CUDNN_ATTENTION")  # one assignment
        _reordered["calls"] += 1
    try:
        yield True
    finally:
        with _ORDER:
            _reordered["calls"] -= 1
            if order and not _reordered["calls"]:
                order[:] = _reordered["saved"]


def describe(override):
    """Who set an attention override that is not ours, for a message: "attention_override_sage (PathchSageAttentionKJ,
    ComfyUI-KJNodes)", the function (or class) and, where it is a closure, the class that made it, and its pack."""
    if isinstance(override, functools.partial):
        override = override.func
    qualname = getattr(override, "__qualname__", None) or type(override).__qualname__
    parts = qualname.split(".<locals>.")
    maker = [parts[0].split(".")[0]] if len(parts) > 1 else []
    return f"{parts[-1]} ({', '.join(maker + [_pack(getattr(override, '__func__', override))])})"


def _pack(obj):
    """The custom node pack (its folder in one of ComfyUI's custom_nodes folders) that defines `obj`: the host
    imports a pack under its folder's whole path, with dots as "_x_", so the module's name is no name to show."""
    try:
        path = os.path.abspath(inspect.getfile(obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)))
    except TypeError:
        path = ""
    for root in map(os.path.abspath, folder_paths.get_folder_paths("custom_nodes")):
        if os.path.normcase(path).startswith(os.path.normcase(os.path.join(root, ""))):
            return os.path.splitext(os.path.relpath(path, root).split(os.sep)[0])[0]
    module = getattr(obj, "__module__", None) or type(obj).__module__
    return os.path.basename(module.split(".")[0]).replace("_x_", ".")


def host_installed():
    return Installed(*installed_packages(), kitchen_int8=host_function("comfy_kitchen_int8") is not None,
                     sage3=host_function("sage3") is not None, failed=tuple(FAILED.items()))


def ours(backend, q, k, v, skip_reshape, skip_output_reshape):
    """This pack's sage_attention on the host's own layout (no copy of the inputs or output), returning
    [B, heads, L, D] if skip_output_reshape, else [B, L, heads * D]."""
    out = sage_attention(q, k, v, layout="HND" if skip_reshape else "NHD", mode=backend)
    if skip_reshape != skip_output_reshape:
        out = out.transpose(1, 2)
    return out if skip_output_reshape else out.reshape(out.shape[0], out.shape[1], -1)


def sage3(q, k, v, skip_output_reshape):
    """The host's sage3 kernel on [B, heads, L, D], as its sage3 attention calls it, but not through that function:
    where the kernel fails it runs PyTorch attention and logs, and the report would count those calls FP4."""
    out = host_attention.sageattn3_blackwell(*(t.contiguous() for t in (q, k, v)), is_causal=False)
    return out if skip_output_reshape else out.transpose(1, 2).flatten(2)


def sage3_takes(q):
    """Whether the host's sage3 attention runs its kernel for these queries ([B, heads, L, D]); else it is exact."""
    return q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] < 256 and q.shape[2] > 1024


def hnd(fn):
    """A host attention function as a function of [B, heads, L, D] tensors returning the same layout."""
    return lambda q, k, v: fn(q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True)


class SageOverride:
    """Callable installed as transformer_options["optimized_attention_override"]."""

    def __init__(self, mode, exact_first_blocks=0, exact_last_blocks=0, exact_first_steps=0, guard=0.995):
        self.mode, self.guard = canonical(mode), guard
        self.first, self.last, self.steps = exact_first_blocks, exact_last_blocks, exact_first_steps
        self.backends = {}         # device: (backend, why), decided on the device's first call
        self.checked = {}          # site: guard phase of its last check
        self.exact_sites, self.logged, self.ran = set(), set(), set()
        self.cudnn_first = False    # exact attention ran with cuDNN's kernels first
        self.counts = {"sage": 0, "exact": 0}
        self.step_index = StepIndex()
        self.bypassed_by = []      # set after each sampling pass by foreign_forward.SageWatch

    def new_pass(self, executor, *args, **kwargs):
        """The MODEL's outer-sample wrapper: the guard's verdicts and check phases hold for one sampling pass (a
        sampler run; each Diffusion Forcing window is one). The next, also after a cancelled one, checks every site
        afresh, so a seed gives the same video whatever ran before it."""
        self.exact_sites.clear()
        self.checked.clear()
        patcher = getattr(executor.class_obj, "model_patcher", None)    # the guider's: where this pass starts
        sampling = patcher.get_model_object("model_sampling") if patcher is not None else None
        self.step_index.grid = getattr(sampling, "sigmas", None)
        return executor(*args, **kwargs)

    def __deepcopy__(self, memo):
        return self  # model options are deep-copied on clone; the guard's findings (per pass) stay shared on purpose

    def _log_once(self, key, message, level=logging.WARNING):
        log_once(key, f"Patch SageAttention: {message}", level, seen=self.logged)   # once per patched model

    def backend(self, device):
        entry = self.backends.get(device)
        # auto picks again where its backend failed since (here, on another GPU, or under another Patch SageAttention)
        if entry is None or self.mode == "auto" and entry[0] in FAILED:
            first = pytorch_prefers_cudnn(device)
            backend, why = choose(self.mode, device.type, device_capability(device), host_installed(), first)
            if backend != "exact":
                self._log_once(("backend", device, backend), f"{self.mode}: {why}", logging.INFO)
            elif self.mode != "disabled":
                # auto's choice on an H100/H200/B200 (cuDNN's attention is the fastest there): news, not a warning
                self._log_once(("backend", device, backend),
                               f"{why}; attention stays exact (ComfyUI's PyTorch attention{', cuDNN first' * first})",
                               logging.INFO if first and self.mode == "auto" else logging.WARNING)
            entry = self.backends[device] = backend, why
        return entry[0]

    def label(self, backend):
        """What ran, for the run report."""
        if backend == "sageattention":
            return f"sageattention {installed_packages()[0]}"
        return "this pack's PyTorch SageAttention" if backend == "reference" else backend

    def _stays_exact(self, backend, device, mask, to, kwargs):
        block, total = to.get("block_index"), to.get("total_blocks")
        return bool(backend == "exact"
                    or mask is not None  # Wan's attention has none
                    or "scale" in kwargs or kwargs.get("enable_gqa")  # not a Wan call; the host handles it
                    or kwargs.get("low_precision_attention", True) is False  # Wan I2V image cross-attention
                    or block is not None and (block < self.first or (total is not None and block >= total - self.last))
                    or self._early_step(to)
                    or backend in FAILED
                    or backend == "sageattention" and kernel_unavailable(device))  # the kernels failed at run time

    def _early_step(self, to):
        """Within exact_first_steps, counted from noise (a pass that continues another had its first steps before)."""
        if not self.steps or self.step_index.continues(to):
            return False
        step, total = self.step_index(to)
        if 0 < total <= self.steps:
            self._log_once(("all steps", total), f"exact_first_steps ({self.steps}) cover all {total} steps of a "
                           "sampling pass (in diffusion forcing: of a window, counted in model calls): its attention "
                           "stays exact")
        return step < self.steps

    def pytorch(self, q, *args, **kwargs):
        """The host's PyTorch attention (exact), cuDNN's kernels first where PyTorch puts them first."""
        with sdpa_cudnn_first(q.device) as reordered:
            if reordered:
                self.cudnn_first = True
            return PYTORCH(q, *args, **kwargs)

    def _check_due(self, site, to):
        """The guard checks a site on its first call and again in each later phase of the sampling."""
        now = phase(*self.step_index(to))
        due = self.checked.get(site) != now
        self.checked[site] = now
        return due

    def _failed(self, backend, why, exact):
        """The backend's kernels failed at run time: this call is exact, and so is every later one, except that
        `auto` picks again without that backend (sageattention 2.x failing falls to comfy-kitchen's int8)."""
        FAILED[backend] = why
        self.checked.clear()    # the guard checks each site afresh with the backend that runs next
        again = ("auto picks again without it" if self.mode == "auto"
                 else "attention stays exact (ComfyUI's PyTorch attention)")
        self._log_once(("failed", backend), f"{why}; {again}")
        return exact()

    def _go_exact(self, site, what, exact):
        self.exact_sites.add(site)
        bits = "FP4" if self.mode == "sage3" else "8-bit"     # auto never picks sage3
        self._log_once(("guard", site), f"{bits} attention at block {site[0]} (q {site[1]}, k {site[2]}) {what}: "
                                        "exact attention there")
        return exact()

    # Under TorchCompileModel this runs eagerly: the guard's checks, the backend choice and the counts are Python
    # state that a compiled graph would freeze at its first call.
    @torch.compiler.disable
    def __call__(self, func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        # `func`, the host's global attention, goes unused: exact means its PyTorch attention (see the docstring).
        to = kwargs.get("transformer_options") or {}
        options = dict(mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                       skip_output_reshape=skip_output_reshape, **kwargs)

        def exact():
            self.counts["exact"] += 1
            return self.pytorch(q, k, v, heads, **options)

        backend = self.backend(q.device)
        if self._stays_exact(backend, q.device, mask, to, kwargs):
            return exact()
        # Views of the host's [B, L, heads * D] as [B, L, heads, D] and [B, heads, L, D] (skip_reshape: the latter)
        native = (q, k, v) if skip_reshape else tuple(t.view(t.shape[0], t.shape[1], heads, -1) for t in (q, k, v))
        as_hnd = native if skip_reshape else tuple(t.transpose(1, 2) for t in native)
        site = (to.get("block_index"), tuple(as_hnd[0].shape), tuple(as_hnd[1].shape))
        if site in self.exact_sites:
            return exact()
        ragged = backend == "sageattention" and miscounted_padding(site[2][2], q.device)
        if ragged:     # counted as exact, which it is
            self._log_once(ragged, ragged)
            return exact()
        if backend == "sage3" and not sage3_takes(as_hnd[0]):    # counted as exact, which it is
            return exact()
        host_fn = host_function("comfy_kitchen_int8") if backend == "comfy-kitchen int8" else None
        try:
            out = (host_fn(q, k, v, heads, **options) if host_fn else sage3(*as_hnd, skip_output_reshape)
                   if backend == "sage3" else ours(backend, *native, skip_reshape, skip_output_reshape))
        except KernelsUnavailable as e:  # they failed in this call (exact from now on) or cannot take these inputs
            if kernel_unavailable(q.device):
                return self._failed(backend, str(e), exact)
            self._log_once(("kernels", q.device, str(e)), f"{e}; attention stays exact (ComfyUI's PyTorch attention)")
            return exact()
        except Exception as e:  # the host's comfy-kitchen / sage3 kernels: never fail the graph for them
            if backend not in HOST_KERNELS or out_of_memory(e):     # (a user's cancel is no Exception: it goes up)
                raise
            return self._failed(backend, f"{self.label(backend)} failed ({type(e).__name__}: {first_line(e)})", exact)
        if self.guard > 0 and not all_finite(out):
            del out     # not held while exact attention runs
            return self._go_exact(site, "gave NaN or Inf", exact)
        if self.guard > 0 and self._check_due(site, to):
            # some rows of this call's own output against exact attention: what is measured is what runs
            cos = guard_cosine(out if skip_output_reshape else out.unflatten(-1, (heads, -1)).transpose(1, 2),
                               hnd(self.pytorch), *as_hnd)
            if cos < self.guard:
                del out
                return self._go_exact(site, f"is off by cosine {cos:.9g} < {self.guard:g}", exact)   # 1 - 3e-8 < 1
        self.counts["sage"] += 1
        self.ran.add(self.label(backend))
        return out
