"""Sample Video on several devices (Parallel Config): one Ray actor per device (`parallel_pool`, `parallel_worker`),
in a torch.distributed mesh (`attention.usp`), each running the whole Sample Video on its share of the work. Only
the MODEL's recipe (loader file and options, Patch SageAttention and TeaCache settings), its LoRA patches, the
conditioning and the images travel, never the model's weights: each actor loads the same file itself. A VAE travels
as weights (it has no file name to load from)."""
import logging
import math
import time

import comfy.cli_args
import comfy.utils
import latent_preview
import torch
from comfy.patcher_extension import WrappersMP

from ...attention.usp import layout
from . import fps as fps_term
from . import model_files, parallel_pool, teacache_hooks
from .sage_override import KEY as SAGE_KEY
from .sage_override import SageOverride, describe
from .sample_job import fail, guided_cfg

log = logging.getLogger("skyreels_fp8")
KNOWN = {   # model_options keys that parallel runs refuse, and core nodes that set them
    "sampler_cfg_function": "e.g. RescaleCFG, Perp-Neg",     # as ComfyUI shows the nodes
    "sampler_post_cfg_function": "e.g. CFGZeroStar, SkipLayerGuidanceDiT, PerturbedAttentionGuidance",
    "sampler_pre_cfg_function": "e.g. Adaptive Projected Guidance",
    "sampler_calc_cond_batch_function": "e.g. SkipLayerGuidanceDiTSimple",
    "patches_replace": "a block replacement, e.g. another pack's cache or attention patch",
    "easycache": "EasyCache or LazyCache",
}


def recipe_of(model):
    """(loader recipe, Patch SageAttention settings, weight patches, TeaCache settings) of `model`; anything a worker
    could not rebuild is refused, so a parallel run never differs silently from a single-device one."""
    recipe = getattr(model, "attachments", {}).get(model_files.RECIPE)
    if recipe is None:
        fail("parallel: needs the MODEL straight from Load FP8 SkyReels Model (optionally through Patch "
             "SageAttention, TeaCache and LoRA loaders): each worker loads the same file itself")
    # ModelSamplingSD3's object patch may stay: Sample Video samples with its own model sampling, from the shift
    # it read before the workers start.
    objects = {k: v for k, v in model.object_patches.items() if k != "model_sampling"}
    unsupported = [name for name in ("hook_patches", "injections", "weight_wrapper_patches", "additional_models")
                   if getattr(model, name, None)] + (["object_patches"] if objects else [])
    if unsupported:   # e.g. Load LoRA (Bypass) injects its adapters: a worker would run without them
        fail(f"parallel: this MODEL carries {', '.join(unsupported)}, which parallel runs cannot rebuild; use the "
             "plain LoRA loaders (weight patches) or Load FP8 SkyReels Model alone")
    to = model.model_options.get("transformer_options", {})
    cache = to.get(teacache_hooks.KEY)
    teacache = None if cache is None else (cache.threshold, cache.retention)
    rebuilt = ("optimized_attention_override", "wrappers", "callbacks", teacache_hooks.KEY)
    extra = sorted(k for k in model.model_options if k != "transformer_options")
    extra += sorted(k for k in to if k not in rebuilt and to[k]
                    and not (k == "patches_replace" and cache and teacache_hooks.replaces_alone(to[k])))
    ours = {WrappersMP.DIFFUSION_MODEL: (fps_term.KEY, teacache_hooks.KEY),    # rebuilt there
            WrappersMP.OUTER_SAMPLE: (SAGE_KEY, teacache_hooks.KEY), WrappersMP.APPLY_MODEL: (SAGE_KEY,)}
    extra += sorted(k for kind, keyed in model.wrappers.items() for k, fns in keyed.items()
                    if fns and k not in ours.get(kind, ()))
    if extra:
        extra = dict.fromkeys("easycache" if k == "lazycache" else k for k in extra)    # LazyCache's wrappers' key
        named = ", ".join(f"{k}: {KNOWN[k]}" if k in KNOWN else str(k) for k in extra)
        fail(f"parallel: this MODEL carries changes a worker cannot rebuild ({named}); connect Load FP8 SkyReels "
             "Model (and Patch SageAttention, TeaCache, LoRA loaders) directly")
    override = to.get("optimized_attention_override")
    if override is not None and not isinstance(override, SageOverride):
        fail(f"parallel: an attention override other than Patch SageAttention is set on this MODEL, "
             f"{describe(override)}; remove that node")
    sage = None if override is None else (override.mode, override.first, override.last, override.steps, override.guard)
    return recipe, sage, _weight_patches(model), teacache


def _weight_patches(model):
    """The MODEL's LoRA patches (core's loaders), or None; each worker adds them to its copy, keyed as here (the same
    loader makes the same keys). Only the host's weight adapters on CPU tensors: a model merge's patches are whole
    weights (gigabytes) and other packs' patch classes may not exist in the workers."""
    if not model.patches:
        return None
    from comfy.weight_adapter import WeightAdapterBase
    for key, entries in model.patches.items():
        for strength, value, strength_model, offset, function in entries:
            # A LoRA file's .diff / .diff_b / .set_weight keys (Kijai's ComfyUI-format distillation LoRAs carry
            # .diff_b on every Linear bias and .diff on the norms) reach the model as ("diff" | "set", (tensor,)),
            # the host's load_lora's own form; a model merge's patches are lists, [(weight, convert), ...]: whole
            # weights of another model.
            from_lora = (isinstance(value, tuple) and len(value) == 2 and value[0] in ("diff", "set")
                         and isinstance(value[1], tuple) and all(isinstance(t, torch.Tensor) for t in value[1]))
            if not (isinstance(value, WeightAdapterBase) or from_lora) or function is not None:
                fail(f"parallel: {key}: a weight patch of type {type(value).__name__} (a model merge or another "
                     "pack's patch); parallel runs take LoRA-style patches only: save the merged model and load that")
            tensors = value[1] if from_lora else value.weights
            if any(t.device.type != "cpu" for t in tensors if hasattr(t, "device")):
                fail(f"parallel: {key}: a LoRA held on a GPU; load LoRAs with ComfyUI's loaders (they keep them on "
                     "the CPU)")
    return {"uuid": str(model.patches_uuid), "patches": {k: list(v) for k, v in model.patches.items()}}


class Plan:
    """What a parallel run needs, checked on the host before any worker starts."""

    def __init__(self, config, model, one_pass=False):
        """`one_pass`: the sampling makes one model pass per step (cfg 1), which cfg parallel would run twice."""
        self.config, self.n = config, config["workers"]
        self.recipe, self.sage, self.patches, self.teacache = recipe_of(model)
        heads = model.model.diffusion_model.blocks[0].self_attn.num_heads
        paired = config.get("cfg_parallel", True) and not one_pass
        self.unpaired = config.get("cfg_parallel", True) and one_pass
        try:
            self.cfg, self.ring = layout(self.n, heads, paired, config.get("ring_degree", 0))
        except ValueError as e:
            fail(f"parallel: {e}")
        if paired and self.cfg == 1:
            log.warning("Parallel Config: cfg_parallel needs an even number of workers; %d run without it", self.n)
        # A file of the model changed on disk under the same name (its size or time) means new workers.
        self.key = (config["address"], config["device"], self.n, self.cfg, self.ring,
                    tuple(sorted(self.recipe.items())), model_files.signature(self.recipe["path"]), self.sage,
                    self.patches["uuid"] if self.patches else None)


def run(config, model, positive, negative, widgets, inputs):
    """Sample Video on `config["workers"]` Ray actors; returns (samples, report, images) from rank 0."""
    try:
        import ray
    except ImportError:
        fail("parallel: Ray is not installed: `pip install ray` in ComfyUI's Python (single-device runs need nothing)")
    # As the host's sampling, cfg 1 skips the negative pass; no model option can keep it (disable_cfg1_optimization):
    # recipe_of refuses options a worker cannot rebuild
    cfg = guided_cfg(widgets["mode"] == "diffusion forcing", widgets["cfg"])
    plan = Plan(config, model, math.isclose(cfg, 1.0))
    started, ok = time.perf_counter(), False
    try:
        pool, cpu, kept = parallel_pool.workers_for(ray, plan)
        samples, report, images = _sample(ray, pool, positive, negative, widgets, inputs, plan.teacache)
        ok = True
    finally:
        if not ok or not config.get("keep_workers", True):
            parallel_pool.release()                # after a failure or a cancel, or when asked: nothing stays
    report += (f"\nparallel: {plan.n} {'CPU processes (gloo)' if cpu else 'GPUs (NCCL)'}, cfg {plan.cfg} x ulysses "
               f"{plan.n // plan.cfg // plan.ring} x ring {plan.ring}"
               f"{' (cfg 1: one pass per step, so all split the sequence)' if plan.unpaired else ''}; "
               f"{time.perf_counter() - started:.1f} s "
               f"{'(workers kept from the last run)' if kept else 'with starting the workers and loading'}")
    return samples, report, images


def _sample(ray, pool, positive, negative, widgets, inputs, teacache):
    """Every worker runs Sample Video (with TeaCache's settings, if any: another threshold keeps the workers);
    rank 0's (samples, report, images), its progress shown by the host's bar."""
    from ray.util.queue import Queue
    inputs = dict(inputs)
    if inputs["vae"] is not None:   # the workers build the same VAE from its weights (it has no file to load from)
        inputs["vae"] = ray.put({k: t.detach().cpu() for k, t in inputs["vae"].first_stage_model.state_dict().items()})
    cond = ray.put((positive, negative))
    bar, progress = comfy.utils.ProgressBar(1), Queue()   # the queue is an actor too
    preview = (comfy.cli_args.args.preview_method.value, latent_preview.MAX_PREVIEW_RESOLUTION)

    def show():
        updates = progress.get_nowait_batch(progress.qsize())
        if updates:     # the latest step, with the latest preview made since the last look
            value, total, image = updates[-1]
            bar.update_absolute(value, total, image or next((u[2] for u in reversed(updates) if u[2]), None))
    try:
        results = parallel_pool.wait(ray, [w.sample.remote(cond, widgets, inputs, progress, preview, teacache)
                                           for w in pool.workers],
                                     pool.workers, show)
        show()
        return results[0]
    finally:
        ray.kill(progress.actor)

