"""Parallel Config, and Sample Video's runs on several devices: Ray starts one actor per device (a local cluster,
or the cluster at a Ray address, across machines), the actors form a torch.distributed group, and each runs the
whole Sample Video on its share of the tokens (`parallel_worker`, `sequence_parallel`). The host keeps running: it
waits for rank 0's LATENT, stops the actors when the user cancels or one of them dies, and releases them after every
run.

What travels to the actors is the recipe of the MODEL (file and options of Load FP8 SkyReels Model, settings of
Patch SageAttention) and the conditioning tensors, never the weights: each actor loads the same file itself.
"""
import logging
import os
import sys
import time

import comfy.model_management
from comfy_api.latest import io

from . import parallel_worker
from .sage_patch import SageOverride

log = logging.getLogger("skyreels_fp8")
PARALLEL = io.Custom("SKYREELS_PARALLEL")
RECIPE = "skyreels_recipe"     # ModelPatcher attachment set by Load FP8 SkyReels Model
PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ParallelConfig(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsParallelConfig",
            display_name="Parallel Config",
            category="SkyReels-V2",
            description="Runs Sample Video on several GPUs (or CPU processes) with sequence parallelism, through Ray.",
            inputs=[
                io.Int.Input("workers", default=2, min=2, max=64,
                             tooltip="Processes, one per GPU; the model's attention heads must split evenly over "
                                     "them (1.3B: 12 heads, 14B: 40)."),
                io.Combo.Input("device", options=["auto", "cuda", "cpu"], default="auto",
                               tooltip="auto: GPUs when there are any."),
                io.String.Input("ray_address", default="",
                                tooltip="Empty: a Ray cluster on this machine. Or the address of a running cluster "
                                        "(ray start --head on one machine, ray start --address=... on the others)."),
            ],
            outputs=[PARALLEL.Output(display_name="parallel")],
        )

    @classmethod
    def execute(cls, workers, device, ray_address) -> io.NodeOutput:
        return io.NodeOutput({"workers": workers, "device": device, "address": ray_address.strip()})


def fail(message):
    raise ValueError(f"Sample Video: parallel: {message}")


def recipe_of(model):
    recipe = model.attachments.get(RECIPE) if hasattr(model, "attachments") else None
    if recipe is None:
        fail("needs the MODEL straight from Load FP8 SkyReels Model (optionally through Patch SageAttention): each "
             "worker loads the same file itself")
    if model.patches:
        fail("LoRAs and other weight patches are not supported in parallel runs yet; merge them into the file")
    override = model.model_options.get("transformer_options", {}).get("optimized_attention_override")
    sage = None
    if isinstance(override, SageOverride):
        sage = (override.mode, override.first, override.last, override.steps, override.guard)
    elif override is not None:
        fail("an attention override other than Patch SageAttention is set on this MODEL")
    return recipe, sage


def run(config, model, positive, negative, widgets, inputs):
    """Sample Video on `config["workers"]` Ray actors; returns (samples, report) from rank 0."""
    try:
        import ray
    except ImportError:
        fail("Ray is not installed: `pip install ray` in ComfyUI's Python (single-device runs need nothing)")
    if any(v is not None for v in inputs.values()):
        fail("vae, start_image and prefix_video are not supported in parallel runs yet (long videos overlap in latent "
             "space here); disconnect them or the Parallel Config")
    recipe, sage = recipe_of(model)
    cpu = config["device"] == "cpu" or (config["device"] == "auto" and not _has_gpus())
    _connect(ray, config, cpu)
    # The actors cannot import this pack under the name the host gave it: ship the worker's code by value.
    ray.cloudpickle.register_pickle_by_value(parallel_worker)
    actor = ray.remote(num_cpus=1, num_gpus=0 if cpu else 1)(parallel_worker.Worker)
    host = os.path.dirname(os.path.abspath(sys.modules["comfy"].__path__[0]))
    workers = [actor.remote(host, PACK, cpu) for _ in range(config["workers"])]
    started, pids = time.perf_counter(), []
    try:
        address, port = _wait(ray, workers[0].address.remote(), workers)
        pids = _wait(ray, [w.join.remote(address, port, r, len(workers)) for r, w in enumerate(workers)], workers)
        _wait(ray, [w.load.remote(recipe, sage) for w in workers], workers)
        results = _wait(ray, [w.sample.remote(positive, negative, widgets) for w in workers], workers)
        samples, report = results[0]
        report += (f"\nparallel: {len(workers)} {'CPU processes (gloo)' if cpu else 'GPUs (NCCL)'}, Ulysses sequence "
                   f"parallelism; {time.perf_counter() - started:.1f} s with loading")
        return samples, report
    finally:
        _release(ray, workers, pids)


def _release(ray, workers, pids):
    """Kill the actors and wait until their processes are gone (their memory with them)."""
    import psutil
    for w in workers:
        ray.kill(w)
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()


def _has_gpus():
    import torch
    return torch.cuda.is_available()


def _connect(ray, config, cpu):
    if ray.is_initialized():
        return
    if config["address"]:
        ray.init(address=config["address"], log_to_driver=False)
    else:
        ray.init(num_cpus=max(config["workers"], os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)


def _wait(ray, refs, workers):
    """ray.get, but polling: the user's cancel stops the actors, and a dead actor becomes a clear error."""
    single = not isinstance(refs, list)
    pending = [refs] if single else list(refs)
    while True:
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0.5)
        try:
            comfy.model_management.throw_exception_if_processing_interrupted()
        except BaseException:
            for w in workers:
                ray.kill(w)
            raise
        if len(ready) == len(pending) or _any_failed(ray, ready):
            break
    try:
        out = ray.get(pending)
    except ray.exceptions.RayTaskError as e:     # an error inside a worker: raise it as itself
        raise e.as_instanceof_cause() from None
    except ray.exceptions.RayActorError as e:
        fail(f"a worker stopped ({type(e).__name__}: {str(e).splitlines()[0]}); all workers were released, the next "
             "run starts new ones")
    return out[0] if single else out


def _any_failed(ray, ready):
    for ref in ready:
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.RayError:
            return True
    return False
