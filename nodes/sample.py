"""Sample Video: SkyReels-V2 sampling (flow UniPC or Euler), standard or Diffusion Forcing, with long videos made
window by window inside the node (`sample_job.Job`)."""
import math

import comfy.hooks
from comfy_api.latest import io
from comfy_execution.graph_utils import ExecutionBlocker

from ..attention.sage import log_once
from ..sampling import solvers
from ..sampling.schedule import latent_frames, video_frames
from .adapters import parallel_pool, parallel_run
from .parallel import PARALLEL
from .adapters.sample_job import NOISE, Job, check_frames, fail, model_shift, overridden_shift, schedules_unseen

# The DF widgets, in the order they had before `mode` became a dynamic combo: the frontend restores a saved
# workflow's values by position, and these came right after `mode`, so old workflows load unchanged.
DF_WIDGETS = [
    io.Int.Input("base_num_frames", default=97, min=1, max=100001, step=4,
                 tooltip="Frames the model sees at once (4k+1). Longer videos are made in windows."),
    io.Int.Input("overlap_history", default=17, min=1, max=100001, step=4,
                 tooltip="Frames of each window that start the next one (4k+1)."),
    io.Int.Input("ar_step", default=0, min=0, max=1000,
                 tooltip="0 synchronous; >0 asynchronous, each causal block this many steps behind the one "
                         "before (SkyReels-V2 uses 5)."),
    io.Int.Input("causal_block_size", default=1, min=1, max=100,
                 tooltip="Latent frames that share a noise level (SkyReels-V2 uses 5 with ar_step 5)."),
    io.Int.Input("addnoise_condition", default=0, min=0, max=1000,
                 tooltip="Noise (in timesteps) added to the prefix frames the model sees; 20 helps long videos "
                         "stay consistent (SkyReels-V2: at most 50)."),
    io.Boolean.Input("causal_attention", default=False, optional=True,
                     tooltip="Frames attend only to their own and earlier causal blocks (SkyReels-V2's "
                             "--causal_attention). Also in parallel runs."),
]
DF_DEFAULTS = {widget.id: widget.default for widget in DF_WIDGETS}
NODE_ID = "SkyReelsSampleVideo"
WINDOW_PROMPTS = [f"window_{i}" for i in range(2, 18)]
LATENT_CHANNELS = 16     # the Wan 2.1 VAE's


class SampleVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_ID,
            display_name="Sample Video",
            category="SkyReels-V2",
            search_aliases=["diffusion forcing", "extend video", "long video", "wan 2.1 sampler"],
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
                               tooltip="Flow shift of the sigma schedule (SkyReels-V2: 8.0; for I2V its README says "
                                       "3.0, its table 5.0). 0: the MODEL's own (e.g. from ModelSamplingSD3; "
                                       "ComfyUI's default for Wan is 8.0)."),
                io.Combo.Input("sampler", options=list(solvers.SOLVERS), default="unipc",
                               tooltip="unipc: SkyReels-V2's flow UniPC (bh2, order 2). euler: ComfyUI's euler."),
                io.Int.Input("fps", default=24, min=1, max=120,
                             tooltip="Frame rate the DF-1.3B model conditions on (16 or other); other models "
                                     "ignore it. The fps output gives it to Create Video."),
                io.DynamicCombo.Input("mode", options=[io.DynamicCombo.Option("standard", []),
                                                       io.DynamicCombo.Option("diffusion forcing", DF_WIDGETS)],
                                      tooltip="diffusion forcing: a noise level per frame (SkyReels-V2 DF models); "
                                              "needed for start_image, prefix_video, end_image and videos longer "
                                              "than base_num_frames. Its own widgets show under it."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Encodes start_image / prefix_video / end_image; with it, long-video windows "
                                     "overlap through pixels as SkyReels-V2 does. Without it they overlap in latent "
                                     "space: faster, but a window then starts with a 4-frame latent where the model "
                                     "expects the 1-frame latent of a first frame, which can show at the seams."),
                io.Image.Input("start_image", optional=True,
                               tooltip="DF: the first frame (needs vae and causal_block_size 1; not with "
                                       "prefix_video)."),
                io.Image.Input("prefix_video", optional=True,
                               tooltip="DF: continue this video; its last overlap_history frames start the output "
                                       "(needs vae)."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Takes the size from this latent instead of width/height/frames."),
                PARALLEL.Input("parallel", optional=True,
                               tooltip="From Parallel Config: run on several GPUs (sequence parallel). The MODEL "
                                       "must come from Load FP8 SkyReels Model (Patch SageAttention, TeaCache "
                                       "LoRAs and ModelSamplingSD3 allowed)."),
                # last, so that saved workflows keep their inputs in place
                io.Image.Input("end_image", optional=True,
                               tooltip="DF: the frame the video leads to (needs vae, causal_block_size 1). As "
                                       "SkyReels-V2's --end_image: the model sees it after the last frame, clean; "
                                       "it is not one of the output's frames."),
                io.Autogrow.Input("window_prompts", optional=True,
                                  template=io.Autogrow.TemplateNames(
                                      io.Conditioning.Input("positive", tooltip="The positive prompt of this window."),
                                      names=WINDOW_PROMPTS, min=0),
                                  tooltip="DF long videos: a prompt per window. positive is the first window's; "
                                          "window_2 the second's, and so on; the last one given carries on."),
                # last, so that saved workflows keep their widget values in place
                io.Combo.Input("noise", options=NOISE, default=NOISE[0], optional=True,
                               tooltip="Where the seed's noise is drawn. cpu: as ComfyUI's KSampler, the same noise "
                                       "on every machine. gpu: as SkyReels-V2's scripts (in diffusion forcing also "
                                       "their bf16 latents between steps), so a seed starts from their noise on a "
                                       "GPU with the same number of multiprocessors (a GPU's random numbers depend "
                                       "on it); the video then differs from theirs as the model's arithmetic does "
                                       "(most with FP8 weights)."),
            ],
            # images comes last so that saved workflows keep their links to LATENT and report.
            outputs=[io.Latent.Output(), io.String.Output(display_name="report"),
                     io.Image.Output(display_name="images",
                                     tooltip="The video as SkyReels-V2 assembles it (needs vae): each window decoded "
                                             "on its own, joined in pixels. VAE Decode of LATENT decodes the windows "
                                             "together instead, which differs after each seam."),
                     # last too: Create Video's fps is a FLOAT, this widget an INT, so one primitive cannot set both
                     io.Float.Output(display_name="fps",
                                     tooltip="The fps widget, for Create Video's fps: the video plays at the rate "
                                             "the model was told.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, width, height, frames, seed, steps, cfg, shift, sampler, fps, mode=None,
                vae=None, start_image=None, end_image=None, prefix_video=None, latent=None, parallel=None,
                window_prompts=None, noise=None) -> io.NodeOutput:
        # mode: {"mode": "standard"} or {"mode": "diffusion forcing", "base_num_frames": ..., ...}; the host leaves
        # it out of a prompt whose mode is none of its options, and gives None for an optional widget not sent.
        if not isinstance(mode, dict) or mode.get("mode") not in ("standard", "diffusion forcing"):
            fail("mode: must be 'standard' or 'diffusion forcing'")
        chosen = {k: v for k, v in mode.items() if v is not None}
        widgets = dict(width=width, height=height, frames=frames, seed=seed, steps=steps, cfg=cfg, shift=shift,
                       sampler=sampler, fps=fps, **{**DF_DEFAULTS, **chosen}, latent=latent,
                       noise=noise or NOISE[0])     # an API prompt from before the widget has none
        inputs = dict(vae=vae, start_image=start_image, end_image=end_image, prefix_video=prefix_video,
                      window_prompts=window_positives(positive, window_prompts or {}))
        for name in ("cfg", "shift"):   # JSON's NaN passes the host's range check, and would make a video of NaN
            if not math.isfinite(widgets[name]):
                fail(f"{name}: {widgets[name]} is not a number; give one from 0 to 100")
        check_model(model)
        named = {"positive": positive, "negative": negative, **(window_prompts or {})}
        check_conditioning(model, named, mode["mode"] == "diffusion forcing")
        check_conditioned_frames(named, widgets, mode["mode"] == "diffusion forcing", end_image)
        check_vae(vae)
        for name, images in (("start_image", start_image), ("end_image", end_image), ("prefix_video", prefix_video)):
            if images is not None and images.shape[0] == 0:
                fail(f"{name}: holds no image (an empty batch): connect one, or nothing")
            if images is not None and (images.ndim != 4 or 0 in images.shape[1:3] or images.shape[3] < 3):
                fail(f"{name}: holds images of shape {list(images.shape)}, not [frames, height, width, 3 colours]; "
                     "connect a picture (e.g. Load Image)")   # an API prompt's 0x0 image divided by zero
            if images is not None and images.shape[0] > 1 and name != "prefix_video":     # e.g. a loaded video
                fail(f"{name}: holds {images.shape[0]} images and takes one; pick one frame with Get Image from Batch"
                     + ("; to continue a video, connect it to prefix_video" if name == "start_image" else ""))
        if parallel is not None:
            widgets["shift"] = model_shift(model, shift)
            samples, report, images = parallel_run.run(parallel, model, positive, negative, widgets, inputs)
            note = overridden_shift(model, widgets["shift"])    # the workers load the file without ModelSamplingSD3
            if note:
                log_once(note, f"Sample Video: {note}")
                *lines, layout = report.splitlines()
                report = "\n".join([*lines, note, layout])
        else:
            parallel_pool.release()      # workers kept from a parallel run give their GPUs back to this run
            samples, report, images = sample_video(model, positive, negative, **widgets, **inputs)
        # Without a vae there is no images output; the host shows this message where it is connected (the node's
        # outputs are cached by its inputs, so whether images is connected cannot decide what the node makes).
        return io.NodeOutput({"samples": samples}, report, images if images is not None else ExecutionBlocker(
            "Sample Video: images needs a vae connected (it decodes each window as SkyReels-V2 does); or decode "
            "the LATENT output with VAE Decode"), float(fps))


def upgrade_prompt(json_data):
    """An API prompt saved before `mode` was a dynamic combo names the DF widgets at the top level ("ar_step");
    the host now expects them under mode ("mode.ar_step"). Runs on every /prompt (the host's on_prompt hook), so it
    never raises: what it cannot read goes to the host's validation as it is."""
    try:
        prompt = json_data.get("prompt")
        for node in prompt.values() if isinstance(prompt, dict) else ():
            inputs = node.get("inputs") if isinstance(node, dict) and node.get("class_type") == NODE_ID else None
            if not isinstance(inputs, dict):
                continue
            for name in [n for n in DF_DEFAULTS if n in inputs]:
                value = inputs.pop(name)
                # A link (an old slot still connected in the frontend) wins over the widget value sent beside it.
                take = isinstance(value, list) or f"mode.{name}" not in inputs
                if take and inputs.get("mode") == "diffusion forcing":
                    inputs[f"mode.{name}"] = value
    except Exception:
        pass
    return json_data


def window_positives(positive, given):
    """The positive of windows 2, 3, ... up to the last connected input; an empty one carries the one before."""
    connected = [i for i, name in enumerate(WINDOW_PROMPTS) if given.get(name) is not None]
    out = [positive]
    for name in WINDOW_PROMPTS[:connected[-1] + 1] if connected else []:
        out.append(out[-1] if given.get(name) is None else given[name])
    return out[1:]


def sample_video(model, positive, negative, width, height, frames, seed, steps, cfg, shift, sampler, fps, mode,
                 vae=None, start_image=None, end_image=None, prefix_video=None, latent=None, window_prompts=(),
                 noise=NOISE[0], **df_options):
    """One run on this process's device: (samples, report, images: None without a vae); `df_options`: DF widgets."""
    if mode == "diffusion forcing" and model.model_options.get("context_handler") is not None:
        fail("mode: diffusion forcing makes long videos in its own windows (base_num_frames, overlap_history), with a "
             "noise level per frame that the MODEL's context windows (e.g. Wan Context Windows) cannot split; remove "
             "that node from the MODEL, or use mode 'standard'")
    shift = model_shift(model, shift)
    if latent is not None:
        shape = list(latent["samples"].shape)
        if len(shape) != 5 or 0 in shape:
            fail(f"latent: expected a video latent [B, C, frames, H, W], got {shape}")
        if shape[1] != LATENT_CHANNELS:     # the model's too: execute's check_model saw to it
            fail(f"latent: {shape[1]} channels; a Wan 2.1 model takes latents of {LATENT_CHANNELS} (core Empty Hunyuan "
                 "Latent Video or WanImageToVideo make them)")
        if latent.get("noise_mask") is not None:
            fail("latent: has a noise mask (e.g. Set Latent Noise Mask), which Sample Video would ignore: it makes "
                 "the whole video; use KSampler for masked sampling, or remove the mask")
        if latent["samples"].any():    # Empty Hunyuan Latent Video and the Wan conditioning nodes give zeros
            fail("latent: holds a video (e.g. from VAE Encode or a sampler), which Sample Video would ignore: it "
                 "samples from noise and takes only the latent's size; to rework a video use KSampler with a denoise "
                 "below 1, to continue one VAE Decode it into prefix_video (diffusion forcing)")
    else:
        if width % 16 or height % 16:
            fail(f"width/height: {width}x{height} must be multiples of 16 (e.g. {width // 16 * 16}x"
                 f"{height // 16 * 16})")
        check_frames("frames", frames)
        shape = [1, LATENT_CHANNELS, latent_frames(frames), height // 8, width // 8]
    job = Job(model, positive, negative, seed, steps, cfg, shift, sampler, fps, vae, shape,
              mode == "diffusion forcing", df_options, noise)
    job.length_from = "frames" if latent is None else "latent"
    job.set_prefix(start_image, prefix_video)
    job.set_end(end_image)
    job.positives += window_prompts     # the positive of each later window
    note = schedules_unseen([*job.positives, negative], job.df, df_options["ar_step"])
    if note:
        job.note(note)
    return job.run()


def check_conditioning(model, named, forcing):
    """Text conditioning as wide as the model reads it (umt5-xxl's 4096), and no extras the run would drop or
    misplace, checked per input before any step."""
    width = getattr(model.model.diffusion_model.text_embedding[0], "in_features", None)
    for name in (n for n, cond in named.items() if n != "negative" and cond is not None and not cond):
        fail(f"{name}: holds no conditioning (an empty list): connect a text encoder's, e.g. CLIP Text Encode")
    # An I2V model reads its start image as extra input channels; the others have none and would drop it.
    i2v = model.model.diffusion_model.patch_embedding.weight.shape[1] > model.model.latent_format.latent_channels
    if i2v and not any("concat_latent_image" in extras for _, extras in named["positive"]):
        fail("positive: an I2V model starts from an image: make the conditioning with WanImageToVideo (with the "
             "start image and the Wan 2.1 VAE), or load a T2V or DF model")
    for name, conditioning in named.items():
        for embedding, extras in conditioning or ():
            if width and embedding.shape[-1] != width:
                fail(f"{name}: {embedding.shape[-1]}-wide text conditioning; SkyReels-V2 reads umt5-xxl's ({width}): "
                     "encode the prompt through Load CLIP with type 'wan' (umt5_xxl)")
            if not i2v and "concat_latent_image" in extras:
                fail(f"{name}: holds a start image (e.g. from WanImageToVideo), which a T2V or DF model cannot take "
                     "and would ignore; for a start image use mode 'diffusion forcing' with start_image (DF model), "
                     "or load an I2V model")
            # ComfyUI 0.33's weight hooks look for a weight_scale attribute that quantized layers (its own too) lack,
            # deep in a run; other hooks are left to run.
            hooks = extras.get("hooks")
            if hooks is not None and hooks.get_type(comfy.hooks.EnumHookType.Weight) and any(
                    hasattr(getattr(m, "weight", None), "_qdata") for m in model.model.diffusion_model.modules()):
                fail(f"{name}: holds hook LoRAs (Create Hook LoRA into Cond Set Props), which ComfyUI 0.33 cannot "
                     "apply to FP8 weights; apply the LoRA with Load LoRA instead, or load bf16 weights (Load FP8 "
                     "SkyReels Model's weight_format bf16)")
            # A Wan model without VACE blocks ignores these (core's samplers too): the video would not follow them.
            if "vace_frames" in extras:
                fail(f"{name}: holds VACE controls (WanVaceToVideo), which a SkyReels-V2 model has no blocks for and "
                     "would ignore; load a Wan VACE model and sample it with KSampler, or remove that node")
            # Reference frames appended in time (Phantom) would take the per-frame noise levels of the video's frames.
            if forcing and "time_dim_concat" in extras:
                fail(f"{name}: holds reference frames appended in time (WanPhantomSubjectToVideo), which diffusion "
                     "forcing's per-frame noise levels do not cover; use mode 'standard'")
            # So would in-context latents appended to the video's tokens (Bernini): Wan spreads each frame's level over
            # as many tokens as the whole sequence holds per frame, so the video's own frames get their neighbours'.
            if forcing and "context_latents" in extras:
                fail(f"{name}: holds in-context latents appended to the video (BerniniConditioning), which diffusion "
                     "forcing's per-frame noise levels do not cover; use mode 'standard'")


def _partial_frames(area, window):
    """Whether a conditioning area (the host's tuple: sizes, then offsets; or "percentage" and fractions) leaves out
    some of a window's `window` latent frames: only areas with a frame dimension (video areas) can."""
    percentage = area[0] == "percentage"
    sizes = area[1:] if percentage else area
    half = len(sizes) // 2
    return half >= 3 and (sizes[0] < (1 if percentage else window) or sizes[half] > 0)


def check_conditioned_frames(named, widgets, forcing, end_image):
    """Conditioning made for a number of frames against the video this run makes, stopped here: an I2V image
    conditioning (WanImageToVideo / WanFirstLastFrameToVideo) made for another length, split by DF windows or
    lengthened by end_image; areas over part of the frames, or masks per frame split by DF windows."""
    latent = widgets.get("latent")
    if latent is not None:
        shape = getattr(latent.get("samples"), "shape", ())
        total, source = (shape[2] if len(shape) == 5 else None), "latent"
    else:
        n = widgets["frames"]
        total, source = (latent_frames(n) if n >= 1 and (n - 1) % 4 == 0 else None), "frames"
    base = widgets["base_num_frames"]
    window = min(total, latent_frames(base)) if forcing and total and base >= 1 and (base - 1) % 4 == 0 else total
    for name, conditioning in named.items():
        for _, extras in conditioning or ():
            if forcing and "area" in extras and _partial_frames(extras["area"], window or 0):
                fail(f"{name}: holds an area over part of the video's frames (e.g. Conditioning (Set Area with "
                     "Percentage for Video) with temporal below 1 or z above 0), which diffusion forcing's per-frame "
                     "noise levels do not cover; use mode 'standard', or an area over all frames")
            mask = extras.get("mask")
            masks = mask.shape[-3] if getattr(mask, "ndim", 0) >= 3 else 1
            if forcing and masks > 1 and total and window < total:
                fail(f"base_num_frames: {base}, but {name} holds a mask per frame ({masks} masks, e.g. from "
                     "ConditioningSetMask), which diffusion forcing would split into windows; set base_num_frames to "
                     f"at least {video_frames(total)}, or use mode 'standard'")
            image = extras.get("concat_latent_image")
            if image is None or image.ndim != 5 or total is None:
                continue
            made = video_frames(image.shape[2])
            what = f"{name}'s image conditioning (WanImageToVideo / WanFirstLastFrameToVideo)"
            if image.shape[2] != total:
                todo = (f"set frames to {made}, or connect that node's latent to latent" if source == "frames" else
                        "connect that node's own latent")
                given = video_frames(total) if source == "frames" else f"{video_frames(total)} frames"
                fail(f"{source}: {given}, but {what} was made for {made} frames; {todo}")
            if forcing and window < total:
                fail(f"base_num_frames: {base}, but {what} covers all {made} frames, which diffusion forcing would "
                     f"make in windows; set base_num_frames to at least {made}, or use mode 'standard'")
            if end_image is not None:
                fail(f"end_image: an I2V model takes its images from {name}'s image conditioning; for a last frame "
                     "use core WanFirstLastFrameToVideo's end_image (mode 'standard'), or a DF model")


def check_vae(vae):
    """The Wan 2.1 VAE's latents (16 channels, video): Wan 2.2's (48) or an image VAE's failed inside it."""
    made = getattr(vae, "latent_channels", "?"), getattr(vae, "latent_dim", "?")
    if vae is not None and made != (LATENT_CHANNELS, 3):
        fail(f"vae: makes {made[0]}-channel {made[1]}-D latents; SkyReels-V2 takes the Wan 2.1 VAE's "
             f"({LATENT_CHANNELS}-channel video latents): load wan_2.1_vae.safetensors, not Wan 2.2's VAE or an image "
             "model's")


def check_model(model):
    name = type(getattr(getattr(model, "model", None), "diffusion_model", None)).__name__
    if name != "WanModel":
        fail(f"model: needs a SkyReels-V2 / Wan 2.1 model (Load FP8 SkyReels Model or Load Diffusion Model), got "
             f"{name}")
    channels = model.model.latent_format.latent_channels    # Wan 2.2 TI2V-5B is a WanModel of 48-channel latents
    if channels != LATENT_CHANNELS:
        fail(f"model: takes {channels}-channel latents (e.g. Wan 2.2 TI2V-5B), SkyReels-V2 and Wan 2.1 models "
             f"{LATENT_CHANNELS}: load one of those, or sample this model with KSampler")
