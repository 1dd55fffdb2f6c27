"""TeaCache (SkyReels-V2): MODEL in, MODEL out. Calls whose timestep embedding changed little reuse the previous
call's transformer-block residual (sampling/teacache.py), through the host's hooks: a diffusion-model wrapper
captures the embedding, and every block is replaced by a pass that runs the block or, on a skipped call, leaves the
input as it is and adds the residual once. Sample Video and core samplers honour it alike."""
import torch
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..sampling import teacache

KEY = "skyreels_teacache"      # transformer_options: the TeaCache of this MODEL
RUN = "skyreels_teacache_run"  # transformer_options of one call: what its blocks do
# Sample Video's transformer_options: the index of the model call within its window, and the window's calls
CALL, CALLS = "skyreels_call", "skyreels_calls"


class TeaCache(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsTeaCache",
            display_name="TeaCache (SkyReels-V2)",
            category="SkyReels-V2",
            description="Skips transformer passes whose timestep embedding changed little since the last computed "
                        "one, with SkyReels-V2's coefficients for the model (read from its weights).",
            inputs=[
                io.Model.Input("model"),
                io.Float.Input("threshold", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="SkyReels-V2's --teacache_thresh: higher is faster and further from the "
                                       "video without it (its figures: 0.1 about 2x, 0.2 about 3x). 0: off."),
                io.Boolean.Input("retention_steps", default=False,
                                 tooltip="SkyReels-V2's --use_ret_steps: the first 5 steps always computed, with the "
                                         "coefficients fitted for it (its advice: faster and better)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, threshold, retention_steps) -> io.NodeOutput:
        dm = getattr(model.model, "diffusion_model", None)
        if type(dm).__name__ != "WanModel":
            raise ValueError(f"TeaCache: model: needs a SkyReels-V2 / Wan 2.1 model, got {type(dm).__name__}")
        if dm.in_dim != 36 and dm.dim not in teacache.SIZES:
            raise ValueError(f"TeaCache: model: SkyReels-V2 publishes coefficients for widths 1536 (1.3B) and 5120 "
                             f"(14B); this model is {dm.dim} wide")
        if threshold <= 0:
            return io.NodeOutput(model)
        if model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit"):
            raise ValueError("TeaCache: model: its transformer blocks are already replaced by another patch (e.g. "
                             "another cache or Skip Layer Guidance); put TeaCache first")
        m = model.clone()
        m.model_options["transformer_options"][KEY] = teacache.TeaCache(threshold, retention_steps)
        m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, KEY, _call)
        m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KEY, _release)
        blocks = Blocks()
        for i in range(len(dm.blocks)):
            m.set_model_patch_replace(blocks, "dit", "double_block", i)
        return io.NodeOutput(m)


class Run:
    """One model call: its streams (cond / uncond chunks of the batch), its step, and the blocks' input."""

    def __init__(self, cache, streams, index, total, coeffs):
        self.cache, self.streams, self.index, self.total, self.coeffs = cache, streams, index, total, coeffs
        self.embedding, self.runs, self.x_in = None, None, None

    def start(self, x, e0):
        inp = e0 if self.cache.retention else self.embedding
        parts = zip(self.streams, inp.chunk(len(self.streams)), x.chunk(len(self.streams)))
        self.runs = [self.cache.compute(s, self.index, self.total, e, self.coeffs, xs.shape) for s, e, xs in parts]
        self.x_in = x

    def skips_all(self):
        return all(run is False for run in self.runs)

    def finish(self, x):
        """Computed chunks keep their output and leave its residual (not a second call at one step: run None);
        skipped ones take input + their residual."""
        out = []
        for s, run, x_in, x_out in zip(self.streams, self.runs, self.x_in.chunk(len(self.streams)),
                                       x.chunk(len(self.streams))):
            if run is False:
                out.append(x_in + self.cache.residual(s))
                continue
            if run:
                self.cache.keep(s, x_out - x_in)
            out.append(x_out)
        return torch.cat(out)


class Blocks:
    def __call__(self, args, extra):
        to = args["transformer_options"]
        run = to.get(RUN)
        if run is None:
            return extra["original_block"](args)
        i, x = to["block_index"], args["img"]
        if i == 0:
            run.start(x, args["vec"])
        if run.runs is None:    # block 0 is not ours (replaced after TeaCache): nothing is decided, all runs
            return extra["original_block"](args)
        if run.skips_all():
            return {"img": run.finish(x) if i == 0 else x}
        out = extra["original_block"](args)
        if i == to["total_blocks"] - 1:
            out["img"] = run.finish(out["img"])
        return out


def step(to):
    """(index, total) of this call: Sample Video says; under core samplers, the sigma's place in the schedule."""
    if CALL in to:
        return to[CALL], to[CALLS]
    sigmas = to["sample_sigmas"].cpu()
    return int((sigmas[:-1] - to["sigmas"][0].cpu()).abs().argmin()), len(sigmas) - 1


def _call(executor, *args, **kwargs):
    to = args[5] if len(args) > 5 else kwargs["transformer_options"]
    cache, dm, x = to[KEY], executor.class_obj, args[0]
    pixel_area = x.shape[-1] * x.shape[-2] * 64
    coeffs = teacache.coefficients(dm.in_dim == 36, dm.dim, pixel_area, cache.retention)
    # One stream per prompt: cond / uncond and the conditioning's id (several positive prompts share a batch)
    kinds = to.get("cond_or_uncond", [0])
    streams = list(zip(kinds, to.get("uuids") or range(len(kinds))))
    run = Run(cache, streams, *step(to), coeffs)

    def capture(module, inputs, out):
        run.embedding = out

    hook = dm.time_embedding.register_forward_hook(capture)
    to[RUN] = run
    try:
        return executor(*args, **kwargs)
    finally:
        hook.remove()
        to.pop(RUN, None)


def _release(executor, *args, **kwargs):
    try:
        return executor(*args, **kwargs)
    finally:
        to = executor.class_obj.model_options["transformer_options"]
        if KEY in to:
            to[KEY].release()


def counts(model):
    """(calls, skipped) of the MODEL's TeaCache so far, or None without one."""
    cache = model.model_options.get("transformer_options", {}).get(KEY)
    return None if cache is None else (cache.calls, cache.skipped)
