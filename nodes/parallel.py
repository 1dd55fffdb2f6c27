"""Parallel Config, and Sample Video's runs on several devices: Ray starts one actor per device (a local cluster,
or the cluster at a Ray address, across machines), the actors form a torch.distributed group laid out as cfg x
ulysses x ring (`attention.usp`), and each runs the whole Sample Video on its share of the work
(`parallel_worker`, `sequence_parallel`). The host keeps running: it waits for rank 0's LATENT, stops the actors
when the user cancels or one of them dies, and keeps them (model loaded) for the next run with the same settings
and model, or releases them (`keep_workers`).

What travels to the actors: the recipe of the MODEL (file and options of Load FP8 SkyReels Model, settings of
Patch SageAttention), its LoRA patches, the conditioning tensors, the images, and the VAE's weights when one is
connected (a VAE has no file name to load from). Never the model's weights: each actor loads the same file itself.
"""
import logging
import os
import sys
import time

import comfy.model_management
import comfy.utils
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..attention.usp import layout
from . import fps as fps_term
from . import parallel_worker
from .loader import RECIPE
from .sage_patch import SageOverride

log = logging.getLogger("skyreels_fp8")
PARALLEL = io.Custom("SKYREELS_PARALLEL")
PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ParallelConfig(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsParallelConfig",
            display_name="Parallel Config",
            category="SkyReels-V2",
            description="Runs Sample Video on several GPUs (or CPU processes), through Ray: CFG parallelism (positive "
                        "and negative passes side by side) and sequence parallelism (Ulysses, plus ring attention "
                        "when the heads do not split over all workers).",
            inputs=[
                io.Int.Input("workers", default=2, min=2, max=64,
                             tooltip="Processes, one per GPU."),
                io.Combo.Input("device", options=["auto", "cuda", "cpu"], default="auto",
                               tooltip="auto: GPUs when there are any."),
                io.String.Input("ray_address", default="",
                                tooltip="Empty: a Ray cluster on this machine. Or the address of a running cluster "
                                        "(ray start --head on one machine, ray start --address=... on the others)."),
                io.Boolean.Input("cfg_parallel", default=True, optional=True,
                                 tooltip="Half the workers run the positive pass of each step, half the negative "
                                         "(an odd number of workers runs without it; with cfg 1 both halves run "
                                         "the same pass)."),
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
    def execute(cls, workers, device, ray_address, cfg_parallel=True, keep_workers=True,
                ring_degree=0) -> io.NodeOutput:
        return io.NodeOutput({"workers": workers, "device": device, "address": ray_address.strip(),
                              "cfg_parallel": cfg_parallel, "keep_workers": keep_workers, "ring_degree": ring_degree})


def fail(message):
    raise ValueError(f"Sample Video: parallel: {message}")


def recipe_of(model):
    """(loader recipe, Patch SageAttention settings, weight patches) of `model`; anything a worker could not
    rebuild is refused, so a parallel run never differs silently from a single-device one."""
    recipe = model.attachments.get(RECIPE) if hasattr(model, "attachments") else None
    if recipe is None:
        fail("needs the MODEL straight from Load FP8 SkyReels Model (optionally through Patch SageAttention): each "
             "worker loads the same file itself")
    if model.object_patches or getattr(model, "hook_patches", None):
        fail("object patches and hook patches on the MODEL are not supported in parallel runs; connect Load FP8 "
             "SkyReels Model (LoRA loaders are fine)")
    to = model.model_options.get("transformer_options", {})
    extra = sorted(k for k in model.model_options if k != "transformer_options")
    extra += sorted(k for k in to if k not in ("optimized_attention_override", "wrappers", "callbacks") and to[k])
    extra += sorted(k for k in model.wrappers if model.wrappers[k] and k != WrappersMP.DIFFUSION_MODEL)
    extra += sorted(k for k in model.wrappers.get(WrappersMP.DIFFUSION_MODEL, {}) if k != fps_term.KEY)
    if extra:
        fail(f"this MODEL carries changes a worker cannot rebuild ({', '.join(map(str, extra))}); connect Load FP8 "
             "SkyReels Model (and Patch SageAttention) directly")
    override = to.get("optimized_attention_override")
    sage = None
    if isinstance(override, SageOverride):
        sage = (override.mode, override.first, override.last, override.steps, override.guard)
    elif override is not None:
        fail("an attention override other than Patch SageAttention is set on this MODEL")
    # LoRAs (core LoraLoaderModelOnly and the like) are weight patches: they travel as they are and each worker
    # adds them to its own copy, keyed as here (the same loader makes the same keys).
    patches = None
    if model.patches:
        patches = {"uuid": str(model.patches_uuid), "patches": {k: list(v) for k, v in model.patches.items()}}
    return recipe, sage, patches


def run(config, model, positive, negative, widgets, inputs):
    """Sample Video on `config["workers"]` Ray actors; returns (samples, report) from rank 0."""
    try:
        import ray
    except ImportError:
        fail("Ray is not installed: `pip install ray` in ComfyUI's Python (single-device runs need nothing)")
    recipe, sage, patches = recipe_of(model)
    n = config["workers"]
    heads = model.model.diffusion_model.blocks[0].self_attn.num_heads
    try:
        cfg, ring = layout(n, heads, config.get("cfg_parallel", True), config.get("ring_degree", 0))
    except ValueError as e:
        fail(str(e))
    if config.get("cfg_parallel", True) and cfg == 1:
        log.warning("Parallel Config: cfg_parallel needs an even number of workers; %d run without it", n)
    key = (config["address"], config["device"], n, cfg, ring, tuple(sorted(recipe.items())), _files(recipe), sage,
           _patches_key(patches))
    if _pool is not None and _pool.key != key:
        release()                                  # other settings or another model: new workers
    _connect(ray, config)
    cpu = _use_cpu(ray, config, n)
    vae = inputs.pop("vae")
    if vae is not None:   # the workers build the same VAE from its weights (it has no file name to load from)
        inputs["vae"] = ray.put({k: t.detach().cpu() for k, t in vae.first_stage_model.state_dict().items()})
    # Free this machine's GPU and RAM for the workers: the host's copy of the model is not used by them.
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    started, progress, ok = time.perf_counter(), None, False
    reused = _pool is not None
    try:
        pool = _pool if reused else _start(ray, key, n, cpu, cfg, ring, recipe, sage, patches)
        cond = ray.put((positive, negative))
        from ray.util.queue import Queue
        progress = Queue()                         # rank 0's progress, shown by the host's bar (an actor too)
        bar = comfy.utils.ProgressBar(1)
        results = _wait(ray, [w.sample.remote(cond, widgets, inputs, progress) for w in pool.workers], pool.workers,
                        lambda: _show(progress, bar))
        _show(progress, bar)
        samples, report = results[0]
        ok = True
    finally:
        if not ok or not config.get("keep_workers", True):
            release()                              # after a failure or a cancel, or when asked: nothing stays
        if progress is not None:
            ray.kill(progress.actor)
    report += (f"\nparallel: {n} {'CPU processes (gloo)' if cpu else 'GPUs (NCCL)'}, cfg {cfg} x ulysses "
               f"{n // cfg // ring} x ring {ring}; {time.perf_counter() - started:.1f} s "
               f"{'(workers kept from the last run)' if reused else 'with starting the workers and loading'}")
    return samples, report


class Pool:
    """The running workers, kept between runs with the same settings and model (`keep_workers`)."""

    def __init__(self, key, workers):
        self.key, self.workers, self.where = key, workers, []


_pool = None


def _start(ray, key, n, cpu, cfg, ring, recipe, sage, patches):
    global _pool
    # The actors cannot import this pack under the name the host gave it: ship the worker's code by value.
    ray.cloudpickle.register_pickle_by_value(parallel_worker)
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // n)
    actor = ray.remote(num_cpus=threads, num_gpus=0 if cpu else 1)(parallel_worker.Worker)
    host = os.path.dirname(os.path.abspath(sys.modules["comfy"].__path__[0]))
    _pool = pool = Pool(key, [actor.remote(host, PACK, cpu, threads) for _ in range(n)])
    address, port = _wait(ray, pool.workers[0].address.remote(), pool.workers)
    pool.where = _wait(ray, [w.join.remote(address, port, r, n, cfg, ring) for r, w in enumerate(pool.workers)],
                       pool.workers)
    patches = ray.put(patches) if patches else None
    _wait(ray, [w.load.remote(recipe, sage, patches) for w in pool.workers], pool.workers)
    return pool


def release():
    """Stop the kept workers, if any (their GPU memory with them)."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        import ray
        _release(ray, pool.workers, pool.where)


def _files(recipe):
    """Size and time of the model's files: a file changed on disk under the same name means new workers."""
    path = recipe["path"]
    names = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    return tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in names if os.path.isfile(f))


def _patches_key(patches):
    """Which LoRA (or other weight) patches the model carries: the host's own uuid changes with every change."""
    return None if not patches else patches["uuid"]


def _release(ray, workers, where):
    """Kill the actors and wait until those of this machine are gone (their memory with them)."""
    import psutil
    for w in workers:
        ray.kill(w)
    here, procs = ray.util.get_node_ip_address(), []
    for ip, pid in where:
        try:
            p = psutil.Process(pid)
            if ip == here and (p.cmdline() or [""])[0].startswith("ray::"):
                procs.append(p)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()


def _connect(ray, config):
    global _address
    if ray.is_initialized() and config["address"] == _address:
        return
    if ray.is_initialized():
        ray.shutdown()        # another cluster than the last run's
    if config["address"]:
        ray.init(address=config["address"], log_to_driver=False)
    else:
        ray.init(num_cpus=max(config["workers"], os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    _address = config["address"]


_address = None


def _use_cpu(ray, config, n):
    """CPU or GPU workers, from what the cluster has (not only this machine); refuses what it cannot place."""
    gpus, cpus = int(ray.cluster_resources().get("GPU", 0)), int(ray.cluster_resources().get("CPU", 0))
    cpu = config["device"] == "cpu" or (config["device"] == "auto" and gpus == 0)
    if not cpu and gpus < n:
        fail(f"{n} workers need {n} GPUs; the Ray cluster has {gpus}")
    if cpu and cpus < n:
        fail(f"{n} workers need {n} CPUs; the Ray cluster has {cpus}")
    return cpu


def _show(queue, bar):
    updates = queue.get_nowait_batch(queue.qsize())
    if updates:
        bar.update_absolute(*updates[-1])


def _wait(ray, refs, workers, poll=None):
    """ray.get, but polling: the user's cancel stops the actors, a dead actor becomes a clear error, and `poll`
    runs between waits."""
    single = not isinstance(refs, list)
    pending = [refs] if single else list(refs)
    while True:
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0.5)
        if poll is not None:
            poll()
        try:
            comfy.model_management.throw_exception_if_processing_interrupted()
        except BaseException:
            for w in workers:
                ray.kill(w)
            raise
        if len(ready) == len(pending):
            break
        if _errors(ray, ready):
            ray.wait(pending, num_returns=len(pending), timeout=5)   # let a dead actor show up as such
            break
    errors = _errors(ray, pending)
    died = [e for e in errors if isinstance(e, ray.exceptions.RayActorError)]
    if died:   # a dead worker makes the others fail too (broken collectives): report the cause
        fail(f"a worker stopped ({type(died[0]).__name__}: {str(died[0]).splitlines()[0]}); all workers were "
             "released, the next run starts new ones")
    if errors:
        raise errors[0].as_instanceof_cause() if isinstance(errors[0], ray.exceptions.RayTaskError) else errors[0]
    out = ray.get(pending)
    return out[0] if single else out


def _errors(ray, refs):
    found = []
    for ref in refs:
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.GetTimeoutError:
            pass
        except ray.exceptions.RayError as e:
            found.append(e)
    return found
