"""Sigma schedules and frame arithmetic of SkyReels-V2 (Wan 2.1): flow matching, x_sigma = (1 - sigma) x0 + sigma noise,
model timestep = 1000 sigma, 4 video frames per latent frame after the first, 8 pixels per latent pixel."""
import torch

TRAIN_STEPS = 1000


def shift_sigma(sigma, shift):
    """The flow shift SkyReels-V2 and ComfyUI apply: more of the steps at high noise for larger `shift`."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_sigmas(steps, shift):
    """[steps + 1] float32 sigmas, high to low, ending at 0: SkyReels-V2's schedule (linear from 1 - 1/1000 to 0,
    then shifted), computed in float64 as its numpy code does."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be above 0, got {shift}")
    linear = torch.linspace(1 - 1 / TRAIN_STEPS, 0, steps + 1, dtype=torch.float64)
    return shift_sigma(linear, shift).float()


def latent_frames(frames):
    """Latent frames of a video of `frames` (4k + 1) frames."""
    return (frames - 1) // 4 + 1


def video_frames(latent):
    return (latent - 1) * 4 + 1
