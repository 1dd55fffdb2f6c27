"""One Sample Video run: its windows, their Diffusion Forcing plans and the prefix carried between them; each window
runs our sampler function in `comfy.sample.sample_custom`, so the host still does CFG, offloading, hooks, previews."""
import logging
import sys

import numpy as np
import psutil
import torch
import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from PIL import Image

from ...attention.guard import CALL, CALLS
from ...attention.sage import log_once
from ...quant.act_quant import first_line
from ...sampling import forcing, solvers
from ...sampling.schedule import aspect_crop, flow_sigmas, latent_frames, model_timesteps, video_frames
from . import fps as fps_term
from .sage_override import describe
from . import foreign_forward, per_frame, run_report, sequence_parallel, teacache_hooks, video_attention

# Sample Video's `noise`: ComfyUI's CPU draws, or those of SkyReels-V2's scripts, on the GPU (Job._seed_noise)
NOISE = ["cpu (ComfyUI)", "gpu (SkyReels-V2)"]
log = logging.getLogger("skyreels_fp8")


def fail(message):
    raise ValueError(f"Sample Video: {message}")


def _own_shift(model):
    sampling = model.get_model_object("model_sampling")
    return sampling.shift if isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow) else None


def model_shift(model, shift):
    """Sample Video's shift, or with 0 the MODEL's (ModelSamplingSD3's where applied)."""
    own = _own_shift(model)
    if shift == 0 and own is None:
        fail(f"shift: 0 takes the MODEL's flow shift, but its model sampling "
             f"({type(model.get_model_object('model_sampling')).__name__}) has none; set a shift (SkyReels-V2: 8.0)")
    return float(own) if shift == 0 else shift


def overridden_shift(model, shift):
    """The note, for the log once and the report, when the widget overrides a ModelSamplingSD3 on the MODEL (Wan
    workflows carry one before their sampler) or the shift guidance patches on it were set up with, or when the
    MODEL's model sampling is one Sample Video does not run at all (its own is SkyReels-V2's flow: only a shift of the
    MODEL's is taken, with shift 0)."""
    other = _unused_sampling(model)
    if other:
        return (f"the MODEL's model sampling ({other}) is not used: Sample Video samples SkyReels-V2's flow matching "
                f"(shift {shift:g}); use KSampler to sample with it")
    own = _own_shift(model)
    if own is None or abs(own - shift) <= 1e-6:
        return None
    sd3, ranged = "model_sampling" in model.object_patches, _step_ranged(model)
    note = (f"shift {shift:g} runs; the MODEL's ModelSamplingSD3 shift {own:g} is not used (set Sample Video's shift "
            "to 0 to use it)") if sd3 else f"shift {shift:g} runs, the MODEL's own is {own:g}" if ranged else None
    if ranged:
        note += (f"; a guidance patch on the MODEL with a step range (SkipLayerGuidanceDiT's start and end percent) "
                 f"turned it into noise levels at shift {own:g}, so it acts at other steps"
                 + ("" if sd3 else f": put ModelSamplingSD3 (shift {shift:g}) before it, and shift 0 here"))
    return note


def _step_ranged(model):
    """Whether a guidance patch on the MODEL holds a step range as noise levels, worked out with the MODEL's shift
    when its node ran: core's SkipLayerGuidanceDiT (and its Simple one) keep them as sigma_start / sigma_end."""
    opts = model.model_options
    patches = [opts.get("sampler_cfg_function"), opts.get("sampler_calc_cond_batch_function"),
               *opts.get("sampler_pre_cfg_function", []), *opts.get("sampler_post_cfg_function", [])]
    return any({"sigma_start", "sigma_end"} & set(getattr(getattr(p, "__code__", None), "co_freevars", ()))
               for p in patches if p)


def _unused_sampling(model):
    """What of a model sampling set on the MODEL (a core node's object patch) Sample Video's flow sampling drops, e.g.
    "ModelSamplingDiscrete, V_PREDICTION" (ModelSamplingDiscrete) or "noise scale 2" (ModelNoiseScale); None if
    nothing but the shift."""
    if "model_sampling" not in model.object_patches:
        return None
    sampling = model.get_model_object("model_sampling")
    if not (isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow)
            and isinstance(sampling, comfy.model_sampling.CONST)):
        return ", ".join(base.__name__ for base in type(sampling).__bases__) or type(sampling).__name__
    dropped = [f"multiplier {sampling.multiplier:g}" if sampling.multiplier != 1000 else "",
               f"noise scale {sampling.noise_scale:g}" if getattr(sampling, "noise_scale", 1.0) != 1.0 else ""]
    return ", ".join(d for d in dropped if d) or None


# ComfyUI's patch points for UNet and Flux models, which its Wan model never calls: a node setting one does nothing
UNCALLED = ("attn1_output_patch", "attn2_output_patch", "input_block_patch", "input_block_patch_after_skip",
            "output_block_patch", "middle_block_after_patch", "emb_patch", "forward_timestep_embed_patch",
            "post_input", "noise_refiner")


def uncalled_patches(model):
    """The note when a node patched the MODEL where the host's Wan model has no such step (e.g. Normalized Attention
    Guidance: attention outputs), which KSampler leaves as silent."""
    patches = model.model_options.get("transformer_options", {}).get("patches", {})
    found = [k for k in UNCALLED if patches.get(k)]
    if found:
        return (f"this MODEL carries patches that ComfyUI's Wan model never calls ({', '.join(found)}, e.g. from "
                "Normalized Attention Guidance): they have no effect, in KSampler too")
    return None


SIGMA_READERS = ("sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function",
                 "sampler_calc_cond_batch_function")     # the model_options of patches that read one sigma per call


def frame_sigmas_unseen(model, df, ar_step):
    """The note when the MODEL has guidance patches, which may read the sampling's sigma (e.g. RescaleCFG, Skip Layer
    Guidance; which do cannot be told), where the frames of one call are at different noise levels (README)."""
    parallel = sequence_parallel.MESH_KEY in model.model_options.get("transformer_options", {})   # its batching
    readers = [k for k in SIGMA_READERS if not (parallel and k == "sampler_calc_cond_batch_function")]
    if df and ar_step and any(model.model_options.get(k) for k in readers):
        return (f"ar_step {ar_step}: guidance patches on this MODEL that read the sigma (e.g. RescaleCFG, "
                "SkipLayerGuidanceDiT, TSR - Temporal Score Rescaling) see one per model call, the noisiest frame's; "
                "frames further along are treated as that noisy")
    return None


def _scheduled(extras):
    """Whether a conditioning runs by noise level: a timestep range (ConditioningSetTimestepRange, a hook node's
    timesteps, SetClipHooks' schedule) or hooks with keyframes (SetHookKeyframes)."""
    hooks = getattr(extras.get("hooks"), "hooks", ())
    return (extras.get("start_percent", 0.0) > 0 or extras.get("end_percent", 1.0) < 1
            or extras.get("clip_start_percent", 0.0) > 0 or extras.get("clip_end_percent", 1.0) < 1
            or any(getattr(getattr(hook, "hook_keyframe", None), "keyframes", None) for hook in hooks))


def schedules_unseen(conditionings, df, ar_step):
    """The note when conditioning switches by noise level where the frames of one call are at different levels: the
    host picks the prompt (and a hook's strength) by the one sigma it sees per call, the noisiest frame's."""
    if df and ar_step and any(_scheduled(extras) for c in conditionings for _, extras in c or ()):
        return (f"ar_step {ar_step}: conditioning scheduled by noise level (ConditioningSetTimestepRange, hook "
                "keyframes) switches at the noisiest frame's level, one per model call; frames further along switch "
                "later than their own level says, or not at all")
    return None


def check_frames(widget, n):
    if n < 1 or (n - 1) % 4:
        fail(f"{widget}: {n} is not 4k+1; use {max(1, (n - 1) // 4 * 4 + 1)} or {(n - 1) // 4 * 4 + 5}")


def window_failed(model, error, i, n, frames, total, end):
    """The error to raise for a model call that failed in a DF window of another frame count than the video's, on a
    MODEL whose layers another node patched, maybe for the latent's frame count (which KSampler always gives, a window
    not); None lets the host's own error through (out of memory, our own message, or nothing of the kind)."""
    if frames == total or comfy.model_management.is_oom(error) or str(error).startswith("Sample Video:"):
        return None      # (Cancel is no Exception: not here)
    patches = [v for k, v in model.object_patches.items() if k.startswith("diffusion_model.")]   # this pack's: none
    if not patches:
        return None
    names = list(dict.fromkeys(describe(getattr(v, "__func__", v)) for v in patches))
    cause = f"{type(error).__name__}: {first_line(error).rstrip('.')}"
    fixes = ["make base_num_frames at least frames (one window)"] if n > 1 else []
    if end:
        fixes.append("leave out end_image (it adds a frame after the video's)")
    return ValueError(
        f"Sample Video: diffusion forcing window {i + 1} of {n} gives the model {frames} latent frames (the video has "
        f"{total}), and a model call failed there: {cause}. The MODEL carries {len(patches)} patch(es) of its layers "
        f"from another node, {', '.join(names)}: a node set up for the latent's frame count (e.g. KJNodes' WanVideo "
        f"Enhance A Video, whose latent input gives it) cannot run on a window of another length; "
        f"{' or '.join(fixes)}, or remove that node")


def guided_cfg(df, cfg):
    """SkyReels-V2's DiffusionForcingPipeline guides only above cfg 1 (do_classifier_free_guidance); below it runs
    the positive prompt alone, as cfg 1 (its T2V / I2V pipelines, like the host, guide at any cfg)."""
    return 1.0 if df and cfg < 1 else cfg


class Job:
    def __init__(self, model, positive, negative, seed, steps, cfg, shift, sampler, fps, vae, shape, df, opts,
                 noise=NOISE[0]):
        addnoise = opts.get("addnoise_condition", 0) if df else 0
        self.model = per_frame.patch(model, shift, model_timesteps(steps, shift, addnoise))
        self.model.model_options.setdefault("transformer_options", {})[fps_term.KEY] = fps
        if df and opts.get("causal_attention", False):     # a DF widget (standard mode has none); a clone of the above
            self.model = video_attention.install(self.model)
            self.model.model_options["transformer_options"][video_attention.CAUSAL_KEY] = opts["causal_block_size"]
        self.cfg = guided_cfg(df, cfg)
        self.positives, self.negative, self.seed = [positive], negative, seed
        self.sampler, self.vae, self.shape, self.df, self.opts = sampler, vae, shape, df, opts
        self.steps, self.fps, self.shift, self.sigmas = steps, fps, shift, flow_sigmas(steps, shift)
        self.prefix = self.prefix_pixels = self.end = None
        self.length_from = "frames"      # the input that sets the video's length: frames, or a connected latent
        # With a vae, the video as SkyReels-V2 assembles it (`_add_pixels`); windows are decoded for the overlap anyway.
        # A parallel run's other ranks keep only the frames the next window starts from: the host takes rank 0's.
        self.images, self.images_made = None, 0
        self.whole_video = sequence_parallel.is_first_rank(self.model)
        self.model_seconds = 0.0
        unguided = (f"cfg {cfg:g}: diffusion forcing guides only above 1, as SkyReels-V2's DiffusionForcingPipeline; "
                    "the positive prompt runs alone, as cfg 1") if self.cfg != cfg else None
        notes = (fps_term.lost(model), overridden_shift(model, shift), uncalled_patches(model),
                 frame_sigmas_unseen(model, df, opts.get("ar_step")), unguided)
        self.notes = []
        for note in filter(None, notes):
            self.note(note)
        self._seed_noise(noise == NOISE[1], seed)

    def note(self, text):
        """A line of the report that the log says too, once."""
        log_once(text, f"Sample Video: {text}")
        self.notes.append(text)

    def _seed_noise(self, gpu, seed):
        """ComfyUI's noise: one CPU stream for the whole run, window after window, then addnoise draws, in a fixed
        order; its first draw is the first window's noise, as the host's prepare_noise(latent, seed). SkyReels-V2's
        (`gpu`): two streams on the model's device, the windows' from the seed and addnoise's from a new generator's
        default seed, in bf16 in diffusion forcing (its DF pipeline draws in its transformer's dtype, and keeps its
        latents in it between steps; T2V and I2V in float32)."""
        device = self.model.load_device if gpu else torch.device("cpu")
        try:
            self.generator = torch.Generator(device).manual_seed(seed)
        except RuntimeError as e:     # e.g. DirectML: torch seeds no generator there
            self.note(f"noise: gpu (SkyReels-V2) needs a seeded generator on {device}, which torch does not offer "
                      f"({first_line(e)}): drawn on the CPU as ComfyUI does")
            gpu, device = False, torch.device("cpu")
            self.generator = torch.Generator().manual_seed(seed)
        self.latent_dtype = torch.bfloat16 if gpu and self.df else None    # None: the host's float32
        self.noise_dtype = self.latent_dtype or torch.float32
        self.addnoise_generator = torch.Generator(device) if gpu else self.generator
        self.agree = gpu    # parallel ranks on GPUs of other sizes draw other numbers: they take rank 0's
        if gpu:
            where = "" if device.type == "cuda" else " (their scripts draw on CUDA: only an NVIDIA GPU gives theirs)"
            kept = ", and the latents kept in bfloat16 between steps as their DF pipeline keeps them" if self.df else ""
            self.notes.append(f"noise: drawn on {device} (the model's device) in {str(self.noise_dtype)[6:]}, as "
                              f"SkyReels-V2's scripts draw it{where}{kept}")

    def _draw(self, generator, shape):
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=self.noise_dtype)
        if self.agree:
            noise = sequence_parallel.agree(self.model, noise)
        return noise.cpu().float()

    def set_prefix(self, start_image, prefix_video):
        if start_image is None and prefix_video is None:
            return
        if start_image is not None and prefix_video is not None:
            fail("start_image / prefix_video: connect one; a continued video starts from its own last frames")
        if not self.df:
            fail("start_image / prefix_video need mode 'diffusion forcing' (for the I2V model use core "
                 "WanImageToVideo into positive/negative/latent instead)")
        if self.vae is None:
            fail("start_image / prefix_video need a vae connected to encode them")
        self._check_orientation("start_image" if prefix_video is None else "prefix_video",
                                start_image if prefix_video is None else prefix_video)
        self._check_prefix_blocks(start_image, prefix_video)
        if prefix_video is not None:
            check_frames("overlap_history", self.opts["overlap_history"])
            # SkyReels-V2 continues a video with its own pixels, not a decode of them (extend_video): all of its
            # last overlap_history frames, also those after the whole causal blocks that are encoded.
            own = self._fit(prefix_video[-self.opts["overlap_history"]:])[None]
            self.prefix_pixels = own.expand(self.shape[0], -1, -1, -1, -1)
            pixels = self._tail_pixels(own)
        else:
            pixels = self._tail_pixels(self._fit_picture(start_image)[None])
        self.prefix = self._encode(pixels).expand(self.shape[0], -1, -1, -1, -1)

    def _check_prefix_blocks(self, start_image, prefix_video):
        """The frames a video starts from must give at least one whole causal block of latent frames: say what
        gives more (a start image is always one latent frame; a prefix video gives its last overlap_history frames)."""
        cbs, overlap = self.opts["causal_block_size"], self.opts["overlap_history"]
        need = video_frames(cbs)
        if start_image is not None and cbs > 1:
            fail(f"start_image: one frame gives 1 latent frame, fewer than causal_block_size {cbs}; use "
                 f"causal_block_size 1, or connect the first {need} or more frames as prefix_video instead")
        given = None if prefix_video is None else min(overlap, prefix_video.shape[0])
        if given is not None and given < need:
            fixes = [f"overlap_history {need} or more"] * (overlap < need)
            fixes += [f"a prefix_video of {need} or more frames"] * (prefix_video.shape[0] < need)
            fail(f"prefix_video: its last {given} frames (overlap_history {overlap}) give {latent_frames(given)} "
                 f"latent frame(s), fewer than causal_block_size {cbs}; use causal_block_size 1, or "
                 f"{' and '.join(fixes)}")

    def set_end(self, end_image):
        """SkyReels-V2's end image: one clean latent frame (timestep 0) after the last window's, not in the output."""
        if end_image is None:
            return
        if not self.df:
            fail("end_image: needs mode 'diffusion forcing'")
        if self.vae is None:
            fail("end_image: needs a vae connected to encode it")
        if self.opts["causal_block_size"] != 1:
            fail(f"end_image: needs causal_block_size 1, not {self.opts['causal_block_size']} (SkyReels-V2 appends the "
                 "end image as one latent frame, which larger causal blocks cannot hold)")
        self._check_orientation("end_image", end_image)
        self.end = self._encode(self._fit_picture(end_image)[None]).expand(self.shape[0], -1, -1, -1, -1)

    def _check_orientation(self, name, images):
        """The note when a portrait picture starts a landscape video or the other way round: most of it is cropped
        away. SkyReels-V2's script turns the video to the picture instead; here width and height stay the node's."""
        h, w, out_h, out_w = images.shape[1], images.shape[2], self.shape[3] * 8, self.shape[4] * 8
        if (h - w) * (out_h - out_w) < 0:
            left, top, right, bottom = aspect_crop(w, h, out_w, out_h)
            turned = f"{'portrait' if h > w else 'landscape'} video" + (
                " as SkyReels-V2 makes one" if name != "prefix_video" else "")   # its script turns for images only
            self.note(f"{name}: {w}x{h}, {'portrait' if h > w else 'landscape'}, for a {out_w}x{out_h} video: "
                      f"{(right - left) * (bottom - top) / (w * h):.0%} of it is kept; for a {turned}, set width "
                      f"{out_h} and height {out_w}")

    def _fit_picture(self, images):
        """The first image [1, H, W, C] at the output size as SkyReels-V2's script makes a start / end image: cropped
        to the output's aspect (its resizecrop), then PIL's bicubic resize (its pipeline) of the 8-bit picture."""
        h, w = self.shape[3] * 8, self.shape[4] * 8
        picture = images[0, :, :, :3]
        if picture.shape[:2] == (h, w):
            return picture[None]
        pil = Image.fromarray((picture * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
        pil = pil.crop(aspect_crop(*pil.size, w, h)).resize((w, h), Image.BICUBIC)
        return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255)[None].to(picture)

    def _fit(self, pixels):
        """Frames [F, H, W, C] at the output size (bilinear, center crop), RGB."""
        h, w = self.shape[3] * 8, self.shape[4] * 8
        if pixels.shape[1] != h or pixels.shape[2] != w:
            pixels = comfy.utils.common_upscale(pixels.movedim(-1, 1), w, h, "bilinear", "center").movedim(1, -1)
        return pixels[:, :, :, :3]

    def _tail_pixels(self, videos):
        """The frames of each video [B, frames, H, W, C] that SkyReels-V2 encodes to carry it on, at the output
        size, RGB: of its last overlap_history frames, the oldest whose latents make whole causal blocks. The VAE
        is causal, so their latents are those of the first frames of the whole tail."""
        cbs = self.opts["causal_block_size"]
        available = min(self.opts["overlap_history"], videos.shape[1])
        keep = latent_frames(available) // cbs * cbs   # at least one block: _check_prefix_blocks and plans() see to it
        return torch.stack([self._fit(video[-available:][:video_frames(keep)]) for video in videos])

    def _encode(self, videos):
        return sequence_parallel.agree(self.model, torch.cat([self.vae.encode(pixels) for pixels in videos]))

    def _add_pixels(self, window, overlap, first):
        """Decode a window alone and join its frames to the video, dropping those of its overlap (made again by
        this window, already in the video), as SkyReels-V2 does. A prefix video's frames stay its own."""
        pixels = self.vae.decode(window)                  # [B * frames, H, W, C] or [B, frames, H, W, C]
        pixels = pixels.reshape(window.shape[0], -1, *pixels.shape[-3:])[:, video_frames(overlap) if overlap else 0:]
        if first and self.prefix_pixels is not None:
            own = self.prefix_pixels.to(pixels)[:, :pixels.shape[1]]
            pixels = torch.cat([own, pixels[:, own.shape[1]:]], dim=1)
        if not self.whole_video:     # SkyReels-V2's last overlap_history frames, all `_next_prefix` reads
            held = pixels if self.images is None else torch.cat([self.images, pixels.to(self.images)], dim=1)
            self.images = held[:, -self.opts["overlap_history"]:].to(comfy.model_management.intermediate_dtype(),
                                                                       copy=True)   # not a view of the window
            self.images_made = self.images.shape[1]
            return
        if self.images is None:     # the whole video, filled window by window (no second copy to join them), in the
            # host's VAE Decode's dtype (fp16 under --fp16-intermediates); in RAM, as a GPU's memory goes to sampling
            self.images = torch.empty(pixels.shape[0], video_frames(self.shape[2]), *pixels.shape[2:],
                                      dtype=comfy.model_management.intermediate_dtype())
        self.images[:, self.images_made:self.images_made + pixels.shape[1]] = pixels
        self.images_made += pixels.shape[1]

    def _next_prefix(self, parts, keep, next_overlap):
        """The next window's prefix: the oldest `keep` of the last `next_overlap` latent frames made so far (`parts`:
        each window's new frames). With a VAE, as SkyReels-V2: the video's last overlap_history pixels, encoded."""
        if self.vae is None:    # a copy: a view would hold every frame made so far through the next window
            return torch.cat(parts, dim=2)[:, :, -next_overlap:][:, :, :keep].clone()
        return self._encode(self._tail_pixels(self.images[:, :self.images_made]))

    def plans(self):
        """[(prefix, overlap, length, plan)] of every window: `prefix` clean frames start it, and the first `overlap`
        frames of a later window repeat the window before (SkyReels-V2 lays windows out by the whole overlap, and
        starts each with the whole causal blocks of it: frames prefix..overlap are made again, then dropped)."""
        o, total, cbs = self.opts, self.shape[2], self.opts["causal_block_size"]
        if not self.df:
            return [(0, 0, total, None)]
        check_frames("base_num_frames", o["base_num_frames"])
        base, overlap = latent_frames(o["base_num_frames"]), latent_frames(o["overlap_history"])
        keep = overlap // cbs * cbs
        if total > base:
            check_frames("overlap_history", o["overlap_history"])
            if keep == 0:
                fail(f"overlap_history: {o['overlap_history']} frames are {overlap} latent frame(s), fewer than "
                     f"causal_block_size {cbs}; use at least {video_frames(cbs)}")
            if overlap >= base:
                fail(f"overlap_history ({o['overlap_history']}) must be shorter than base_num_frames "
                     f"({o['base_num_frames']})")
        if total > base and base % cbs:
            fail(f"causal_block_size: base_num_frames {o['base_num_frames']} gives {base} latent frames, not whole "
                 f"blocks of {cbs}; {self._base_advice(total, base, overlap, cbs)}, or causal_block_size 1")
        wins = [(keep, overlap, length) for _, length in forcing.windows(total, base, overlap)]
        first = 0 if self.prefix is None else self.prefix.shape[2]
        if first >= wins[0][2]:
            given = ("prefix_video (its last overlap_history frames)" if self.prefix_pixels is not None
                     else "start_image")
            fail(f"{self.length_from}: {video_frames(total)} frames leave no frame to make after the {first} latent "
                 f"frame(s) that {given} gives; make it more than {video_frames(first)}")
        wins[0] = (first, 0, wins[0][2])
        if o["addnoise_condition"] > 50 and (first or len(wins) > 1):      # SkyReels-V2's script warns above 60
            self.note(f"addnoise_condition {o['addnoise_condition']}: SkyReels-V2 advises 20 and at most 50; more "
                      "noise on the frames carried into a window can make it drift from them")
        out = []
        for i, (prefix, repeated, length) in enumerate(wins):
            if length % cbs:
                fits = [str(video_frames(n)) for n in forcing.whole_blocks(total, base, overlap, cbs) if n]
                fail(f"causal_block_size: {video_frames(total)} frames make window {i + 1} of {len(wins)} hold "
                     f"{length} latent frames, not whole blocks of {cbs}; " + (
                         f"make the video {' or '.join(fits)} frames (with base_num_frames {o['base_num_frames']}, "
                         f"overlap_history {o['overlap_history']}), or " if fits else "") + "set causal_block_size 1")
            end = self.end is not None and i + 1 == len(wins)
            plan = forcing.timestep_matrix(length + end, self.steps, o["ar_step"], prefix, cbs)   # whole blocks: above
            out.append((prefix, repeated, length, forcing.clean_end(plan, 1) if end else plan))
        return out

    @staticmethod
    def _base_advice(total, base, overlap, cbs):
        """base_num_frames values in whole blocks with which this video's windows all hold whole blocks; where none
        suits its length, the nearest such value with the video lengths that suit it (one message, not two)."""
        fits = [video_frames(n) for n in forcing.whole_block_bases(total, base, overlap, cbs) if n]
        if fits:
            return f"use base_num_frames {' or '.join(map(str, fits))}"
        n = next(n for n in (base // cbs * cbs, base // cbs * cbs + cbs) if n > overlap)
        lengths = [str(video_frames(m)) for m in forcing.whole_blocks(total, n, overlap, cbs) if m]
        return f"use base_num_frames {video_frames(n)}" + (f" with {' or '.join(lengths)} frames" if lengths else "")

    def _check_memory(self):
        """A video this machine cannot hold (RAM and swap) is refused before sampling, not when its first window is
        done: the latent, and with a vae the images, are held whole."""
        b, c, t, h, w = self.shape
        pixels = 0 if self.vae is None or not self.whole_video else (
            h * w * self.vae.spacial_compression_decode() ** 2 * getattr(self.vae, "output_channels", 3)
            * comfy.model_management.intermediate_dtype().itemsize)
        per_latent_frame = b * (c * h * w * 4 + 4 * pixels)    # 4 frames of pixels a latent frame, float32 latents
        need = b * (c * h * w * t * 4 + video_frames(t) * pixels)
        ram, swap = psutil.virtual_memory().total, psutil.swap_memory().total
        # Windows grows a system-managed page file up to 3x RAM (its size now is what psutil gives); macOS's swap
        # grows as the disk allows: only what cannot fit is refused.
        have = ram + (max(swap, 3 * ram) if sys.platform == "win32" else swap)
        if need > have and sys.platform != "darwin":
            what = "latent and images" if pixels else "latent"
            batch = f" in a batch of {b}" if b > 1 else ""
            fit = video_frames(have // per_latent_frame) if have >= per_latent_frame else 0
            fail(f"{self.length_from}: {video_frames(t)} frames of {w * 8}x{h * 8}{batch} need {need / 2**30:.1f} GiB "
                 f"for the video's {what}, held whole, and this machine has {have / 2**30:.1f} GiB (RAM and swap); "
                 f"make at most {fit} frames at this size, or the video in parts, each continuing the last "
                 "(prefix_video)")

    def run(self):
        windows = self.plans()
        self._check_memory()
        counts = [self.steps if plan is None else plan.rows for *_, plan in windows]     # model calls
        calls = sum(counts)
        progress = latent_preview.prepare_callback(self.model, calls)
        attention_before = run_report.attention_counts(self.model)
        teacache_before = teacache_hooks.counts(self.model)
        meter = run_report.Meter(self.model.load_device, self.model)
        parts, carry, given = [], self.prefix, len(self.positives)
        if given > len(windows):
            self.note(f"window_prompts: {given - 1} given for {len(windows) - 1} later window(s); the last "
                      f"{given - len(windows)} not used")
        for i, (prefix, overlap, length, plan) in enumerate(windows):
            shape = [self.shape[0], self.shape[1], length, *self.shape[3:]]
            end = self.end if i + 1 == len(windows) else None
            try:
                out = self._window(shape, self.positives[min(i, given - 1)], carry if prefix else None, plan,
                                   progress, sum(counts[:i]), calls, end)
            except Exception as e:
                failed = window_failed(self.model, e, i, len(windows), length + (0 if end is None else end.shape[2]),
                                       self.shape[2], end is not None)
                if failed is None:
                    raise
                raise failed from e
            if end is not None:
                out = out[:, :, :-end.shape[2]]
            parts.append(out[:, :, overlap:])
            if self.vae is not None and (self.whole_video or i + 1 < len(windows)):
                self._add_pixels(out, overlap, i == 0)
            if i + 1 < len(windows):
                carry = self._next_prefix(parts, *windows[i + 1][:2])
        meter.finish()
        samples = torch.cat(parts, dim=2)
        images = None if self.images is None else self.images.flatten(0, 1)
        return samples, self._report(windows, calls, meter, attention_before, teacache_before, samples), images

    def _window(self, shape, positive, prefix, plan, progress, offset, total, end):
        noise = self._draw(self.generator, shape)
        if end is not None:     # as SkyReels-V2: the window's noise drawn, then the end image's frames appended
            noise = torch.cat([noise, torch.zeros(*shape[:2], end.shape[2], *shape[3:])], dim=2)
        latent = torch.zeros(noise.shape)
        addnoise = self.opts["addnoise_condition"] if prefix is not None else 0
        total_calls = self.steps if plan is None else plan.rows

        def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
            extra_args = dict(extra_args or {})
            options = extra_args.pop("model_options", {})
            ones = x.new_ones(x.shape[0])
            calls = [0]

            def denoise(x_in, sigma):
                comfy.model_management.throw_exception_if_processing_interrupted()
                sigma = sigma.to(x_in.device)
                to = {**options.get("transformer_options", {}), CALL: calls[0], CALLS: total_calls}
                if sigma.ndim:
                    to[per_frame.KEY] = sigma
                started = run_report.clock(x_in.device)
                x0 = model(x_in, sigma.max() * ones, model_options={**options, "transformer_options": to},
                           **extra_args)
                self.model_seconds += run_report.clock(x_in.device) - started
                calls[0] += 1
                return x0

            def step(i, x0, x_now):
                # x0 holds the frames of this model call; the preview shows its first one (as after KSampler). A
                # window's first frames carried over from the one before (or a start image) are already made:
                # show the first frame this window makes, or the preview would stay on the old frame all window.
                if plan is not None and plan.prefix:
                    x0 = x0[:, :, min(plan.prefix, x0.shape[2] - 1):]
                progress(offset + i, x0, x_now, total)

            if plan is None:
                return solvers.sample(denoise, x, sigmas.cpu(), self.sampler, step)
            x = x.clone()
            if prefix is not None:
                x[:, :, :prefix.shape[2]] = self.model.model.process_latent_in(prefix.float()).to(x)
            if end is not None:
                x[:, :, -end.shape[2]:] = self.model.model.process_latent_in(end.float()).to(x)
            return forcing.sample_window(denoise, x, sigmas.cpu(), plan, self.sampler, addnoise_condition=addnoise,
                                         draw=lambda shape: self._draw(self.addnoise_generator, shape),
                                         callback=step, dtype=self.latent_dtype)

        sampler = comfy.samplers.KSAMPLER(sampler_function)
        return comfy.sample.sample_custom(self.model, noise, self.cfg, sampler, self.sigmas, positive,
                                          self.negative, latent, callback=None, disable_pbar=True, seed=self.seed)

    def _teacache_line(self, before):
        cache = self.model.model_options["transformer_options"].get(teacache_hooks.KEY)
        if cache is None:
            return []
        skipped, calls = sequence_parallel.cfg_total(self.model, [cache.skipped - before[1], cache.calls - before[0]])
        return [f"TeaCache: {skipped} of {calls} model calls skipped (threshold {cache.threshold:g}"
                f"{', retention steps' if cache.retention else ''}; cond and uncond counted apart)"]

    def _report(self, windows, calls, meter, attention_before, teacache_before, samples):
        weights, fp8_matmul, has_fp8 = run_report.weights_summary(self.model)
        compute = self.model.model.get_dtype_inference()
        matmul = run_report.matmul_summary(fp8_matmul, has_fp8, meter.products, compute, meter.fallback_reasons)
        bypassed = run_report.bypassed_by(self.model)     # no attention call reached ours while another forward ran
        lines = [
            f"Sample Video: {'diffusion forcing' if self.df else 'standard'}, {self.sampler} {self.steps} steps, cfg "
            f"{self.cfg}, shift {self.shift:g}; {len(windows)} window(s), {samples.shape[2]} latent frames = "
            f"{video_frames(samples.shape[2])} video frames",
            f"{calls} model calls, {self.model_seconds / max(calls, 1):.3f} s per call ({self.model_seconds:.1f} s "
            f"in the model of {meter.seconds:.1f} s in all); {meter.memory}",
            f"{weights}; {matmul}",
            *run_report.patches_lines(self.model),
            run_report.attention_summary(self.model, attention_before),
            *([foreign_forward.sage_bypassed(", ".join(bypassed))] if bypassed else []),
            *self._teacache_line(teacache_before),
            *self.notes,
        ]
        if not samples.isfinite().all():    # black or broken frames otherwise come with no word
            bad = (~samples.isfinite()).float().mean().item()
            lines.insert(0, f"WARNING: {bad:.0%} of the result is NaN/Inf: the inputs hold such values, or the model "
                            "overflowed (e.g. computing in fp16)")
            log.warning(lines[0])
        if self.df:
            o = self.opts
            start = ", a video continued" if self.prefix_pixels is not None else ", start image" if (
                self.prefix is not None) else ""
            lines.insert(1, f"diffusion forcing: ar_step {o['ar_step']}, causal_block_size {o['causal_block_size']}"
                            f"{' (causal attention)' if o.get('causal_attention') else ''}, "
                            f"base_num_frames {o['base_num_frames']}, overlap_history {o['overlap_history']} "
                            f"({'through the VAE' if self.vae is not None else 'in latent space'}), addnoise_condition "
                            f"{o['addnoise_condition']}, fps {self.fps}{start}"
                            f"{', end image' if self.end is not None else ''}")
        report = "\n".join(lines)
        log.info(report)
        return report
