"""The Ray workers of parallel Sample Video runs: started for a run, kept (with the model loaded) for the next run
with the same settings and model, released on a change, a failure, a cancel, a single-device run or when asked."""
import os
import socket
import sys
from types import SimpleNamespace

import comfy.cli_args
import comfy.model_management
import torch

from ...quant.act_quant import first_line
from . import parallel_worker
from .sample_job import fail

PACK = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # nodes/adapters/ -> the pack
# ComfyUI's launch options that decide how a model is stored, computed, attended and held in memory (comfy.
# model_management, comfy.ops and the attention module read several at import): the workers start with the host's,
# not with the defaults, so e.g. --lowvram, --reserve-vram, --force-fp32 or --use-sage-attention hold there too.
FORWARDED_ARGS = (
    "force_fp32", "force_fp16", "fp32_unet", "fp64_unet", "bf16_unet", "fp16_unet", "fp8_e4m3fn_unet", "fp8_e5m2_unet",
    "fp8_e8m0fnu_unet", "fp16_vae", "fp32_vae", "bf16_vae", "cpu_vae", "fp16_intermediates", "force_channels_last",
    "supports_fp8_compute", "enable_triton_backend", "disable_triton_backend", "use_split_cross_attention",
    "use_quad_cross_attention", "use_pytorch_cross_attention", "use_sage_attention", "use_flash_attention",
    "use_ck_attention", "disable_xformers", "force_upcast_attention", "dont_upcast_attention", "gpu_only", "highvram",
    "lowvram", "novram", "reserve_vram", "vram_headroom", "disable_nvml_pressure", "async_offload",
    "disable_async_offload", "disable_dynamic_vram", "enable_dynamic_vram", "fast_disk", "disable_cuda_graphs",
    "force_non_blocking", "disable_smart_memory", "deterministic", "fast", "disable_pinned_memory", "mmap_torch_files",
    "disable_mmap", "high_ram")
_pool = None      # the running workers, what they were started for (key) and where they run
_address = None


def workers_for(ray, plan):
    """The pool for `plan` (a parallel_run.Plan): the kept one if it matches and answers, else a new one."""
    global _pool
    if _pool is not None and (_pool.key != plan.key or not _alive(ray, _pool)):
        release()                                  # other settings, another model, or a worker gone
    _connect(ray, plan.config)
    cpu = _use_cpu(ray, plan.config, plan.n)
    # Free this machine's GPU and RAM for the workers, for kept ones too: the host's copy of the model is not used by
    # them, and what this prompt loaded before (the text encoder) would sit on the first worker's GPU.
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    if _pool is not None:
        return _pool, cpu, True
    # The actors cannot import this pack under the name the host gave it: ship the worker's code by value.
    ray.cloudpickle.register_pickle_by_value(parallel_worker)
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // plan.n)
    actor = ray.remote(num_cpus=threads, num_gpus=0 if cpu else 1)(parallel_worker.Worker)
    host = os.path.dirname(os.path.abspath(sys.modules["comfy"].__path__[0]))
    workers = [actor.remote(host, PACK, cpu, threads, host_args()) for _ in range(plan.n)]
    _pool = pool = SimpleNamespace(key=plan.key, workers=workers, where=[])
    pool.where = wait(ray, [w.where.remote() for w in workers], workers)   # first: to wait on their exit
    [(address, port)] = wait(ray, [workers[0].address.remote()], workers)
    wait(ray, [w.join.remote(address, port, r, plan.n, plan.cfg, plan.ring) for r, w in enumerate(workers)], workers)
    patches = ray.put(plan.patches) if plan.patches else None
    wait(ray, [w.load.remote(plan.recipe, plan.sage, patches) for w in workers], workers)
    return pool, cpu, False


def host_args():
    """The host's FORWARDED_ARGS as plain values (the workers unpickle them before they can import the host)."""
    args = comfy.cli_args.args
    return {name: sorted(feature.value for feature in args.fast) if name == "fast" else getattr(args, name)
            for name in FORWARDED_ARGS if hasattr(args, name)}


def release():
    """Stop the kept workers, if any, and wait until those of this machine are gone (their memory with them)."""
    global _pool
    pool, _pool = _pool, None
    if pool is None:
        return
    import psutil
    import ray
    for w in pool.workers:
        ray.kill(w)
    here, procs = ray.util.get_node_ip_address(), []
    for ip, pid in pool.where:
        try:
            p = psutil.Process(pid)
            if ip == here and (p.cmdline() or [""])[0].startswith("ray::"):
                procs.append(p)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()


def _alive(ray, pool):
    """Do all kept workers answer within a few seconds (one may have died while idle, e.g. out of memory)?"""
    refs = [w.where.remote() for w in pool.workers]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=10)
    try:
        return len(ready) == len(refs) and all(ray.get(ready))
    except ray.exceptions.RayError:
        return False


def _connect(ray, config):
    global _address, _pool
    if ray.is_initialized() and config["address"] == _address:
        return
    if config["address"]:
        _check_reachable(config["address"])
    _pool = None              # its handles belong to the cluster left behind (released on a key change before)
    if ray.is_initialized():
        ray.shutdown()        # another cluster than the last run's
    if config["address"]:
        try:
            ray.init(address=config["address"], log_to_driver=False)
        except (ConnectionError, ValueError) as e:   # e.g. "auto" with no cluster on this machine
            fail(f"parallel: ray_address {config['address']}: Ray found no cluster there ({first_line(e)}); "
                 "start one (ray start --head), or leave ray_address empty for a cluster on this machine")
    else:
        ray.init(num_cpus=max(config["workers"], os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    _address = config["address"]


def _check_reachable(address):
    """Ray retries an address where nothing answers for minutes, silently: ask it once first ("auto", the cluster
    this machine is part of, and "local" are left to Ray)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if address in ("auto", "local"):
        return
    if not (host and port.isdecimal() and port.isascii()):     # isdigit() takes "²", int() does not
        fail(f"parallel: ray_address {address}: give the cluster's host:port, as ray start --head prints it (port "
             "6379 unless changed), 'auto' for the cluster this machine is part of, or leave it empty for one on "
             "this machine")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        fail(f"parallel: ray_address {address}: nothing answers there ({e.strerror or e}); start the cluster there "
             "(ray start --head), or leave ray_address empty for a cluster on this machine")


def _use_cpu(ray, config, n):
    """CPU or GPU workers, from what the cluster has (not only this machine); refuses what it cannot place."""
    resources = ray.cluster_resources()
    cpu = config["device"] == "cpu" or (config["device"] == "auto" and int(resources.get("GPU", 0)) == 0)
    host = comfy.model_management.get_torch_device()
    if config["device"] == "auto" and cpu and host.type != "cpu":   # e.g. on a Mac, or a cluster of CPU machines
        start = ("start one that has (ray start --head --num-gpus N, and its address in ray_address), " *
                 torch.distributed.is_nccl_available())     # GPU workers need NCCL: not on Windows or a Mac
        fail(f"parallel: device auto: ComfyUI runs on {host.type}, and the Ray cluster has no GPU for the workers; "
             f"{start}run without Parallel Config, or set its device to cpu for CPU processes (each loads the model)")
    if not cpu and not torch.distributed.is_nccl_available():   # PyTorch for Windows has no NCCL
        fail("parallel: GPU workers talk through NCCL, which this PyTorch does not have (PyTorch has it on Linux "
             "only): run ComfyUI on Linux or in WSL2 for several GPUs, or set Parallel Config's device to cpu")
    kind = "CPU" if cpu else "GPU"
    have = int(resources.get(kind, 0))
    if have < n:
        todo = _shown_gpus(config, kind) or (f": set Parallel Config's workers to {have} or fewer" if have >= 2 else
                                             ": run without Parallel Config" + ", or set its device to cpu" * (not cpu))
        fail(f"parallel: {n} workers need {n} {kind}s; the Ray cluster has {have}{todo}")
    return cpu


def _shown_gpus(config, kind):
    """ComfyUI's --cuda-device sets CUDA_VISIBLE_DEVICES at its start, which a Ray cluster started by it inherits."""
    shown = comfy.cli_args.args.cuda_device
    if kind != "GPU" or config["address"] or shown is None:
        return ""
    return (f" (ComfyUI's --cuda-device {shown} shows it only that: start ComfyUI without it, or start a Ray cluster "
            "yourself (ray start --head) and give its address as ray_address)")


def wait(ray, refs, workers, poll=None):
    """ray.get, but polling: the user's cancel stops the actors, a dead actor becomes a clear error, and `poll`
    runs between waits."""
    while True:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
        if poll is not None:
            poll()
        if comfy.model_management.processing_interrupted():
            for w in workers:
                ray.kill(w)
            comfy.model_management.throw_exception_if_processing_interrupted()
        if len(ready) == len(refs):
            break
        if _errors(ray, ready):
            ray.wait(refs, num_returns=len(refs), timeout=5)   # let a dead actor show up as such
            break
    errors = _errors(ray, refs)
    died = [e for e in errors if isinstance(e, ray.exceptions.RayActorError)]
    if died:   # a dead worker makes the others fail too (broken collectives): report the cause
        fail(f"parallel: a worker stopped ({type(died[0]).__name__}: {first_line(died[0])}); all workers were "
             "released, the next run starts new ones")
    if errors and isinstance(errors[0], ray.exceptions.RayTaskError) and isinstance(errors[0].cause, Exception):
        raise errors[0].cause from errors[0]   # its own words (Ray's wrapping, with the worker's traceback, in the log)
    if errors:
        raise errors[0]
    return ray.get(refs)


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
