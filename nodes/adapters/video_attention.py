"""Self-attention over the whole video for the host's Wan model: block-causal (SkyReels-V2's DF option) and/or
sequence-parallel (`sequence_parallel`). An attention override wrapping the one already there (Patch SageAttention's),
so 8-bit attention still serves every call. The host gives attention no sign of which call is self-attention: forward
hooks on the blocks' self_attn modules mark those calls."""
import functools
import threading

from comfy.patcher_extension import WrappersMP

from ...attention.block_causal import block_causal
from ...attention.usp import usp_attention

KEY = "skyreels_video_attention"
CAUSAL_KEY = "skyreels_causal_frames"   # transformer_options: latent frames per causal block (Sample Video)


class _Pass(threading.local):
    """The current forward pass's state, per thread: core's MultiGPU CFG Split runs each GPU's forward pass in a
    thread of its own, all through this one VideoAttention (shared, not copied). Shared, each thread's hooks marked
    the other's calls: cross-attention went through the causal mask, self-attention went without it."""
    in_self_attention = False
    shards = None          # set by sequence_parallel's first block


class VideoAttention:
    def __init__(self, inner, mesh=None):
        self.inner, self.mesh = inner, mesh
        self.now = _Pass()

    def __deepcopy__(self, memo):
        return self   # shared, never copied, whatever copies the model options (the process groups cannot be)

    def __call__(self, func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        call = func if self.inner is None else functools.partial(self.inner, func)
        options = dict(mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                       skip_output_reshape=skip_output_reshape, **kwargs)
        to = kwargs.get("transformer_options") or {}
        causal = to.get(CAUSAL_KEY)
        if not self.now.in_self_attention or (self.mesh is None and not causal):
            return call(q, k, v, heads, **options)
        if skip_reshape or skip_output_reshape or mask is not None:
            raise ValueError("video attention: unexpected self-attention call layout")
        b = q.shape[0]
        n = heads // (self.mesh.ulysses if self.mesh else 1)

        def whole(qq, kk, vv, q_start=0):   # [B, L, n, D] -> the host's layout and back
            if causal:
                grid = to["grid_sizes"]
                return block_causal(qq, kk, vv, plain, causal * grid[1] * grid[2], q_start)
            return plain(qq, kk, vv)

        def plain(qq, kk, vv):
            out = call(*(t.reshape(b, t.shape[1], -1) for t in (qq, kk, vv)), n, **options)
            return out.view(b, out.shape[1], n, -1)

        split = [t.view(b, t.shape[1], heads, -1) for t in (q, k, v)]
        out = whole(*split) if self.mesh is None else usp_attention(*split, whole, self.now.shards.length, self.mesh)
        return out.reshape(b, out.shape[1], -1)

    def around_model(self, executor, *args, **kwargs):
        attns = [block.self_attn for block in executor.class_obj.blocks]
        hooks = [a.register_forward_pre_hook(lambda *_: setattr(self.now, "in_self_attention", True)) for a in attns]
        hooks += [a.register_forward_hook(lambda *_: setattr(self.now, "in_self_attention", False)) for a in attns]
        try:
            return executor(*args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
            self.now.in_self_attention, self.now.shards = False, None


def installed(model):
    override = model.model_options.get("transformer_options", {}).get("optimized_attention_override")
    return override if isinstance(override, VideoAttention) else None


def install(model, mesh=None):
    """A clone of `model` whose self-attention goes through VideoAttention, or `model` itself when it already does
    (the override already there, e.g. Patch SageAttention's, is kept underneath)."""
    if installed(model) is not None:
        return model
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    va = VideoAttention(to.get("optimized_attention_override"), mesh)
    to["optimized_attention_override"] = va
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, KEY, va.around_model)
    return m
