"""SkyReels-V2 DF-1.3B's fps conditioning on the host's Wan model, which drops these keys as unexpected: e0 of every
step gets fps_projection(fps_embedding(id)), id 0 for 16 fps and 1 for other rates, added by a wrapper on this model
only. The two layers are modules of the model under SkyReels-V2's names, built with ComfyUI's manual_cast ops, so
ComfyUI moves, offloads and LoRA-patches them as its own layers and ModelSave writes them."""
import comfy.model_management
import comfy.ops
import torch
from comfy.patcher_extension import WrappersMP

from .model_files import RECIPE     # set by Load FP8 SkyReels Model

KEY = "skyreels_fps"          # transformer_options key the Sample Video node sets; absent means 24 fps
DEFAULT_FPS = 24
DF_1_3B_DIM = 1536            # the only SkyReels-V2 model with an fps embedding is DF-1.3B


def split_fps_keys(sd):
    return {k: sd.pop(k) for k in [k for k in sd if k.startswith(("fps_embedding.", "fps_projection."))]}


def install(patcher, fps_sd):
    dm, ops = patcher.model.diffusion_model, comfy.ops.manual_cast
    dim, dtype = dm.dim, fps_sd["fps_embedding.weight"].dtype
    dm.fps_embedding = ops.Embedding(2, dim, dtype=dtype)
    dm.fps_projection = torch.nn.Sequential(ops.Linear(dim, dim, dtype=dtype), torch.nn.SiLU(),
                                            ops.Linear(dim, 6 * dim, dtype=dtype))
    for name in ("fps_embedding", "fps_projection"):
        module = getattr(dm, name).requires_grad_(False)     # as the host's weights: no autograd graph in sampling
        module.load_state_dict({k[len(name) + 1:]: v for k, v in fps_sd.items() if k.startswith(name)})
    patcher.size = comfy.model_management.module_size(patcher.model)    # counted at the patcher's creation

    def wrapper(executor, *args, **kwargs):
        transformer_options = args[5] if len(args) > 5 else kwargs.get("transformer_options", {})
        fps_id = 0 if round(transformer_options.get(KEY, DEFAULT_FPS)) == 16 else 1
        ids = torch.full((1,), fps_id, device=args[0].device)     # a fill on the device, no copy from the host
        model = executor.class_obj
        # in float32, as SkyReels-V2 (autocast): the weights are cast, the patched ones included, on every call
        vec = model.fps_projection(model.fps_embedding(ids).float())[0]
        # the sum in float32 too, rounded once to the host's dtype: vec rounded first moved 14% of a bf16 e0 an ulp
        hook = model.time_projection.register_forward_hook(lambda module, inputs, out: (out + vec).to(out.dtype))
        try:
            return executor(*args, **kwargs)
        finally:
            hook.remove()

    patcher.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, KEY, wrapper)


def lost(model):
    """The note when `model` may be DF-1.3B (the only model with an fps embedding: 1.3B, T2V-shaped) loaded without
    it, else None. Load FP8 SkyReels Model keeps the embedding wherever the file has one, so a model it loaded
    without one came from a file without it (e.g. Wan 2.1 T2V-1.3B, core's text_to_video_wan model): none was lost."""
    dm = model.model.diffusion_model
    if (model.get_wrappers(WrappersMP.DIFFUSION_MODEL, KEY) or (dm.dim, dm.in_dim) != (DF_1_3B_DIM, 16)
            or getattr(model, "attachments", {}).get(RECIPE) is not None):
        return None
    return ("fps: not applied: this 1.3B MODEL has no fps embedding. SkyReels-V2 DF-1.3B has one, which core Load "
            "Diffusion Model and ComfyUI-GGUF drop: load DF-1.3B with Load FP8 SkyReels Model to condition on fps")
