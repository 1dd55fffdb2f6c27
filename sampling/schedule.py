"""SkyReels-V2 (Wan 2.1) schedules and frame arithmetic: flow matching, x_sigma = (1 - sigma) x0 + sigma noise,
model timestep = 1000 sigma, 4 video frames per latent frame after the first, 8 pixels per latent pixel."""
import numpy as np
import torch

TRAIN_STEPS = 1000
# SkyReels-V2's scheduler starts its grid at its float32 sigma_max, 1 - 1/1000 rounded to float32.
SIGMA_MAX = float(torch.tensor(1 - 1 / TRAIN_STEPS, dtype=torch.float32))


def flow_sigmas(steps, shift, dtype=torch.float32):
    """[steps + 1] sigmas, high to low, ending at 0: linear from sigma_max, then the flow shift (more steps at high
    noise for larger `shift`), computed in float64 as SkyReels-V2's numpy code does (its np.linspace: torch's grid
    differs in the last bits, which made one float32 sigma of steps 60, shift 1 an ulp off)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be above 0, got {shift}")
    sigma = torch.from_numpy(np.linspace(SIGMA_MAX, 0, steps + 1))
    return (shift * sigma / (1 + (shift - 1) * sigma)).to(dtype)


def model_timesteps(steps, shift, addnoise_condition=0):
    """{float32 sigma: timestep} for every sigma the model is shown: SkyReels-V2's int64(1000 sigma) of its float64
    schedule, 999 to frames not started, the addnoise level to noised prefix frames, 0 to clean ones. (Truncating
    the float32 sigma would be one off where 1000 sigma sits just under an integer: float32(0.251) * 1000 < 251.)"""
    shifted = flow_sigmas(steps, shift, torch.float64)[:-1]
    table = dict(zip(shifted.float().tolist(), (shifted * TRAIN_STEPS).long().tolist()))
    table[SIGMA_MAX] = TRAIN_STEPS - 1
    if addnoise_condition:
        table[float(torch.tensor(addnoise_condition / TRAIN_STEPS, dtype=torch.float32))] = addnoise_condition
    table[0.0] = 0
    return table


def aspect_crop(width, height, to_width, to_height):
    """The box (left, top, right, bottom) SkyReels-V2's scripts crop a width x height picture to before resizing it
    to to_width x to_height (its resizecrop: the largest centred box of that aspect, its sides truncated)."""
    if height / width > to_height / to_width:
        w, h = width, int(width * to_height / to_width)
    else:
        w, h = int(height * to_width / to_height), height
    return (width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2


def latent_frames(frames):
    return (frames - 1) // 4 + 1


def video_frames(latent):
    return (latent - 1) * 4 + 1
