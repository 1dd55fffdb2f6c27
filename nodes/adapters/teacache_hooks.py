"""TeaCache in the host: a diffusion-model wrapper captures each call's timestep embedding, and block replacements run
the blocks or, on a skipped call, add the residual to the input once (the decisions: sampling/teacache.py)."""
import functools

import torch
from comfy.patcher_extension import WrappersMP

from ...attention.guard import StepIndex
from ...attention.usp import first_of_group, gather
from ...sampling import teacache
from . import foreign_forward
from .sequence_parallel import MESH_KEY, Shards

KEY = "skyreels_teacache"      # transformer_options: the TeaCache of this MODEL
RUN = "skyreels_teacache_run"  # transformer_options of one call: what its blocks do
CORE_CACHE = "easycache"       # transformer_options: core's EasyCache or LazyCache, which skip model calls too
TWO_CACHES = ("TeaCache: model: has core's EasyCache or LazyCache, which skips model calls too: their skips would add "
              "up; use one of the two")


def install(model, cache):
    """A clone of `model` with `cache` (a sampling.teacache.TeaCache) in its wrappers and block replacements. The
    TeaCache node refuses a MODEL whose blocks are replaced already; a parallel worker installs it around sequence
    parallel's blocks, so that it decides on the whole call, as on one device."""
    m = model.clone()
    m.model_options["transformer_options"][KEY] = cache
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, KEY, _call)
    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KEY, _release)
    replaced = m.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for i in range(len(m.model.diffusion_model.blocks)):
        inner = replaced.get(("double_block", i))
        m.set_model_patch_replace(_block if inner is None else functools.partial(_around, inner), "dit",
                                  "double_block", i)
    return m


def _around(inner, args, extra):
    return _block(args, {**extra, "original_block": lambda a: inner(a, extra)})


class Run:
    """One model call: its streams (cond / uncond chunks of the batch), its step, the blocks' input, and in a
    parallel worker its mesh (None on one device)."""

    def __init__(self, cache, streams, index, total, coeffs, mesh):
        self.cache, self.streams, self.index, self.total, self.coeffs = cache, streams, index, total, coeffs
        self.embedding, self.runs, self.x_in, self.mesh, self.shards = None, None, None, mesh, None

    @torch.compiler.disable      # TorchCompileModel: decisions and their state stay eager (see _block)
    def start(self, x, e0, grid):
        """Decide on the whole call. In a parallel worker the ranks that split the pass take the first one's measure
        of the change (so they skip together), and each keeps its share of the tokens, input and residual, as
        SkyReels-V2's USP does (`grid`: the latent's, which lays the shares out as sequence parallel does)."""
        n, agree = len(self.streams), None
        if self.mesh is not None and self.mesh.sequence > 1:     # (cfg parallel alone splits no pass)
            self.shards = Shards(grid, self.mesh.sequence, self.mesh.s)
            agree = functools.partial(first_of_group, mesh=self.mesh, device=x.device)
        self.x_in = [xs if self.shards is None else self.shards.tokens(xs).clone() for xs in x.chunk(n)]
        inp = e0 if self.cache.retention else self.embedding
        self.runs = [self.cache.compute(s, self.index, self.total, e, self.coeffs, xs.shape, agree)
                     for s, e, xs in zip(self.streams, inp.chunk(n), self.x_in)]

    @torch.compiler.disable
    def finish(self, x):
        """Skipped chunks take input + residual, written into their part of x (the last block's output, or the
        input itself when every chunk skips); computed ones keep their output and its residual (unless run None).
        In place: a new batch would copy the whole hidden state on every call."""
        for s, run, x_in, x_out in zip(self.streams, self.runs, self.x_in, x.chunk(len(self.streams))):
            if run:
                self.cache.keep(s, (x_out if self.shards is None else self.shards.tokens(x_out)) - x_in)
            elif run is False and self.shards is None:
                torch.add(x_in, self.cache.residual(s), out=x_out)
            elif run is False:    # the shares joined (the whole group skips here together)
                x_out.copy_(gather(x_in + self.cache.residual(s), self.mesh.sequence_group)[:, :self.shards.length])
        return x


# Under TorchCompileModel this function runs eagerly, and so do the decisions it calls (Run.start, Run.finish); the
# block it calls is still compiled, as its own frame. Compiled, it read the call's decisions from its own stale copy
# and ran skipped blocks.
@torch.compiler.disable(recursive=False)
def _block(args, extra):
    to = args["transformer_options"]
    run = to.get(RUN)
    if run is None:
        return extra["original_block"](args)
    i, x = to["block_index"], args["img"]
    if i == 0:
        run.start(x, args["vec"], to.get("grid_sizes"))
    if run.runs is None:    # block 0 is not ours (replaced after TeaCache): nothing is decided, all runs
        return extra["original_block"](args)
    if all(r is False for r in run.runs):
        return {"img": run.finish(x) if i == 0 else x}
    out = extra["original_block"](args)
    if i == to["total_blocks"] - 1:
        out["img"] = run.finish(out["img"])
    return out


def _call(executor, *args, **kwargs):
    to = args[5] if len(args) > 5 else kwargs["transformer_options"]
    cache, dm, x = to[KEY], executor.class_obj, args[0]
    other = foreign_forward.replacement(dm)      # it would call our blocks without the options they need
    if other is not None:
        raise ValueError(foreign_forward.with_our_teacache(other))
    coeffs = teacache.coefficients(dm.in_dim == 36, dm.dim, x.shape[-1] * x.shape[-2] * 64, cache.retention)
    # One stream per prompt: cond / uncond and the conditioning's id (several positive prompts share a batch), and
    # per context window (core Wan Context Windows), whose frames can change from step to step: a residual is only
    # ever added to the frames it was made on.
    kinds, window = to.get("cond_or_uncond", [0]), to.get("context_window")
    frames = None if window is None else tuple(getattr(window, "index_list", ()))
    streams = [(kind, uuid, frames) for kind, uuid in zip(kinds, to.get("uuids") or range(len(kinds)))]
    run = Run(cache, streams, *StepIndex()(to), coeffs, to.get(MESH_KEY))  # (step, total): once per model call
    hook = dm.time_embedding.register_forward_hook(lambda module, inputs, out: setattr(run, "embedding", out))
    to[RUN] = run
    try:
        return executor(*args, **kwargs)
    finally:
        hook.remove()
        to.pop(RUN, None)


def _release(executor, *args, **kwargs):
    to = executor.class_obj.model_options["transformer_options"]
    if CORE_CACHE in to:    # put on after TeaCache, where the node cannot see it
        raise ValueError(TWO_CACHES)
    try:
        return executor(*args, **kwargs)
    finally:
        if KEY in to:
            to[KEY].release()


def replaces_alone(replaced):
    """Whether block replacements (transformer_options' patches_replace) are TeaCache's alone."""
    return set(replaced) == {"dit"} and all(fn is _block for fn in replaced["dit"].values())


def counts(model):
    """(calls, skipped) of the MODEL's TeaCache so far, or None without one."""
    cache = model.model_options.get("transformer_options", {}).get(KEY)
    return None if cache is None else (cache.calls, cache.skipped)
