"""The Ray workers of parallel Sample Video runs: started for a run, kept (with the model loaded) for the next run
with the same settings and model, released on a change, a failure, a cancel, a single-device run or when asked.
Waiting on them polls, so the user's cancel stops them and a dead one becomes a clear error."""
import os
import sys

import comfy.model_management
import torch

from . import parallel_worker
from .sample_job import fail

PACK = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # nodes/adapters/ -> the pack


class Pool:
    """Running workers and what they were started for (`key`)."""

    def __init__(self, key, workers):
        self.key, self.workers, self.where = key, workers, []


_pool = None
_address = None


def workers_for(ray, plan):
    """The pool for `plan` (a parallel_run.Plan): the kept one if it matches and answers, else a new one."""
    global _pool
    if _pool is not None and (_pool.key != plan.key or not _alive(ray, _pool)):
        release()                                  # other settings, another model, or a worker gone
    _connect(ray, plan.config)
    cpu = _use_cpu(ray, plan.config, plan.n)
    if _pool is not None:
        return _pool, cpu, True
    # Free this machine's GPU and RAM for the workers: the host's copy of the model is not used by them.
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    # The actors cannot import this pack under the name the host gave it: ship the worker's code by value.
    ray.cloudpickle.register_pickle_by_value(parallel_worker)
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // plan.n)
    actor = ray.remote(num_cpus=threads, num_gpus=0 if cpu else 1)(parallel_worker.Worker)
    host = os.path.dirname(os.path.abspath(sys.modules["comfy"].__path__[0]))
    _pool = pool = Pool(plan.key, [actor.remote(host, PACK, cpu, threads) for _ in range(plan.n)])
    pool.where = wait(ray, [w.where.remote() for w in pool.workers], pool.workers)   # first: to wait on their exit
    address, port = wait(ray, pool.workers[0].address.remote(), pool.workers)
    wait(ray, [w.join.remote(address, port, r, plan.n, plan.cfg, plan.ring) for r, w in enumerate(pool.workers)],
         pool.workers)
    patches = ray.put(plan.patches) if plan.patches else None
    wait(ray, [w.load.remote(plan.recipe, plan.sage, patches) for w in pool.workers], pool.workers)
    return pool, cpu, False


def release():
    """Stop the kept workers, if any (their GPU memory with them)."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        import ray
        _release(ray, pool.workers, pool.where)


def _alive(ray, pool):
    """Do all kept workers answer within a few seconds (one may have died while idle, e.g. out of memory)?"""
    refs = [w.where.remote() for w in pool.workers]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=10)
    try:
        return len(ready) == len(refs) and all(ray.get(ready))
    except ray.exceptions.RayError:
        return False


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
    global _address, _pool
    if ray.is_initialized() and config["address"] == _address:
        return
    _pool = None              # its handles belong to the cluster left behind (released on a key change before)
    if ray.is_initialized():
        ray.shutdown()        # another cluster than the last run's
    if config["address"]:
        ray.init(address=config["address"], log_to_driver=False)
    else:
        ray.init(num_cpus=max(config["workers"], os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    _address = config["address"]



def _use_cpu(ray, config, n):
    """CPU or GPU workers, from what the cluster has (not only this machine); refuses what it cannot place."""
    gpus, cpus = int(ray.cluster_resources().get("GPU", 0)), int(ray.cluster_resources().get("CPU", 0))
    cpu = config["device"] == "cpu" or (config["device"] == "auto" and gpus == 0)
    if not cpu and not torch.distributed.is_nccl_available():   # PyTorch for Windows has no NCCL
        fail("parallel: GPU workers talk through NCCL, which this PyTorch does not have (PyTorch has it on Linux "
             "only): run ComfyUI on Linux or in WSL2 for several GPUs, or set Parallel Config's device to cpu")
    if not cpu and gpus < n:
        fail(f"parallel: {n} workers need {n} GPUs; the Ray cluster has {gpus}")
    if cpu and cpus < n:
        fail(f"parallel: {n} workers need {n} CPUs; the Ray cluster has {cpus}")
    return cpu


def show(queue, bar):
    updates = queue.get_nowait_batch(queue.qsize())
    if updates:
        bar.update_absolute(*updates[-1])


def wait(ray, refs, workers, poll=None):
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
        fail(f"parallel: a worker stopped ({type(died[0]).__name__}: {str(died[0]).splitlines()[0]}); all workers were "
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
