"""Sequence parallelism for the host's Wan model over a torch.distributed group (one process per device).

Every rank runs every transformer block on its share of the tokens: whole latent frames, the sequence padded at
the end with empty frames to split evenly. Self-attention sees the whole sequence through Ulysses all-to-alls
(`attention.ulysses`); text and image cross-attention need no exchange (their keys are the same on every rank);
the last block gathers the tokens back, so the head and everything after it run as on one device. Whole frames keep
the per-frame modulation of Diffusion Forcing aligned with the tokens it belongs to.

Installed on a clone with the host's own patch points: a replacement for every block ("dit", "double_block") and
the attention override, which wraps the one already there (Patch SageAttention's), so 8-bit attention still runs
on each rank's heads.
"""
import torch
import torch.distributed as dist
import comfy.samplers
from comfy.patcher_extension import WrappersMP

from ..attention.ulysses import ulysses_attention

KEY = "skyreels_sequence_parallel"


class Shards:
    """Where this rank's tokens sit in one forward pass."""

    def __init__(self, grid, world, rank):
        self.frames, self.per_frame = grid[0], grid[1] * grid[2]
        self.local_frames = -(-self.frames // world)
        self.length = self.frames * self.per_frame
        self.padded = self.local_frames * world * self.per_frame
        self.start = rank * self.local_frames * self.per_frame
        self.stop = self.start + self.local_frames * self.per_frame

    def tokens(self, t, dim=1):
        """This rank's slice of a per-token tensor, padded with zeros past the real sequence."""
        if t.shape[dim] != self.length:
            return t                                  # not per token (e.g. broadcast over the sequence)
        if self.padded > self.length:
            pad = list(t.shape)
            pad[dim] = self.padded - self.length
            t = torch.cat([t, t.new_zeros(pad)], dim=dim)
        return t.narrow(dim, self.start, self.stop - self.start)

    def frames_of(self, e):
        """This rank's frames of a per-frame modulation [B, F, 6, C] (one frame = shared by all: unchanged)."""
        if e.ndim < 4 or e.shape[1] == 1:
            return e
        first = self.start // self.per_frame
        idx = torch.arange(first, first + self.local_frames, device=e.device).clamp(max=self.frames - 1)
        return e.index_select(1, idx)


class SequenceParallel:
    def __init__(self, group=None):
        self.group = group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.shards = None
        self.in_self_attention = False
        self.inner = None

    def __deepcopy__(self, memo):
        return self   # model options are deep-copied on clone; the process group cannot be, and need not be

    def __call__(self, *args, **kwargs):
        return self.attention(*args, **kwargs)

    # --- blocks ---

    def block(self, args, extra):
        to = args["transformer_options"]
        index, total = to["block_index"], to["total_blocks"]
        x = args["img"]
        if index == 0:
            self.shards = Shards(to["grid_sizes"], self.world, self.rank)
            if x.shape[1] != self.shards.length:
                raise ValueError("sequence parallel: this model adds tokens beyond the video's (reference or context "
                                 "latents); not supported")
            if to.get("optimized_attention_override") is not self:
                raise ValueError("sequence parallel: another attention override was set after it (apply Patch "
                                 "SageAttention before)")
            x = self.shards.tokens(x)
        s = self.shards
        out = extra["original_block"]({"img": x, "txt": args["txt"], "vec": s.frames_of(args["vec"]),
                                       "pe": s.tokens(args["pe"]), "transformer_options": to})
        x = out["img"]
        if index == total - 1:
            parts = [torch.empty_like(x) for _ in range(self.world)]
            dist.all_gather(parts, x.contiguous(), group=self.group)
            x = torch.cat(parts, dim=1)[:, :s.length]
        return {"img": x}

    # --- attention ---

    def attention(self, func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                  skip_output_reshape=False, **kwargs):
        def attend(qq, kk, vv, n):
            if self.inner is not None:
                return self.inner(func, qq, kk, vv, n, mask=mask, attn_precision=attn_precision,
                                  skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape, **kwargs)
            return func(qq, kk, vv, n, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                        skip_output_reshape=skip_output_reshape, **kwargs)

        if not self.in_self_attention:
            return attend(q, k, v, heads)
        if skip_reshape or skip_output_reshape or mask is not None:
            raise ValueError("sequence parallel: unexpected self-attention call layout")
        b, n = q.shape[0], heads // self.world

        def whole(qq, kk, vv):   # [B, L, H/P, D] -> the host's layout and back
            out = attend(*(t.reshape(b, t.shape[1], -1) for t in (qq, kk, vv)), n)
            return out.view(b, out.shape[1], n, -1)

        split = [t.view(b, t.shape[1], heads, -1) for t in (q, k, v)]
        out = ulysses_attention(*split, whole, self.shards.length, self.group)
        return out.reshape(b, out.shape[1], -1)

    def _around_model(self, executor, *args, **kwargs):
        """During a forward pass: mark self-attention calls (hooks on every block's self_attn)."""
        model = executor.class_obj
        hooks = []
        for block in model.blocks:
            hooks.append(block.self_attn.register_forward_pre_hook(lambda *a: setattr(self, "in_self_attention", True)))
            hooks.append(block.self_attn.register_forward_hook(lambda *a: setattr(self, "in_self_attention", False)))
        try:
            return executor(*args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
            self.in_self_attention, self.shards = False, None


def _same_batching(args):
    """Every rank must run the same forward passes. The host batches cond and uncond (and conditioning entries)
    by the device's free memory, which differs between ranks: here it always batches them."""
    patcher = args["model"].current_patcher
    patcher.get_free_memory = lambda device=None: float("inf")   # this instance, for this call only
    try:
        return comfy.samplers.calc_cond_batch(args["model"], args["conds"], args["input"], args["sigma"],
                                              args["model_options"])
    finally:
        del patcher.get_free_memory


def patch(model, group=None):
    """A clone of `model` (a ModelPatcher) whose forward passes run sequence-parallel over `group`."""
    replaced = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    if replaced:
        raise ValueError("sequence parallel: this MODEL already replaces transformer blocks (another patch); not "
                         "supported")
    sp = SequenceParallel(group)
    m = model.clone()
    m.model_options["sampler_calc_cond_batch_function"] = _same_batching
    to = m.model_options.setdefault("transformer_options", {})
    sp.inner = to.get("optimized_attention_override")
    to["optimized_attention_override"] = sp
    for i in range(len(m.model.diffusion_model.blocks)):
        m.set_model_patch_replace(sp.block, "dit", "double_block", i)
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, KEY, sp._around_model)
    return m
