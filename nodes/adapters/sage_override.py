"""Patch SageAttention's override: 8-bit attention for one MODEL, through the host's per-model attention override.

The override sees every attention call of the model (Wan: self-attention, text cross-attention, I2V image
cross-attention). The 8-bit backend is decided once per device (attention.dispatch.choose). "Exact" is the host's
PyTorch attention from its registry, never its global choice, which is itself 8-bit under --use-sage-attention.
Nothing global is patched: the input MODEL keeps its attention.
"""
import inspect
import logging

from comfy.ldm.modules import attention as host_attention

from ...attention import sage_attention
from ...attention.dispatch import Installed, canonical, choose, device_capability, installed_packages
from ...attention.guard import StepIndex, all_finite, guard_cosine, phase
from ...attention.sage import kernel_unavailable, log_once

HOST_NAMES = {"comfy-kitchen int8": "comfy_kitchen_int8", "sage3": "sage3"}  # our backend: the host's registry name


def host_function(name):
    """The host's registered attention function `name` without its override hook (this override is what that hook
    calls, so going through it again would loop), or None where the host did not register it."""
    fn = host_attention.get_attention_function(name, None)
    return None if fn is None else inspect.unwrap(fn)


PYTORCH = host_function("pytorch")  # "exact" everywhere in this node


def host_installed():
    version, triton = installed_packages()
    return Installed(version, triton, kitchen_int8=host_function("comfy_kitchen_int8") is not None,
                     sage3=host_function("sage3") is not None)


def as_hnd(q, k, v, heads, skip_reshape):
    """[B, heads, L, D] views of the host's call: it passes [B, L, heads * D], or [B, heads, L, D] with skip_reshape."""
    if skip_reshape:
        return q, k, v
    return tuple(t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))


def to_output(out, layout, skip_output_reshape):
    """[B, heads, L, D] if skip_output_reshape, else [B, L, heads * D]."""
    if skip_output_reshape:
        return out if layout == "HND" else out.transpose(1, 2)
    nhd = out.transpose(1, 2) if layout == "HND" else out
    return nhd.reshape(nhd.shape[0], nhd.shape[1], -1)


def ours(backend, q, k, v, heads, skip_reshape, skip_output_reshape):
    """This pack's sage_attention in the host's own layout: [B, L, heads * D] is viewed as NHD, so neither the
    inputs nor the output are copied."""
    layout = "HND" if skip_reshape else "NHD"
    if not skip_reshape:
        q, k, v = (t.view(t.shape[0], t.shape[1], heads, -1) for t in (q, k, v))
    return to_output(sage_attention(q, k, v, layout=layout, mode=backend), layout, skip_output_reshape)


def exact_hnd(q, k, v):
    return PYTORCH(q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True)


def eight_bit_hnd(backend):
    """The backend as a function of [B, heads, L, D] tensors returning the same layout."""
    if backend in HOST_NAMES:
        fn = host_function(HOST_NAMES[backend])
        return lambda q, k, v: fn(q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True)
    return lambda q, k, v: sage_attention(q, k, v, layout="HND", mode=backend)


class SageOverride:
    """Callable installed as transformer_options["optimized_attention_override"]."""

    def __init__(self, mode, exact_first_blocks=0, exact_last_blocks=0, exact_first_steps=0, guard=0.995):
        self.mode, self.guard = canonical(mode), guard
        self.first, self.last, self.steps = exact_first_blocks, exact_last_blocks, exact_first_steps
        self.backends = {}         # device: (backend, why), decided on the device's first call
        self.checked = {}          # site: guard phase of its last check
        self.exact_sites, self.logged, self.ran = set(), set(), set()
        self.counts = {"sage": 0, "exact": 0}
        self.step_index = StepIndex()

    def __deepcopy__(self, memo):
        return self  # model options are deep-copied on clone; the guard's findings stay shared on purpose

    def _log_once(self, key, message, level=logging.WARNING):
        log_once(key, f"Patch SageAttention: {message}", level, seen=self.logged)   # once per patched model

    def backend(self, device):
        if device not in self.backends:
            backend, why = choose(self.mode, device.type, device_capability(device), host_installed())
            if backend != "exact":
                self._log_once(("backend", device), f"{self.mode}: {why}", logging.INFO)
            elif self.mode != "disabled":
                self._log_once(("backend", device), f"{why}; attention stays exact (ComfyUI's PyTorch attention)")
            self.backends[device] = backend, why
        return self.backends[device][0]

    def label(self, backend):
        """What ran, for the run report."""
        if backend == "sageattention":
            return f"sageattention {installed_packages()[0]}"
        return "this pack's PyTorch SageAttention" if backend == "reference" else backend

    def _exact_reason(self, backend, device, mask, to, kwargs):
        if backend == "exact":
            return "no 8-bit backend here"
        if mask is not None:
            return "mask"  # Wan's attention has none
        if "scale" in kwargs or kwargs.get("enable_gqa"):
            return "a call with its own scale or grouped heads"  # not a Wan call; the host handles it
        if kwargs.get("low_precision_attention", True) is False:
            return "the model asks for full precision here"  # Wan I2V image cross-attention
        block, total = to.get("block_index"), to.get("total_blocks")
        if block is not None and (block < self.first or (total is not None and block >= total - self.last)):
            return "kept exact block"
        if self.steps and self.step_index(to)[0] < self.steps:
            return "kept exact step"
        if backend == "sageattention" and kernel_unavailable(device):  # the kernels failed at run time
            return "kernels failed"
        return None

    def _check_due(self, site, to):
        """The guard checks a site on its first call and again in each later phase of the sampling."""
        now = phase(*self.step_index(to))
        due = self.checked.get(site) != now
        self.checked[site] = now
        return due

    def _go_exact(self, site, what, exact):
        self.exact_sites.add(site)
        self._log_once(("guard", site), f"8-bit attention at block {site[0]} (q {site[1]}, k {site[2]}) {what}: "
                                        "exact attention there")
        return exact()

    def __call__(self, func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        # `func`, the host's global attention, goes unused: exact means its PyTorch attention (see the docstring).
        to = kwargs.get("transformer_options") or {}
        options = dict(mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                       skip_output_reshape=skip_output_reshape, **kwargs)

        def exact():
            self.counts["exact"] += 1
            return PYTORCH(q, k, v, heads, **options)

        backend = self.backend(q.device)
        if self._exact_reason(backend, q.device, mask, to, kwargs):
            return exact()
        hnd = as_hnd(q, k, v, heads, skip_reshape)
        site = (to.get("block_index"), tuple(hnd[0].shape), tuple(hnd[1].shape))
        if site in self.exact_sites:
            return exact()
        if self.guard > 0 and self._check_due(site, to):
            cos = guard_cosine(eight_bit_hnd(backend), exact_hnd, *hnd)
            if cos < self.guard:
                return self._go_exact(site, f"is off by cosine {cos:.4f} < {self.guard}", exact)
        if backend in HOST_NAMES:
            out = host_function(HOST_NAMES[backend])(q, k, v, heads, **options)
        else:
            out = ours(backend, q, k, v, heads, skip_reshape, skip_output_reshape)
        if self.guard > 0 and not all_finite(out):
            return self._go_exact(site, "gave NaN or Inf", exact)
        self.counts["sage"] += 1
        self.ran.add(self.label(backend))
        return out
