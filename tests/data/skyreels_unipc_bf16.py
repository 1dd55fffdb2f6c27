"""Writes skyreels_unipc_bf16.safetensors beside this file: SkyReels-V2's own FlowUniPCMultistepScheduler stepping bf16
latents as its DiffusionForcingPipeline does with its bf16 transformer, for tests/test_sampling.py. Run by hand with a
SkyReels-V2 checkout:

    python tests/data/skyreels_unipc_bf16.py SKYREELS_V2_DIR

The latents (65,536 values, enough for every rounding to show: the corrector's weights rounded to bf16 change a few
hundred of them) start in bf16; each step the model stand-in returns a float32 velocity, and the step's result is
written into the view the scheduler was given (latents[...] = step(v, t, latents[...])). The stand-in uses only
+, -, * and /, which IEEE 754 rounds the same on every machine."""
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "skyreels_unipc_bf16.safetensors")
SHAPE = (1, 16, 4, 32, 32)
CASES = ((10, 5.0), (30, 8.0), (50, 8.0))      # (steps, shift)


def velocity(x, sigma):
    """The model stand-in: float32 out of the bf16 latents, as SkyReels-V2's transformer returns."""
    x = x.float()
    return 0.8 * x - 0.3 * x / (1 + x * x) + 0.5 * sigma * x


def initial():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)


def main(skyreels_dir):
    import safetensors.torch
    import diffusers.utils  # noqa: F401  (before the empty modules: it looks for their specs)
    for name in ("decord", "ftfy"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["decord"].VideoReader = None
    sys.path.insert(0, skyreels_dir)
    from skyreels_v2_infer.scheduler.fm_solvers_unipc import FlowUniPCMultistepScheduler
    table = {"initial": initial()}
    for steps, shift in CASES:
        scheduler = FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1)
        scheduler.set_timesteps(steps, device="cpu", shift=shift)
        latents = table["initial"].clone()
        for i, t in enumerate(scheduler.timesteps):
            latents[:] = scheduler.step(velocity(latents, scheduler.sigmas[i]), t, latents[:], return_dict=False)[0]
        table[f"steps{steps}_shift{shift:g}"] = latents
    safetensors.torch.save_file(table, OUT)
    print("wrote", OUT)


if __name__ == "__main__":
    main(sys.argv[1])
