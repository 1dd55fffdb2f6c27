"""Patch SageAttention: 8-bit attention for one MODEL, through the host's per-model attention override.

The override sees every attention call of the model (Wan: self-attention, text cross-attention, I2V image
cross-attention) with the host's backend as `func`, which is what "exact" means here. Nothing global is patched:
the input MODEL keeps its attention.
"""
import logging

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..attention import kernel_unavailable, sage_attention

log = logging.getLogger("skyreels_fp8")
MODES = ["auto", "sageattn", "reference", "disabled"]
GUARD_HEADS = 2


class SageOverride:
    """Callable installed as transformer_options["optimized_attention_override"]."""

    def __init__(self, mode, exact_first_blocks=0, exact_last_blocks=0, exact_first_steps=0, guard=0.995):
        self.mode, self.guard = mode, guard
        self.first, self.last, self.steps = exact_first_blocks, exact_last_blocks, exact_first_steps
        self.checked, self.exact_sites, self.logged = set(), set(), set()
        self.counts = {"sage": 0, "exact": 0}

    def __deepcopy__(self, memo):
        return self  # model options are deep-copied on clone; the guard's findings stay shared on purpose

    def _log_once(self, key, message):
        if key not in self.logged:
            self.logged.add(key)
            log.warning("Patch SageAttention: %s", message)

    def _exact_reason(self, q, mask, to, kwargs):
        if self.mode == "disabled":
            return "disabled"
        if mask is not None:
            return "mask"
        if "scale" in kwargs or kwargs.get("enable_gqa"):
            return "a call with its own scale or grouped heads"  # not a Wan call; the host handles it
        if kwargs.get("low_precision_attention", True) is False:
            return "the model asks for full precision here"  # Wan I2V image cross-attention
        block, total = to.get("block_index"), to.get("total_blocks")
        if block is not None and (block < self.first or (total is not None and block >= total - self.last)):
            return "kept exact block"
        if self.steps and step_index(to) < self.steps:
            return "kept exact step"
        if self.mode in ("auto", "sageattn"):
            reason = kernel_unavailable(q.device)
            if reason:
                self._log_once(("kernel", reason), f"{reason}; attention stays exact (PyTorch/ComfyUI attention)")
                return reason
        return None

    def __call__(self, func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        to = kwargs.get("transformer_options") or {}
        args = (q, k, v, heads)

        def exact():
            self.counts["exact"] += 1
            return func(*args, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                        skip_output_reshape=skip_output_reshape, **kwargs)

        if self._exact_reason(q, mask, to, kwargs):
            return exact()
        # ComfyUI passes [B, L, heads * D] (our NHD after a view) or, with skip_reshape, [B, heads, L, D] (HND).
        layout = "HND" if skip_reshape else "NHD"
        if not skip_reshape:
            q, k, v = (t.view(t.shape[0], t.shape[1], heads, -1) for t in (q, k, v))
        site = (to.get("block_index"), tuple(q.shape), tuple(k.shape))
        if site in self.exact_sites:
            return exact()
        mode = "reference" if self.mode == "reference" else "sageattn"
        if self.guard > 0 and site not in self.checked:
            self.checked.add(site)
            cos = guard_cosine(q, k, v, layout, mode)
            if cos < self.guard:
                self.exact_sites.add(site)
                self._log_once(("guard", site), f"8-bit attention at block {site[0]} (q {site[1]}, k {site[2]}) is "
                                                f"off by cosine {cos:.4f} < {self.guard}: exact attention there")
                return exact()
        self.counts["sage"] += 1
        out = sage_attention(q, k, v, layout=layout, mode=mode)
        return to_output(out, layout, skip_output_reshape)


def to_output(out, layout, skip_output_reshape):
    """[B, heads, L, D] if skip_output_reshape, else [B, L, heads * D]."""
    if skip_output_reshape:
        return out if layout == "HND" else out.transpose(1, 2)
    nhd = out.transpose(1, 2) if layout == "HND" else out
    return nhd.reshape(nhd.shape[0], nhd.shape[1], -1)


def guard_cosine(q, k, v, layout, mode):
    """Cosine similarity of 8-bit vs exact attention on a few heads of this call."""
    dim = 1 if layout == "HND" else 2
    idx = torch.linspace(0, q.shape[dim] - 1, min(GUARD_HEADS, q.shape[dim])).round().long().to(q.device)
    qs, ks, vs = (t.index_select(dim, idx) for t in (q, k, v))
    a = sage_attention(qs, ks, vs, layout=layout, mode=mode).float()
    e = F.scaled_dot_product_attention(*[(t if layout == "HND" else t.transpose(1, 2)).float() for t in (qs, ks, vs)])
    e = e if layout == "HND" else e.transpose(1, 2)
    if not torch.isfinite(a).all():
        return float("-inf")
    return F.cosine_similarity(a.flatten(), e.flatten(), dim=0).item()


def step_index(to):
    """Index of the current sampling step: Sample Video's count of model calls when it runs the model (for
    Diffusion Forcing: the calls of the current window), else found from this call's sigma in the schedule (the
    host has no step counter); 0 when unknown."""
    if "skyreels_call" in to:
        return to["skyreels_call"]
    sigmas, schedule = to.get("sigmas"), to.get("sample_sigmas")
    if sigmas is None or schedule is None:
        return 0
    return int((schedule.to(sigmas.device) - sigmas.flatten()[0]).abs().argmin())


class PatchSageAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsPatchSageAttention",
            display_name="Patch SageAttention",
            category="SkyReels-V2",
            description="8-bit SageAttention for this model. Falls back to exact attention (with one log line) where "
                        "sageattention is missing or the GPU cannot run it; an accuracy guard keeps any attention "
                        "site that 8-bit gets wrong exact.",
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("mode", options=MODES, default="auto",
                               tooltip="auto/sageattn: the sageattention kernels (exact attention where they cannot "
                                       "run). reference: this pack's PyTorch SageAttention (any device, slow). "
                                       "disabled: exact attention."),
                io.Int.Input("exact_first_blocks", default=0, min=0, max=64, tooltip="Keep exact attention in the "
                                                                                      "first N transformer blocks."),
                io.Int.Input("exact_last_blocks", default=0, min=0, max=64,
                             tooltip="Keep exact attention in the last N transformer blocks."),
                io.Int.Input("exact_first_steps", default=0, min=0, max=1000,
                             tooltip="Keep exact attention during the first N sampling steps."),
                io.Float.Input("guard_threshold", default=0.995, min=0.0, max=1.0, step=0.001,
                               tooltip="First call of each attention site: compare with exact attention on a few "
                                       "heads; below this cosine the site stays exact. 0 turns the guard off."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, mode, exact_first_blocks=0, exact_last_blocks=0, exact_first_steps=0,
                guard_threshold=0.995):
        patched = model.clone()
        override = SageOverride(mode, exact_first_blocks, exact_last_blocks, exact_first_steps, guard_threshold)
        patched.model_options["transformer_options"]["optimized_attention_override"] = override
        return io.NodeOutput(patched)
