"""One sigma per latent frame through the host's Wan model, for Diffusion Forcing.

ComfyUI's Wan model already accepts a timestep per frame ([B, F]); the rest of the host expects one sigma per
batch item. So the sampler gives the host the noisiest frame's sigma (for CFG, timestep ranges, hook keyframes)
and puts the per-frame sigmas in transformer_options[KEY]; an APPLY_MODEL wrapper swaps them in right before the
model, and model_sampling (the host's flow formulas, with SkyReels-V2's shift) is patched to take [B, F]: frames
are moved into the batch so the host's own math applies frame by frame. Both are installed on a clone, as core's
ModelSamplingSD3 node installs its shift.
"""
import comfy.model_sampling
import torch
from comfy.patcher_extension import WrappersMP

KEY = "skyreels_frame_sigmas"


def _frames_to_batch(t):
    b, c, f = t.shape[:3]
    return t.movedim(2, 1).reshape(b * f, c, 1, *t.shape[3:])


def _batch_to_frames(t, b):
    bf, c = t.shape[:2]
    return t.reshape(b, bf // b, c, *t.shape[3:]).movedim(1, 2)


class PerFrameFlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    """The host's flow sampling with SkyReels-V2's two departures: the model sees integer timesteps
    (`model_timesteps`: sigma -> int, the host's 1000 sigma elsewhere), and sampling starts from the noise itself,
    not sigma_max * noise (Sample Video's latent_image is zeros)."""

    def set_timesteps(self, table):
        self.keys = torch.tensor(list(table), dtype=torch.float32)
        self.values = torch.tensor(list(table.values()), dtype=torch.float32)

    def timestep(self, sigma):
        if self.keys.device != sigma.device:             # moved once, not on every call
            self.keys, self.values = self.keys.to(sigma.device), self.values.to(sigma.device)
        match = sigma.float().unsqueeze(-1) == self.keys   # the table's keys are float32 sigmas
        return torch.where(match.any(-1), self.values[match.int().argmax(-1)], sigma.float() * self.multiplier)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return noise + latent_image

    def calculate_input(self, sigma, noise):
        if sigma.ndim < 2:
            return super().calculate_input(sigma, noise)
        out = super().calculate_input(sigma.flatten(), _frames_to_batch(noise))
        return _batch_to_frames(out, noise.shape[0])

    def calculate_denoised(self, sigma, model_output, model_input):
        if sigma.ndim < 2:
            return super().calculate_denoised(sigma, model_output, model_input)
        out = super().calculate_denoised(sigma.flatten(), _frames_to_batch(model_output),
                                         _frames_to_batch(model_input))
        return _batch_to_frames(out, model_input.shape[0])


def _frame_sigmas(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                  **kwargs):
    frames = transformer_options.get(KEY)
    if frames is not None:
        t = frames.to(t)[None].expand(t.shape[0], -1)
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def patch(model, shift, timesteps):
    """A clone of `model` (a ModelPatcher) whose model_sampling has `shift`, takes per-frame sigmas and gives the
    model the integer `timesteps` ({sigma: timestep}) SkyReels-V2 gives it."""
    sampling = PerFrameFlowSampling(model.model.model_config)
    sampling.set_parameters(shift=shift, multiplier=1000)
    sampling.set_timesteps(timesteps)
    m = model.clone()
    m.add_object_patch("model_sampling", sampling)
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, KEY, _frame_sigmas)
    return m
