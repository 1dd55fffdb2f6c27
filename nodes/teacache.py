"""TeaCache (SkyReels-V2): MODEL in, MODEL out, honoured by Sample Video and core samplers alike (the decisions:
sampling/teacache.py; the host hooks: adapters/teacache_hooks.py)."""
from comfy_api.latest import io

from ..sampling import teacache
from .adapters import teacache_hooks


class TeaCache(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsTeaCache",
            display_name="TeaCache (SkyReels-V2)",
            category="SkyReels-V2",
            search_aliases=["step cache", "skip model calls", "faster sampling"],
            description="Skips transformer passes whose timestep embedding changed little since the last computed "
                        "one, with SkyReels-V2's coefficients: for T2V/DF by the model's size (read from its "
                        "weights), for I2V by the video's resolution (540P or 720P).",
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
        to = model.model_options.get("transformer_options", {})
        if teacache_hooks.KEY in to:
            raise ValueError("TeaCache: model: already has TeaCache (SkyReels-V2); use one TeaCache node")
        if teacache_hooks.CORE_CACHE in to:
            raise ValueError(teacache_hooks.TWO_CACHES)
        if to.get("patches_replace", {}).get("dit"):
            raise ValueError("TeaCache: model: its transformer blocks are already replaced by another patch (e.g. "
                             "another cache or Skip Layer Guidance); put TeaCache first")
        return io.NodeOutput(teacache_hooks.install(model, teacache.TeaCache(threshold, retention_steps)))
