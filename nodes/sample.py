"""Sample Video: SkyReels-V2 sampling (flow UniPC or Euler), standard or Diffusion Forcing, with long videos made
window by window inside the node.

The host does everything it already can: conditioning, CFG, model loading and offloading, wrappers and hooks
(`comfy.sample.sample_custom` with a sampler function of ours), noise (`prepare_noise`), progress and previews.
Ours are the solvers and Diffusion Forcing's per-frame plan (`sampling/`), and the per-frame model sampling patch.
"""
import logging

import torch
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..sampling import forcing, solvers
from ..sampling.schedule import flow_sigmas, latent_frames, video_frames
from . import fps as fps_term
from . import per_frame, run_report

log = logging.getLogger("skyreels_fp8")
MODES = ["standard", "diffusion forcing"]


class SampleVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsSampleVideo",
            display_name="Sample Video",
            category="SkyReels-V2",
            description="Samples a SkyReels-V2 video latent: standard, or Diffusion Forcing with per-frame noise "
                        "levels and long videos made window by window.",
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Int.Input("width", default=960, min=16, max=4096, step=16),
                io.Int.Input("height", default=544, min=16, max=4096, step=16),
                io.Int.Input("frames", default=97, min=1, max=100001, step=4,
                             tooltip="Video frames, 4k+1 (97 = 4 s at 24 fps). Ignored when a latent is connected."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Int.Input("steps", default=30, min=1, max=1000),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Float.Input("shift", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Flow shift of the sigma schedule (SkyReels-V2: 8.0; 5.0 for I2V 720P)."),
                io.Combo.Input("sampler", options=list(solvers.SOLVERS), default="unipc",
                               tooltip="unipc: SkyReels-V2's flow UniPC (bh2, order 2). euler: ComfyUI's euler."),
                io.Int.Input("fps", default=24, min=1, max=120,
                             tooltip="Frame rate the DF-1.3B model conditions on (16 or other). Other models ignore it."),
                io.Combo.Input("mode", options=MODES, default="standard",
                               tooltip="diffusion forcing: a noise level per frame (SkyReels-V2 DF models); needed for "
                                       "start_image, prefix_video and videos longer than base_num_frames."),
                io.Int.Input("base_num_frames", default=97, min=1, max=100001, step=4, advanced=True,
                             tooltip="DF: frames the model sees at once (4k+1). Longer videos are made in windows."),
                io.Int.Input("overlap_history", default=17, min=1, max=100001, step=4, advanced=True,
                             tooltip="DF: frames of each window that start the next one (4k+1)."),
                io.Int.Input("ar_step", default=0, min=0, max=1000, advanced=True,
                             tooltip="DF: 0 synchronous; >0 asynchronous, each causal block this many steps behind "
                                     "the one before (SkyReels-V2 uses 5)."),
                io.Int.Input("causal_block_size", default=1, min=1, max=100, advanced=True,
                             tooltip="DF: latent frames that share a noise level (SkyReels-V2 uses 5 with ar_step 5)."),
                io.Int.Input("addnoise_condition", default=0, min=0, max=1000, advanced=True,
                             tooltip="DF: noise (in timesteps) added to the prefix frames the model sees; 20 helps "
                                     "long videos stay consistent."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Encodes start_image / prefix_video; with it, long-video windows overlap "
                                     "through pixels as SkyReels-V2 does (otherwise in latent space)."),
                io.Image.Input("start_image", optional=True, tooltip="DF: the first frame (needs vae)."),
                io.Image.Input("prefix_video", optional=True,
                               tooltip="DF: continue this video; its last overlap_history frames start the output "
                                       "(needs vae)."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Takes the size from this latent instead of width/height/frames."),
            ],
            outputs=[io.Latent.Output(), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, positive, negative, width, height, frames, seed, steps, cfg, shift, sampler, fps, mode,
                base_num_frames, overlap_history, ar_step, causal_block_size, addnoise_condition, vae=None,
                start_image=None, prefix_video=None, latent=None) -> io.NodeOutput:
        check_model(model)
        if latent is not None:
            shape = list(latent["samples"].shape)
            if len(shape) != 5:
                raise ValueError(f"Sample Video: latent: expected a video latent [B, C, frames, H, W], got {shape}")
        else:
            check_size(width, height, frames)
            shape = [1, 16, latent_frames(frames), height // 8, width // 8]
        df = mode == "diffusion forcing"
        job = Job(model, positive, negative, seed, steps, cfg, shift, sampler, fps, vae, shape, df,
                  dict(base_num_frames=base_num_frames, overlap_history=overlap_history, ar_step=ar_step,
                       causal_block_size=causal_block_size, addnoise_condition=addnoise_condition))
        job.set_prefix(start_image, prefix_video, overlap_history)
        samples, report = job.run()
        return io.NodeOutput({"samples": samples}, report)


def check_model(model):
    name = type(getattr(getattr(model, "model", None), "diffusion_model", None)).__name__
    if name != "WanModel":
        raise ValueError(f"Sample Video: model: needs a SkyReels-V2 / Wan 2.1 model (Load FP8 SkyReels Model or "
                         f"Load Diffusion Model), got {name}")


def check_size(width, height, frames):
    if width % 16 or height % 16:
        raise ValueError(f"Sample Video: width/height: {width}x{height} must be multiples of 16 "
                         f"(e.g. {width // 16 * 16}x{height // 16 * 16})")
    check_frames("frames", frames)


def check_frames(widget, n):
    if n < 1 or (n - 1) % 4:
        raise ValueError(f"Sample Video: {widget}: {n} is not 4k+1; use {max(1, (n - 1) // 4 * 4 + 1)} or "
                         f"{(n - 1) // 4 * 4 + 5}")


class Job:
    """One Sample Video run: its windows, their plans, and the prefix carried from one window to the next."""

    def __init__(self, model, positive, negative, seed, steps, cfg, shift, sampler, fps, vae, shape, df, opts):
        self.model = per_frame.patch(model, shift)
        self.model.model_options.setdefault("transformer_options", {})[fps_term.KEY] = fps
        self.positive, self.negative, self.seed, self.cfg = positive, negative, seed, cfg
        self.sampler, self.vae, self.shape, self.df, self.opts = sampler, vae, shape, df, opts
        self.sigmas = flow_sigmas(steps, shift)
        self.steps, self.fps, self.prefix = steps, fps, None
        self.description = (f"{'diffusion forcing' if df else 'standard'}, {sampler} {steps} steps, cfg {cfg}, "
                            f"shift {shift}")

    def set_prefix(self, start_image, prefix_video, overlap_history):
        if start_image is None and prefix_video is None:
            return
        if not self.df:
            raise ValueError("Sample Video: start_image / prefix_video need mode 'diffusion forcing' (for the I2V "
                             "model use core WanImageToVideo into positive/negative/latent instead)")
        if self.vae is None:
            raise ValueError("Sample Video: start_image / prefix_video need a vae connected to encode them")
        if prefix_video is not None:
            check_frames("overlap_history", overlap_history)
            n = min(overlap_history, prefix_video.shape[0])
            n = (n - 1) // 4 * 4 + 1
            pixels, source = prefix_video[-n:], "prefix_video"
        else:
            pixels, source = start_image[:1], "start_image"
        self.prefix = self._encode(pixels, source)

    def _encode(self, pixels, source):
        h, w = self.shape[3] * 8, self.shape[4] * 8
        if pixels.shape[1] != h or pixels.shape[2] != w:
            pixels = comfy.utils.common_upscale(pixels.movedim(-1, 1), w, h, "bilinear", "center").movedim(1, -1)
        z = self.vae.encode(pixels[:, :, :, :3])
        cbs = self.opts["causal_block_size"]
        keep = z.shape[2] // cbs * cbs     # whole causal blocks only, as SkyReels-V2 truncates
        if keep == 0:
            raise ValueError(f"Sample Video: {source}: gives {z.shape[2]} latent frame(s), fewer than "
                             f"causal_block_size {cbs}; use causal_block_size 1 or a longer prefix_video")
        return z[:, :, :keep].expand(self.shape[0], -1, -1, -1, -1)

    def plans(self):
        """[(prefix, length, plan)] of every window."""
        o, total, cbs = self.opts, self.shape[2], self.opts["causal_block_size"]
        if not self.df:
            return [(0, total, None)]
        check_frames("base_num_frames", o["base_num_frames"])
        base = latent_frames(o["base_num_frames"])
        overlap = latent_frames(o["overlap_history"]) // cbs * cbs     # whole causal blocks, as SkyReels-V2 does
        if total > base:
            check_frames("overlap_history", o["overlap_history"])
            if overlap == 0:
                raise ValueError(f"Sample Video: overlap_history: {o['overlap_history']} frames are "
                                 f"{latent_frames(o['overlap_history'])} latent frame(s), fewer than causal_block_size "
                                 f"{cbs}; use at least {video_frames(cbs)}")
            if overlap >= base:
                raise ValueError(f"Sample Video: overlap_history ({o['overlap_history']}) must be shorter than "
                                 f"base_num_frames ({o['base_num_frames']})")
        wins = forcing.windows(total, base, overlap)
        first = 0 if self.prefix is None else self.prefix.shape[2]
        if first >= wins[0][1]:
            raise ValueError(f"Sample Video: the prefix has {first} latent frames; the video needs more than that "
                             f"(frames > {video_frames(first)})")
        wins[0] = (first, wins[0][1])
        out = []
        for i, (prefix, length) in enumerate(wins):
            if length % cbs:
                raise ValueError(f"Sample Video: causal_block_size: window {i + 1} of {len(wins)} has {length} latent "
                                 f"frames, not a multiple of {cbs}; pick frames/base_num_frames whose latent counts "
                                 f"((n - 1) / 4 + 1) are multiples of it")
            try:
                plan = forcing.timestep_matrix(length, self.steps, length, o["ar_step"], prefix, cbs)
            except ValueError as e:
                raise ValueError(f"Sample Video: {e}") from None
            out.append((prefix, length, plan))
        return out

    def run(self):
        windows = self.plans()
        calls = sum(self.steps if plan is None else plan.rows for _, _, plan in windows)
        progress = latent_preview.prepare_callback(self.model, calls)
        device = self.model.load_device
        attention_before = run_report.attention_counts(self.model)
        meter = run_report.Meter(device)
        done, parts, carry = 0, [], self.prefix
        for i, (prefix, length, plan) in enumerate(windows):
            shape = [self.shape[0], self.shape[1], length, *self.shape[3:]]
            out = self._window(i, shape, carry if prefix else None, plan, progress, done, calls)
            done += self.steps if plan is None else plan.rows
            parts.append(out if i == 0 else out[:, :, prefix:])
            if i + 1 < len(windows):
                carry = self._next_prefix(out, windows[i + 1][0])
        meter.finish()
        samples = torch.cat(parts, dim=2)
        return samples, self._report(windows, calls, meter, attention_before, samples)

    def _window(self, index, shape, prefix, plan, progress, offset, total):
        latent = torch.zeros(shape)
        noise = comfy.sample.prepare_noise(latent, self.seed + index)
        prefix_in = None if prefix is None else self.model.model.process_latent_in(prefix.float())
        generator = torch.Generator().manual_seed(self.seed + 1 + index)
        a = self.opts["addnoise_condition"] if prefix is not None else 0

        def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
            extra_args = extra_args or {}
            ones = x.new_ones(x.shape[0])

            def denoise(x_in, sigma):
                comfy.model_management.throw_exception_if_processing_interrupted()
                sigma = sigma.to(x_in.device)
                s = sigma * ones if sigma.ndim == 0 else sigma[None].expand(x_in.shape[0], -1)
                return model(x_in, s, **extra_args)

            def step(i, x0, x_now):
                progress(offset + i, x0, x_now, total)

            if plan is None:
                return solvers.sample(denoise, x, sigmas.cpu(), self.sampler, step)
            x = x.clone()
            if prefix_in is not None:
                x[:, :, :prefix_in.shape[2]] = prefix_in.to(x)
            return forcing.sample_window(denoise, x, sigmas.cpu(), plan, self.sampler, addnoise_condition=a,
                                         generator=generator, callback=step)

        sampler = comfy.samplers.KSAMPLER(sampler_function)
        return comfy.sample.sample_custom(self.model, noise, self.cfg, sampler, self.sigmas, self.positive,
                                          self.negative, latent, callback=None, disable_pbar=True, seed=self.seed)

    def _next_prefix(self, window, overlap):
        """The last frames of a window, in latent space, or decoded and re-encoded when a VAE is connected."""
        if self.vae is None:
            return window[:, :, -overlap:]
        pixels = self.vae.decode(window)
        pixels = pixels.reshape(-1, *pixels.shape[-3:])
        n = self.opts["overlap_history"]
        return self._encode(pixels[-n:], "overlap_history")[:, :, :overlap]

    def _report(self, windows, calls, meter, attention_before, samples):
        weights, fp8_matmul, has_fp8 = run_report.weights_summary(self.model)
        compute = self.model.model.get_dtype_inference() if hasattr(self.model.model, "get_dtype_inference") \
            else self.model.model_dtype()
        frames = video_frames(samples.shape[2])
        lines = [
            f"Sample Video: {self.description}; {len(windows)} window(s), {samples.shape[2]} latent frames = "
            f"{frames} video frames",
            f"{calls} model calls, {meter.seconds / max(calls, 1):.3f} s per call ({meter.seconds:.1f} s); "
            f"{meter.memory}",
            f"{weights}; {run_report.matmul_summary(fp8_matmul, has_fp8, meter.products, compute)}",
            run_report.attention_summary(self.model, attention_before),
        ]
        if self.df:
            o = self.opts
            lines.insert(1, f"diffusion forcing: ar_step {o['ar_step']}, causal_block_size {o['causal_block_size']}, "
                            f"base_num_frames {o['base_num_frames']}, overlap_history {o['overlap_history']} "
                            f"({'through the VAE' if self.vae is not None else 'in latent space'}), addnoise_condition "
                            f"{o['addnoise_condition']}, fps {self.fps}")
        report = "\n".join(lines)
        log.info(report)
        return report
