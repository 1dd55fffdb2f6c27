"""One sigma per latent frame through the host's Wan model (Diffusion Forcing). The host sees one sigma per batch item,
the noisiest frame's (for CFG, timestep ranges, hook keyframes); an APPLY_MODEL wrapper hands Wan (which takes [B, F]
timesteps) the per-frame sigmas in transformer_options[KEY], and model_sampling takes [B, F]; both on a clone."""
import comfy.model_sampling
import torch
from comfy.patcher_extension import WrappersMP

from . import foreign_forward

KEY = "skyreels_frame_sigmas"


def _by_frame(formula, sigma, *tensors):
    """The host's per-item `formula` with [B, F] sigmas: frames moved into the batch and back."""
    if sigma.ndim < 2:
        return formula(sigma, *tensors)
    b, c, f = tensors[0].shape[:3]
    out = formula(sigma.flatten(), *(t.movedim(2, 1).reshape(b * f, c, 1, *t.shape[3:]) for t in tensors))
    return out.reshape(b, f, c, *out.shape[3:]).movedim(1, 2)


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
        return _by_frame(super().calculate_input, sigma, noise)

    def calculate_denoised(self, sigma, model_output, model_input):
        return _by_frame(super().calculate_denoised, sigma, model_output, model_input)


def _frame_sigmas(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                  **kwargs):
    frames = transformer_options.get(KEY)
    if frames is not None:
        other = foreign_forward.replacement(executor.class_obj.diffusion_model)   # inside that pack's wrapper: seen now
        if other is not None:
            raise ValueError(foreign_forward.in_diffusion_forcing(other))
        t = frames.to(t)[None].expand(t.shape[0], -1)
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def patch(model, shift, timesteps):
    """A clone of `model` whose model_sampling has `shift`, takes per-frame sigmas and gives the model `timesteps`."""
    sampling = PerFrameFlowSampling(model.model.model_config)
    sampling.set_parameters(shift=shift, multiplier=1000)
    sampling.set_timesteps(timesteps)
    m = model.clone()
    m.add_object_patch("model_sampling", sampling)
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, KEY, _frame_sigmas)
    return m
