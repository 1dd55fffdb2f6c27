"""Parallel Config: Sample Video on several devices through Ray (the run: adapters/parallel_run.py)."""
from comfy_api.latest import io

PARALLEL = io.Custom("SKYREELS_PARALLEL")


class ParallelConfig(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsParallelConfig",
            display_name="Parallel Config",
            category="SkyReels-V2",
            search_aliases=["multi gpu", "sequence parallel", "cfg parallel", "xdit", "usp"],
            description="Runs Sample Video on several GPUs (or CPU processes), through Ray: CFG parallelism (positive "
                        "and negative passes side by side) and sequence parallelism (Ulysses, plus ring attention "
                        "when the heads do not split over all workers).",
            inputs=[
                io.Int.Input("workers", default=2, min=2, max=64,
                             tooltip="Processes, one per GPU."),
                io.Combo.Input("device", options=["auto", "cuda", "cpu"], default="auto",
                               tooltip="auto: GPUs when Ray finds any; CPU processes only when ComfyUI runs on "
                                       "the CPU."),
                io.String.Input("ray_address", default="",
                                tooltip="Empty: a Ray cluster on this machine. Or the address of a running cluster "
                                        "(ray start --head on one machine, ray start --address=... on the others)."),
                io.Boolean.Input("cfg_parallel", default=True, optional=True,
                                 tooltip="Half the workers run the positive pass of each step, half the negative "
                                         "(an odd number of workers, or cfg 1, which has no negative pass, runs "
                                         "without it)."),
                io.Boolean.Input("keep_workers", default=True, optional=True,
                                 tooltip="Keep the workers, with the model loaded, for the next run with the same "
                                         "settings (no reload). They hold their GPU memory until the settings or the "
                                         "model change, a run fails or is cancelled, a Sample Video runs without "
                                         "Parallel Config, or ComfyUI exits. Off: released after every run."),
                io.Int.Input("ring_degree", default=0, min=0, max=64, advanced=True, optional=True,
                             tooltip="Workers that share keys/values when the attention heads do not split over all "
                                     "(ring attention). 0: the fewest the heads allow."),
            ],
            outputs=[PARALLEL.Output(display_name="parallel")],
        )

    @classmethod
    def execute(cls, workers, device, ray_address, cfg_parallel=True, keep_workers=True, ring_degree=0):
        return io.NodeOutput({"workers": workers, "device": device, "address": ray_address.strip(),
                              "cfg_parallel": cfg_parallel, "keep_workers": keep_workers, "ring_degree": ring_degree})
