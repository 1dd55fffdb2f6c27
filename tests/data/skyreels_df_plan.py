"""Writes skyreels_df_plan.json beside this file: SkyReels-V2's own Diffusion Forcing plan (its code, not a port)
over a grid of settings, for tests/test_sampling.py. Run by hand when the cases change, with a SkyReels-V2 checkout
(commit abed76fe):

    python tests/data/skyreels_df_plan.py SKYREELS_V2_DIR

"plans": DiffusionForcingPipeline.generate_timestep_matrix (called unbound: it uses nothing of the pipeline) on
every case of PLANS, given the int64 timesteps of the pipeline's FlowUniPCMultistepScheduler (set_timesteps(steps,
shift=SHIFT)) as its step_template, as the pipeline does, and base_num_frames = num_frames, as the pipeline calls it
for every window ("windows" shows it).

"windows": DiffusionForcingPipeline.__call__ (text to video, no start or end image) run on every case of WINDOWS,
recording the arguments of each generate_timestep_matrix call it makes (one per window). Stand-ins, as only the
frame arithmetic matters: the model predicts zeros, the text encoder gives zeros, the VAE turns T video frames into
(T - 1) // 4 + 1 latent frames of zeros and F latent frames into 4 (F - 1) + 1 video frames (Wan 2.1's VAE), decord
and ftfy (imported, unused here) are empty modules."""
import json
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "skyreels_df_plan.json")
COMMIT = "abed76fec91103e4543c747eee45334137b3a558"
SHIFT = 8.0

# (num_frames, steps, ar_step, num_pre_ready, causal_block_size), in latent frames
PLANS = [
    # synchronous (ar_step 0)
    (4, 3, 0, 0, 1),
    (6, 4, 0, 2, 2),
    (10, 5, 0, 0, 5),
    # asynchronous, one window
    (3, 3, 1, 0, 1),
    (6, 4, 1, 1, 1),
    (6, 3, 1, 0, 2),
    (6, 4, 2, 0, 2),
    (8, 5, 2, 3, 2),         # num_pre_ready not whole blocks
    (15, 4, 2, 0, 5),
    (10, 3, 5, 0, 5),
    (6, 3, 5, 0, 1),
    (15, 5, 1, 5, 5),
    (25, 30, 5, 0, 5),      # SkyReels-V2's README: 97 frames, 30 steps, ar_step 5, causal_block_size 5
]

# (latent frames, base latent frames, overlap latent frames, causal_block_size)
WINDOWS = [
    (20, 25, 5, 1),          # shorter than base_num_frames: one window
    (26, 25, 5, 1),
    (45, 25, 5, 1),
    (65, 25, 5, 1),
    (100, 25, 5, 1),
    (11, 5, 2, 1),
    (8, 6, 4, 3),            # overlap 4 -> prefixes of 3 (whole blocks)
    (30, 10, 5, 5),
    (25, 10, 3, 2),
]
SIZE, WINDOW_STEPS = 16, 3


def video_frames(latent):
    return 4 * (latent - 1) + 1


def import_pipeline(skyreels_dir):
    import diffusers.utils  # noqa: F401  (before the empty modules: it looks for their specs)
    for name in ("decord", "ftfy"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["decord"].VideoReader = None
    if skyreels_dir not in sys.path:
        sys.path.insert(0, skyreels_dir)
    from skyreels_v2_infer.pipelines.diffusion_forcing_pipeline import DiffusionForcingPipeline
    from skyreels_v2_infer.scheduler.fm_solvers_unipc import FlowUniPCMultistepScheduler
    return DiffusionForcingPipeline, FlowUniPCMultistepScheduler


def plan_case(cls, scheduler_cls, case):
    num_frames, steps, ar_step, pre, cbs = case
    scheduler = scheduler_cls()
    scheduler.set_timesteps(steps, device="cpu", shift=SHIFT)
    template = scheduler.timesteps
    out = dict(num_frames=num_frames, steps=steps, ar_step=ar_step, num_pre_ready=pre, causal_block_size=cbs,
               step_template=template.tolist())
    matrix, index, mask, interval = cls.generate_timestep_matrix(None, num_frames, template, num_frames, ar_step, pre,
                                                                 cbs)
    out.update(step_matrix=matrix.tolist(), step_index=index.tolist(), step_update_mask=mask.int().tolist(),
               valid_interval=[list(i) for i in interval])
    return out


class Stub:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __call__(self, x, t, context, fps, **_):
        return torch.zeros_like(x)


def window_case(cls, scheduler_cls, case):
    latent, base, overlap, cbs = case
    pipe = cls.__new__(cls)
    pipe.device, pipe.offload, pipe.scheduler = "cpu", False, scheduler_cls()
    pipe.transformer = Stub(dtype=torch.float32, num_frame_per_block=cbs, enable_teacache=False,
                            to=lambda *a: None, cpu=lambda: None)
    pipe.text_encoder = Stub(to=lambda *a: None, cpu=lambda: None, encode=lambda prompt: torch.zeros(1, 4, 8))
    pipe.vae = Stub(encode=lambda v: [torch.zeros(16, (v.shape[2] - 1) // 4 + 1, v.shape[3] // 8, v.shape[4] // 8)],
                    decode=lambda z: torch.zeros(1, 3, video_frames(z.shape[2]), z.shape[3] * 8, z.shape[4] * 8))
    calls = []

    def record(num_frames, template, base_num_frames, ar_step, num_pre_ready, causal_block_size):
        calls.append([num_frames, base_num_frames, num_pre_ready])
        return cls.generate_timestep_matrix(pipe, num_frames, template, base_num_frames, ar_step, num_pre_ready,
                                            causal_block_size)
    pipe.generate_timestep_matrix = record
    args = dict(prompt="", negative_prompt="", height=SIZE, width=SIZE, num_frames=video_frames(latent),
                num_inference_steps=WINDOW_STEPS, shift=SHIFT, guidance_scale=1.0,
                generator=torch.Generator().manual_seed(0), overlap_history=video_frames(overlap),
                base_num_frames=video_frames(base), ar_step=0, causal_block_size=cbs, fps=24, addnoise_condition=0)
    video = pipe(**args)[0]
    return dict(latent_frames=latent, base_latent=base, overlap_latent=overlap, causal_block_size=cbs,
                num_frames=args["num_frames"], base_num_frames=args["base_num_frames"],
                overlap_history=args["overlap_history"], video_frames=video.shape[0], windows=calls)


def dump(obj, indent=0):
    """JSON with every list of numbers on one line."""
    pad = " " * indent
    if isinstance(obj, dict):
        items = [f'{pad} {json.dumps(k)}: {dump(v, indent + 1).lstrip()}' for k, v in obj.items()]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (list, dict)) for v in obj):
        return pad + "[\n" + ",\n".join(dump(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return pad + json.dumps(obj, separators=(",", ":"))


def main(skyreels_dir):
    import diffusers
    cls, scheduler_cls = import_pipeline(os.path.abspath(skyreels_dir))
    with torch.no_grad():
        plans = [plan_case(cls, scheduler_cls, case) for case in PLANS]
        windows = [window_case(cls, scheduler_cls, case) for case in WINDOWS]
    table = {
        "source": f"DiffusionForcingPipeline.generate_timestep_matrix and DiffusionForcingPipeline.__call__ of "
                  f"SkyReels-V2 (skyreels_v2_infer/pipelines/diffusion_forcing_pipeline.py, SkyworkAI/SkyReels-V2 "
                  f"commit {COMMIT[:8]}) with torch {torch.__version__} and diffusers {diffusers.__version__}, "
                  f"written by tests/data/skyreels_df_plan.py.",
        "plans": f"generate_timestep_matrix(num_frames, step_template, num_frames, ar_step, num_pre_ready, "
                 f"causal_block_size) -> step_matrix, step_index, step_update_mask (stored as 0/1), valid_interval; "
                 f"step_template: FlowUniPCMultistepScheduler().set_timesteps(steps, shift={SHIFT}).timesteps, as "
                 f"the pipeline passes it; base_num_frames = num_frames, as the pipeline calls it (see windows).",
        "windows": f"[num_frames, base_num_frames, num_pre_ready] of every generate_timestep_matrix call of "
                   f"DiffusionForcingPipeline.__call__(num_frames, base_num_frames, overlap_history, "
                   f"causal_block_size), one per window, in latent frames; frame counts in video frames are "
                   f"4 (latent - 1) + 1; stand-in model, text encoder and VAE ((T - 1) // 4 + 1 latent frames), "
                   f"{WINDOW_STEPS} steps, ar_step 0; video_frames: the frames it returns.",
        "shift": SHIFT,
        "plan_cases": plans,
        "window_cases": windows,
    }
    text = dump(table) + "\n"
    with open(OUT, "w") as f:
        f.write(text)
    print("wrote", OUT, len(text), "bytes")
    for p in plans:
        print(p["num_frames"], p["steps"], p["ar_step"], p["num_pre_ready"], p["causal_block_size"], "->",
              f"{len(p['step_index'])} rows")
    for w in windows:
        print(w["latent_frames"], w["base_latent"], w["overlap_latent"], w["causal_block_size"], "->", w["windows"],
              w["video_frames"])


if __name__ == "__main__":
    main(sys.argv[1])
