"""The host's flow model sampling, with SkyReels-V2's shift, taking one sigma per latent frame.

ComfyUI's Wan model already accepts a timestep per frame ([B, F]); only model_sampling reshapes sigma to one value
per batch item. Frames are moved into the batch for those formulas so the host's own math applies frame by frame.
Installed as an object patch on a clone, as core's ModelSamplingSD3 node installs its shift.
"""
import comfy.model_sampling


def _frames_to_batch(t):
    b, c, f = t.shape[:3]
    return t.movedim(2, 1).reshape(b * f, c, 1, *t.shape[3:])


def _batch_to_frames(t, b):
    bf, c = t.shape[:2]
    return t.reshape(b, bf // b, c, *t.shape[3:]).movedim(1, 2)


class PerFrameFlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
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


def patch(model, shift):
    """A clone of `model` (a ModelPatcher) whose model_sampling has `shift` and takes per-frame sigmas."""
    sampling = PerFrameFlowSampling(model.model.model_config)
    sampling.set_parameters(shift=shift, multiplier=1000)
    m = model.clone()
    m.add_object_patch("model_sampling", sampling)
    return m
