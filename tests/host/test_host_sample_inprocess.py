"""Sample Video inside a fresh host process: one progress bar over all windows, the DF-1.3B fps term reaching the
model, and start image / prefix video kept as clean first frames."""
import re

from comfy_host import REPO, run_in_host
from helpers import write_tiny
from in_host import SETUP, write_models

RUN = r"""
import comfy.utils
from comfy_extras.nodes_model_advanced import ModelComputeDtype, RescaleCFG   # before generate_video_fp8 puts the pack first
from skyreels_pack.nodes.sample import SampleVideo, window_positives
from generate_video_fp8 import write_tiny_vae
write_tiny_vae(os.path.join({folder!r}, "vae.safetensors"))
vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(os.path.join({folder!r}, "vae.safetensors")))
model = load("df_bf16.safetensors")[0]
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
ARGS = dict(width=32, height=32, frames=9, seed=1, steps=3, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="diffusion forcing", base_num_frames=97, overlap_history=17, ar_step=0, causal_block_size=1,
            addnoise_condition=0)

def sample(**kw):
    return SampleVideo.execute(model, pos, neg, **nest_mode({{**ARGS, **kw}})).args[:3]

def error(**kw):
    try:
        sample(**kw)
    except ValueError as e:
        return str(e)

updates = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
long, report, _ = sample(frames=57, base_num_frames=21, overlap_history=9, ar_step=2, causal_block_size=3)
comfy.utils.set_progress_bar_global_hook(None)

f24, f30, f16 = (sample(fps=f)[0]["samples"] for f in (24, 30, 16))
no_vae_images = sample(fps=24)[2]
# a prompt per window: 21 frames in windows of 13 overlapping by 5 (4 + 2 latent frames)
other = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
windows = dict(frames=21, base_num_frames=13, overlap_history=5)
one_prompt = sample(**windows)[0]["samples"]
two_prompts = sample(**windows, window_prompts={{"window_2": other}})[0]["samples"]
extra, extra_report, _ = sample(**windows, window_prompts={{"window_2": other, "window_3": pos}})
# an empty input carries the prompt before it: window 2 keeps positive, window 3 takes window_3's (29 frames: 3 windows)
gap = sample(frames=29, base_num_frames=13, overlap_history=5, window_prompts={{"window_3": other}})[0]["samples"]
full = sample(frames=29, base_num_frames=13, overlap_history=5,
              window_prompts={{"window_2": pos, "window_3": other}})[0]["samples"]
image = torch.rand(1, 32, 32, 3, generator=g)
video = torch.rand(13, 32, 32, 3, generator=g)
with_image, image_report, _ = sample(start_image=image, vae=vae)
with_image = with_image["samples"]
with_video = sample(frames=17, prefix_video=video, overlap_history=5, vae=vae, addnoise_condition=20)[0]["samples"]
# A portrait start image for a landscape video is cropped to a strip: the report says how much is kept.
portrait = torch.rand(1, 48, 32, 3, generator=g)       # 32 wide, 48 high
orientation = [[l for l in sample(width=48, frames=5, steps=1, start_image=picture, vae=vae)[1].splitlines()
                if l.startswith("start_image")] for picture in (portrait, portrait.transpose(1, 2))]
orientation.append([l for l in sample(width=48, frames=5, steps=1, end_image=portrait, vae=vae)[1].splitlines()
                    if l.startswith("end_image")])      # an end image, the same
# A prefix video of another shape is center-cropped to the video's, as a start image is (not squeezed).
wide = torch.rand(13, 32, 64, 3, generator=g)
wide_prefix = sample(frames=17, prefix_video=wide, overlap_history=5, vae=vae)[0]["samples"][:, :, :2]
# More noise on the carried frames than SkyReels-V2 advises: a note, where frames are carried (a start image).
addnoise = [[l for l in sample(frames=5, steps=1, addnoise_condition=n, **kw)[1].splitlines()
             if l.startswith("addnoise")] for n, kw in ((60, dict(start_image=image, vae=vae)), (50, dict(
                 start_image=image, vae=vae)), (60, {{}}))]
# What the model itself is given in an asynchronous window with a prefix: one timestep per frame.
seen = []
hook = model.model.diffusion_model.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
sample(frames=17, prefix_video=video, overlap_history=5, vae=vae, addnoise_condition=20, ar_step=1, steps=2)
hook.remove()

# Batch of 2, overlap through the VAE: each item carries its own video's end, exactly its last frames.
from skyreels_pack.nodes.adapters.sample_job import Job
job = Job(model, pos, neg, 1, 2, 3.0, 8.0, "unipc", 24, vae, [2, 16, 5, 4, 4], True,
          dict(base_num_frames=13, overlap_history=5, ar_step=0, causal_block_size=1, addnoise_condition=0))
window = torch.randn(2, 16, 4, 4, 4, generator=g)
job._add_pixels(window, 0, True)
carried = job._next_prefix([window], 2, 2)
# Without a VAE the carried latent frames are a copy, not a view holding every frame made so far.
latent_carry = Job(model, pos, neg, 1, 2, 3.0, 8.0, "unipc", 24, None, [2, 16, 5, 4, 4], True,
                   job.opts)._next_prefix([window, window], 2, 2)
carry_bytes = [latent_carry.untyped_storage().nbytes(), latent_carry.numel() * latent_carry.element_size()]
# Under --fp16-intermediates the video comes out in fp16, as the host's VAE Decode makes it (two windows: the
# second carried on from the first's fp16 frames).
import comfy.cli_args
comfy.cli_args.args.fp16_intermediates = True
try:
    image_dtypes = [str(sample(frames=21, base_num_frames=13, overlap_history=5, vae=vae)[2].dtype),
                    str(vae.decode(torch.zeros(1, 16, 1, 4, 4)).dtype)]
finally:
    comfy.cli_args.args.fp16_intermediates = False
own = [vae.encode(vae.decode(window[i:i + 1]).reshape(-1, 32, 32, 3)[-5:]) for i in range(2)]
two, _, two_images = SampleVideo.execute(model, pos, neg, **nest_mode({{**ARGS, "frames": 21, "base_num_frames": 13, "overlap_history": 5}}),
                             vae=vae, latent={{"samples": torch.zeros(2, 16, 6, 4, 4)}}).args[:3]
# The on_prompt hook for API prompts saved before mode was a dynamic combo: malformed prompts pass through as
# they are, and a link sent under an old name wins over the widget value sent beside it.
from skyreels_pack.nodes.sample import upgrade_prompt
malformed = [None, {{"prompt": [1]}}, {{"prompt": "x"}}, {{"prompt": {{"4": "x"}}}},
             {{"prompt": {{"4": {{"class_type": "SkyReelsSampleVideo", "inputs": [1]}}}}}}]
upgraded = [upgrade_prompt(json.loads(json.dumps(p))) == p for p in malformed]
linked = upgrade_prompt({{"prompt": {{"4": {{"class_type": "SkyReelsSampleVideo", "inputs": {{
    "mode": "diffusion forcing", "ar_step": ["9", 0], "mode.ar_step": 0, "base_num_frames": 37,
    "mode.base_num_frames": 97}}}}}}}})["prompt"]["4"]["inputs"]
try:
    SampleVideo.execute(model, pos, neg, **{{k: v for k, v in nest_mode(ARGS).items() if k != "mode"}})
    no_mode = None
except ValueError as e:
    no_mode = str(e)

# Conditioning and latents the run would ignore or misplace are refused before any step.
def error_with(positive, latent=None, on=None, **kw):
    try:
        SampleVideo.execute(on or model, positive, neg, **nest_mode({{**ARGS, **kw}}), latent=latent)
    except ValueError as e:
        return str(e)
vace = [[pos[0][0], {{"vace_frames": [torch.zeros(1, 32, 3, 4, 4)], "vace_strength": [1.0]}}]]
phantom = [[pos[0][0], {{"time_dim_concat": torch.zeros(1, 16, 1, 4, 4)}}]]
masked = {{"samples": torch.zeros(1, 16, 3, 4, 4), "noise_mask": torch.ones(1, 1, 3, 4, 4)}}
refused = dict(vace=error_with(vace), phantom_forcing=error_with(phantom, ar_step=1),
               phantom_standard=error_with(phantom, mode="standard"), noise_mask=error_with(pos, masked),
               encoded=error_with(pos, {{"samples": torch.randn(1, 16, 3, 4, 4, generator=g)}}),
               no_frames=error_with(pos, {{"samples": torch.zeros(1, 16, 0, 4, 4)}}))
# A start image: only an I2V model reads it from the conditioning, and an I2V model needs it.
i2v = load("i2v_bf16.safetensors")[0]
image_cond = [[pos[0][0], {{"concat_latent_image": torch.zeros(1, 16, 3, 4, 4),
                            "concat_mask": torch.zeros(1, 1, 9, 4, 4)}}]]
refused.update(image_on_df=error_with(image_cond), i2v_without=error_with(pos, on=i2v, mode="standard"),
               no_positive=error_with([]), no_window_2=error_with(pos, window_prompts={{"window_2": []}}),
               empty_image=error_with(pos, vae=vae, start_image=image[:0]),
               no_pixels=error_with(pos, vae=vae, end_image=image[:, :0]),    # 0 x 0 from an API prompt
               grey=error_with(pos, vae=vae, prefix_video=image[..., :1].repeat(5, 1, 1, 1)),
               # a loaded clip used to start the video from its first frame, with no word
               clip_start=error_with(pos, vae=vae, start_image=image.repeat(13, 1, 1, 1)),
               clip_end=error_with(pos, vae=vae, end_image=image.repeat(2, 1, 1, 1)))
# VAEs of other latents, as the host loads them: Wan 2.2's (48 channels; its tiny decoder) and an image model's.
import comfy.taesd.taehv, comfy.taesd.taesd
for name, net in (("wan22", comfy.taesd.taehv.TAEHV(latent_channels=48)), ("sd", comfy.taesd.taesd.TAESD()),
                  ("flux", comfy.taesd.taesd.TAESD(latent_channels=16))):     # 16 channels, but 2-D
    refused[name] = error_with(pos, vae=comfy.sd.VAE(sd=net.state_dict()), start_image=image)
# Wan 2.2 TI2V-5B, as core Load Diffusion Model gives it: a WanModel of 48-channel latents (it failed in a step).
from skyreels_pack.quant import tiny
five_b = tiny.state_dict(tiny.info("T2V"), seed=1)
five_b["patch_embedding.weight"] = torch.zeros(256, 48, 1, 2, 2)
five_b["head.head.weight"], five_b["head.head.bias"] = torch.zeros(192, 256), torch.zeros(192)
five_b = comfy.sd.load_diffusion_model_state_dict({{"model.diffusion_model." + k: v for k, v in five_b.items()}})
refused["wan22_model"] = error_with(pos, on=five_b, mode="standard")
from skyreels_pack.nodes.sample import check_vae      # the Wan 2.1 VAE's tiny decoder (TAEW 2.1) passes
refused["taew2_1"] = check_vae(comfy.sd.VAE(sd=comfy.taesd.taehv.TAEHV(latent_channels=16).state_dict()))
# NaN from an API prompt passes the host's range check (it made a video of NaN)
refused.update(nan_cfg=error_with(pos, cfg=float("nan")), nan_shift=error_with(pos, shift=float("nan"), mode="standard"))
# A video longer than the machine holds, here one of 8 GiB of RAM and 1 of swap: before, the allocator's words
# once its first window was made; the images count with a vae, and in the host's intermediate dtype
import psutil
from types import SimpleNamespace
real = psutil.virtual_memory, psutil.swap_memory
psutil.virtual_memory, psutil.swap_memory = lambda: SimpleNamespace(total=8 * 2**30), lambda: SimpleNamespace(total=2**30)
big = dict(width=960, height=544, frames=40001)
refused.update(too_long_images=error_with(pos, vae=vae, **big),
               too_long_latent=error_with(pos, **{{**big, "frames": 100001}}, mode="standard"))
platform, sys.platform = sys.platform, "win32"       # read at the check alone: its page file counted at 3x RAM
refused["too_long_windows"] = error_with(pos, vae=vae, **big)
sys.platform = platform
psutil.virtual_memory, psutil.swap_memory = real
# fp8 matmul under ModelComputeDtype: ComfyUI dequantizes every weight before our product, and the report says so.
fp8 = load("t2v_fp8_channel.safetensors", "auto", "fp8 matmul")[0]
other = "fp16" if fp8.model.get_dtype_inference() != torch.float16 else "bf16"
matmul_lines = [[l for l in SampleVideo.execute(m, pos, neg, **nest_mode({{**ARGS, "mode": "standard"}})).args[1]
                 .splitlines() if "matmul" in l][0] for m in (fp8, ModelComputeDtype().patch(fp8, other)[0])]

# A guidance patch that reads the call's sigma, with frames at different noise levels (ar_step > 0): a note.
rescaled = RescaleCFG().patch(model, 0.7)[0]
guidance_notes = [[l for l in SampleVideo.execute(rescaled, pos, neg, **nest_mode({{**ARGS, "ar_step": ar}})).args[1]
                   .splitlines() if l.startswith("ar_step")] for ar in (0, 1)]

# NaN in (a broken text encoder, an overflow): the result is NaN, and the report says so first.
nan_report = SampleVideo.execute(model, [[torch.full((1, 8, 4096), float("nan")), {{}}]], neg,
                                 **nest_mode(ARGS)).args[1]
# The memory line on Linux: the peak is this run's (VmHWM restarted from the RSS at its start), not one reached
# before it, e.g. by loading another model: 256 MiB held and freed before the meter starts are not in its peak.
from skyreels_pack.nodes.adapters import run_report
ballast = torch.ones(64 * 2**20)
ballast += 1
del ballast
meter_line = run_report.Meter(torch.device("cpu")).finish().memory

result = dict(
    refused=refused, matmul_lines=matmul_lines, guidance_notes=guidance_notes, nan_first=nan_report.splitlines()[0],
    clean_first=report.splitlines()[0],
    meter_line=meter_line, image_report=image_report,
    upgraded=upgraded, linked=linked, no_mode=no_mode,
    timesteps=[t.tolist() for t in seen],
    carried=[(carried[i:i + 1] - own[i]).abs().max().item() for i in range(2)],
    image_dtypes=image_dtypes, carry_bytes=carry_bytes,
    items_differ=(carried[0] - carried[1]).abs().max().item(), batch_shape=list(two["samples"].shape),
    window_first=(two_prompts[:, :, :4] - one_prompt[:, :, :4]).abs().max().item(),
    window_later=(two_prompts[:, :, 4:] - one_prompt[:, :, 4:]).abs().max().item(),
    window_extra=[(extra["samples"] - two_prompts).abs().max().item(),
                  [l for l in extra_report.splitlines() if l.startswith("window_prompts")]],
    window_gap=(gap - full).abs().max().item(),
    window_carry=window_positives("positive", {{"window_2": "two", "window_4": "four"}}),
    images_shape=list(two_images.shape), no_vae_images=[type(no_vae_images).__name__, no_vae_images.message],
    updates=updates, report=report, orientation=orientation, addnoise=addnoise,
    fps_24_vs_30=(f24 - f30).abs().max().item(), fps_24_vs_16=(f24 - f16).abs().max().item(),
    image_frame=(with_image[:, :, :1] - vae.encode(image)).abs().max().item(),
    image_rest=(with_image[:, :, 1:] - f24[:, :, 1:]).abs().max().item(),
    video_frames=(with_video[:, :, :2] - vae.encode(video[-5:])).abs().max().item(),
    video_shape=list(with_video.shape),
    wide_cropped=(wide_prefix - vae.encode(wide[-5:, :, 16:48])).abs().max().item(),
    wide_squeezed=(wide_prefix - vae.encode(torch.nn.functional.interpolate(
        wide[-5:].movedim(-1, 1), size=(32, 32), mode="bilinear").movedim(1, -1))).abs().max().item(),
    overlap_not_4k1=error(frames=17, prefix_video=video, overlap_history=6, vae=vae),
    standard_image=error(mode="standard", start_image=image, vae=vae),
    no_vae=error(start_image=image),
    block_too_big=error(start_image=image, vae=vae, causal_block_size=3),
    # a prefix_video's last overlap_history frames: too few for a block where the widget or the video is short
    block_overlap=error(prefix_video=torch.cat([video] * 3), overlap_history=5, vae=vae, causal_block_size=3),
    block_video=error(prefix_video=video[:5], overlap_history=9, vae=vae, causal_block_size=3),
    end_standard=error(mode="standard", end_image=image, vae=vae),
    end_no_vae=error(end_image=image),
    end_blocks=error(end_image=image, vae=vae, causal_block_size=3, frames=9, ar_step=0),
    both_starts=error(start_image=image, prefix_video=video, vae=vae),
    prefix_fills=error(frames=5, prefix_video=video, overlap_history=5, vae=vae),
    # a latent core LatentUpscale makes (8-pixel steps: 40x24) runs, as the host pads it to the patch size
    odd_latent=bool(sample(latent={{"samples": torch.zeros(1, 16, 3, 3, 5)}}, ar_step=1)[0]["samples"].isfinite().all()),
    latent_fills=error(frames=97, prefix_video=video, overlap_history=5, vae=vae,
                       latent={{"samples": torch.zeros(1, 16, 2, 4, 4)}}),
)
"""


def test_sample_video_in_process(host, tmp_path):
    write_models(tmp_path)
    write_tiny(tmp_path / "i2v_bf16.safetensors", "I2V", seed=3)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + RUN.format(folder=str(tmp_path)))
    # One bar for every model call of every window: 4 windows of 6 latent frames = 2 causal blocks of 3; the first
    # takes 3 steps + 1 block x ar_step 2 = 5 rows, the others start with one finished block: 3 rows; 14 in all.
    # The total never changes and the count only goes up, to the end (the host sends a throttled subset).
    values, totals = [v for v, _ in r["updates"]], {t for _, t in r["updates"]}
    assert totals == {14} and values == sorted(values) and values[-1] == 14, r["updates"]
    assert "4 window(s), 15 latent frames = 57 video frames" in r["report"] and "14 model calls" in r["report"]
    # the memory line: the peak since the run started (Linux restarts VmHWM), not a peak reached before it
    m = re.fullmatch(r"peak RSS (\d+) MiB \(process; (\d+) MiB before the run\)", r["meter_line"])
    assert m and int(m[1]) - int(m[2]) < 128, r["meter_line"]     # 256 MiB were held and freed before it started
    assert "MiB (process; " in r["report"], r["report"]
    # the diffusion forcing line says the video starts from a start image
    assert ", fps 24, start image" in r["image_report"].splitlines()[1], r["image_report"]
    # fps reaches DF-1.3B's fps embedding: 16 fps is id 0, every other rate id 1.
    assert r["fps_24_vs_30"] == 0.0 and r["fps_24_vs_16"] > 1e-3
    # A start image is the clean first latent frame: the VAE's encoding, up to the float32 rounding of the host's
    # latent scaling in and out (measured 9e-8); the other frames change.
    assert r["image_frame"] < 1e-5 and r["image_rest"] > 1e-3
    # SkyReels-V2's script would turn the video to portrait; the node keeps its width and height and says so
    assert r["orientation"] == [["start_image: 32x48, portrait, for a 48x32 video: 44% of it is kept; for a portrait "
                                 "video as SkyReels-V2 makes one, set width 32 and height 48"], [],
                                ["end_image: 32x48, portrait, for a 48x32 video: 44% of it is kept; for a portrait "
                                 "video as SkyReels-V2 makes one, set width 32 and height 48"]], r["orientation"]
    assert r["addnoise"] == [["addnoise_condition 60: SkyReels-V2 advises 20 and at most 50; more noise on the frames "
                              "carried into a window can make it drift from them"], [], []], r["addnoise"]
    # A prefix video: its last overlap_history (5) frames, encoded (2 latent frames), start the output.
    assert r["video_frames"] < 1e-5 and r["video_shape"] == [1, 16, 5, 4, 4]
    assert r["wide_cropped"] < 1e-5 < 0.01 < r["wide_squeezed"], r     # its middle, center-cropped
    assert r["overlap_not_4k1"] == "Sample Video: overlap_history: 6 is not 4k+1; use 5 or 9", r
    assert r["standard_image"].startswith("Sample Video: start_image / prefix_video need mode 'diffusion forcing'")
    assert r["no_vae"] == "Sample Video: start_image / prefix_video need a vae connected to encode them"
    assert r["end_standard"] == "Sample Video: end_image: needs mode 'diffusion forcing'"
    assert r["end_no_vae"] == "Sample Video: end_image: needs a vae connected to encode it"
    assert r["end_blocks"].startswith("Sample Video: end_image: needs causal_block_size 1, not 3")
    assert r["both_starts"] == ("Sample Video: start_image / prefix_video: connect one; a continued video starts "
                                "from its own last frames")      # start_image used to be dropped with no word
    assert r["prefix_fills"] == ("Sample Video: frames: 5 frames leave no frame to make after the 2 latent frame(s) "
                                 "that prefix_video (its last overlap_history frames) gives; make it more than 5")
    assert r["odd_latent"] is True
    assert r["latent_fills"].startswith("Sample Video: latent: 5 frames leave no frame to make after the 2 "), r
    assert r["upgraded"] == [True] * 5
    refused = r["refused"]
    assert refused["vace"] == ("Sample Video: positive: holds VACE controls (WanVaceToVideo), which a SkyReels-V2 "
                               "model has no blocks for and would ignore; load a Wan VACE model and sample it with "
                               "KSampler, or remove that node"), refused
    assert refused["phantom_forcing"].startswith("Sample Video: positive: holds reference frames appended in time")
    assert refused["phantom_standard"] is None, refused    # standard mode runs them as core's samplers do
    assert refused["noise_mask"].startswith("Sample Video: latent: has a noise mask"), refused
    # a latent sliced to nothing: it was "-3 frames leave no frame to make after ... that start_image gives"
    assert refused["no_frames"] == ("Sample Video: latent: expected a video latent [B, C, frames, H, W], got "
                                    "[1, 16, 0, 4, 4]"), refused
    # a VAE Encode or a sampler's latent: it used to run from noise as if it were empty (the same result to 0.0)
    assert refused["encoded"] == ("Sample Video: latent: holds a video (e.g. from VAE Encode or a sampler), which "
                                  "Sample Video would ignore: it samples from noise and takes only the latent's size; "
                                  "to rework a video use KSampler with a denoise below 1, to continue one VAE Decode "
                                  "it into prefix_video (diffusion forcing)"), refused
    assert refused["image_on_df"].startswith("Sample Video: positive: holds a start image (e.g. from "
                                             "WanImageToVideo), which a T2V or DF model cannot take"), refused
    assert refused["no_positive"] == ("Sample Video: positive: holds no conditioning (an empty list): connect a text "
                                      "encoder's, e.g. CLIP Text Encode"), refused
    assert refused["no_window_2"] == ("Sample Video: window_2: holds no conditioning (an empty list): connect a text "
                                      "encoder's, e.g. CLIP Text Encode"), refused    # it ran with no prompt there
    assert refused["empty_image"] == "Sample Video: start_image: holds no image (an empty batch): connect one, or " \
                                     "nothing", refused
    assert refused["no_pixels"] == ("Sample Video: end_image: holds images of shape [1, 0, 32, 3], not [frames, "
                                    "height, width, 3 colours]; connect a picture (e.g. Load Image)"), refused
    assert refused["grey"].startswith("Sample Video: prefix_video: holds images of shape [5, 32, 32, 1], "), refused
    assert refused["clip_start"] == ("Sample Video: start_image: holds 13 images and takes one; pick one frame with "
                                     "Get Image from Batch; to continue a video, connect it to prefix_video"), refused
    assert refused["clip_end"] == ("Sample Video: end_image: holds 2 images and takes one; pick one frame with Get "
                                   "Image from Batch"), refused
    assert refused["i2v_without"].startswith("Sample Video: positive: an I2V model starts from an image"), refused
    assert refused["wan22"].startswith("Sample Video: vae: makes 48-channel 3-D latents; SkyReels-V2 takes the Wan "
                                       "2.1 VAE's (16-channel video latents)"), refused
    assert refused["sd"].startswith("Sample Video: vae: makes 4-channel 2-D latents"), refused
    assert refused["flux"].startswith("Sample Video: vae: makes 16-channel 2-D latents"), refused
    assert refused["taew2_1"] is None, refused
    for name in ("cfg", "shift"):
        assert refused[f"nan_{name}"] == f"Sample Video: {name}: nan is not a number; give one from 0 to 100", refused
    # 40001 frames at 960x544: float32 latents 4.9 GiB, images 233.5 GiB; per latent frame 0.5 + 23.9 MiB
    assert refused["too_long_images"] == (
        "Sample Video: frames: 40001 frames of 960x544 need 238.3 GiB for the video's latent and images, held whole, "
        "and this machine has 9.0 GiB (RAM and swap); make at most 1505 frames at this size, or the video in parts, "
        "each continuing the last (prefix_video)"), refused
    assert refused["too_long_latent"] == (
        "Sample Video: frames: 100001 frames of 960x544 need 12.2 GiB for the video's latent, held whole, and this "
        "machine has 9.0 GiB (RAM and swap); make at most 74013 frames at this size, or the video in parts, each "
        "continuing the last (prefix_video)"), refused
    assert refused["too_long_windows"] == (
        "Sample Video: frames: 40001 frames of 960x544 need 238.3 GiB for the video's latent and images, held whole, "
        "and this machine has 32.0 GiB (RAM and swap); make at most 5365 frames at this size, or the video in parts, "
        "each continuing the last (prefix_video)"), refused
    assert refused["wan22_model"] == ("Sample Video: model: takes 48-channel latents (e.g. Wan 2.2 TI2V-5B), "
                                      "SkyReels-V2 and Wan 2.1 models 16: load one of those, or sample this model "
                                      "with KSampler"), refused
    assert r["guidance_notes"] == [[], [
        "ar_step 1: guidance patches on this MODEL that read the sigma (e.g. RescaleCFG, SkipLayerGuidanceDiT, "
        "TSR - Temporal Score Rescaling) see one per model call, the noisiest frame's; frames further along are "
        "treated as that noisy"]], r["guidance_notes"]
    eager, dequantized = r["matmul_lines"]
    assert r["nan_first"] == ("WARNING: 100% of the result is NaN/Inf: the inputs hold such values, or the model "
                              "overflowed (e.g. computing in fp16)"), r["nan_first"]
    assert r["clean_first"].startswith("Sample Video: diffusion forcing"), r["clean_first"]
    assert "matmul: fp8 w8a8 (" in eager and "no FP8 product ran" in dequantized, r["matmul_lines"]
    assert r["linked"] == {"mode": "diffusion forcing", "mode.ar_step": ["9", 0], "mode.base_num_frames": 97}
    # a prompt whose mode is none of the options: the host leaves mode out, and the node says what it takes
    assert r["no_mode"] == "Sample Video: mode: must be 'standard' or 'diffusion forcing'"
    # The model sees one timestep per latent frame (cond and uncond: 2 rows): the 2 prefix frames at the
    # addnoise level (20), the others at their own step of the schedule, not all the same after the first call
    # (ar_step 1).
    # SkyReels-V2's integer timesteps: its first step is 999, as for frames not started yet.
    first, second = r["timesteps"][:2]
    assert len(first) == 2 and len(first[0]) == 5 and first[0] == first[1]
    assert first[0] == [20.0, 20.0, 999.0, 999.0, 999.0] and len(set(second[0][2:])) > 1, (first, second)
    # Batch of 2 through the VAE: each item's own last 5 frames carried over (not the last item's for all).
    assert max(r["carried"]) < 1e-5 and r["items_differ"] > 1e-3, r
    assert r["image_dtypes"] == ["torch.float16", "torch.float16"], r["image_dtypes"]
    assert r["carry_bytes"][0] == r["carry_bytes"][1], r["carry_bytes"]
    assert r["batch_shape"] == [2, 16, 6, 4, 4]
    # window_2's prompt: the first window is as it was, the second is not; a prompt more than windows is named
    assert r["window_first"] == 0.0 and r["window_later"] > 1e-3, r
    assert r["window_gap"] == 0.0, r
    assert r["window_carry"] == ["two", "two", "four"], r       # the one before, not the first positive
    assert r["window_extra"] == [0.0, ["window_prompts: 2 given for 1 later window(s); the last 1 not used"]], r
    assert r["images_shape"] == [2 * 21, 32, 32, 3]      # the images output: both videos' 21 frames, as VAE Decode
    assert r["no_vae_images"] == ["ExecutionBlocker", "Sample Video: images needs a vae connected (it decodes each "
                                  "window as SkyReels-V2 does); or decode the LATENT output with VAE Decode"]
    # Each names what gives more frames (a start image is one frame whatever the frames widget says)
    assert r["block_too_big"] == ("Sample Video: start_image: one frame gives 1 latent frame, fewer than "
                                  "causal_block_size 3; use causal_block_size 1, or connect the first 9 or more frames "
                                  "as prefix_video instead"), r["block_too_big"]
    assert r["block_overlap"] == ("Sample Video: prefix_video: its last 5 frames (overlap_history 5) give 2 latent "
                                  "frame(s), fewer than causal_block_size 3; use causal_block_size 1, or "
                                  "overlap_history 9 or more"), r["block_overlap"]
    assert r["block_video"].endswith("use causal_block_size 1, or a prefix_video of 9 or more frames"), r


PREVIEWS = r"""
import latent_preview
from skyreels_pack.nodes.sample import SampleVideo
from skyreels_pack.nodes.adapters import sample_job
model = load("df_bf16.safetensors")[0]
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
shown = []                 # what each preview is made of: the first frame of the x0 the progress callback gets
def prepare(m, steps, x0_output_dict=None):
    callback = latent_preview.prepare_callback(m, steps, x0_output_dict)
    return lambda step, x0, x, total: (shown.append(x0[:, :, 0].clone()), callback(step, x0, x, total))[1]
sample_job.latent_preview = type("latent_preview", (), {{"prepare_callback": staticmethod(prepare)}})
# 33 frames = 9 latent, windows of 5 latent frames carrying 2: frames 0-4, then 3-7 (makes 5-7), then 6-8 (makes 8)
ARGS = dict(width=32, height=32, frames=33, seed=1, steps=4, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="diffusion forcing", base_num_frames=17, overlap_history=5, ar_step=0, causal_block_size=1,
            addnoise_condition=20)
out = model.model.process_latent_in(SampleVideo.execute(model, pos, neg, **nest_mode(ARGS)).args[0]["samples"])
cos = lambda a, b: torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
# at each window's last step: the output frame the preview frame is (closest to)
result = [max(range(out.shape[2]), key=lambda k: cos(shown[s], out[:, :, k])) for s in (3, 7, 11)]
"""


def test_previews_show_the_frames_each_window_makes(host, tmp_path):
    # A long Diffusion Forcing video's later windows start from frames of the window before, already made: the
    # previews (the first frame of each step's x0, as after KSampler) showed that old frame for the whole window.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + PREVIEWS.format())
    assert r == [0, 5, 8], r         # was [0, 3, 6]: the carried-over frames



NOISE = r"""
import comfy.sample
from skyreels_pack.nodes.sample import SampleVideo
from skyreels_pack.nodes.adapters.sample_job import Job
seen, real = [], comfy.sample.sample_custom

def watch(model, noise, *args, **kwargs):     # the noise Sample Video hands the host's sampler, which then runs
    seen.append(noise.clone())
    return real(model, noise, *args, **kwargs)

comfy.sample.sample_custom = watch
model = load("df_bf16.safetensors")[0]
pos, neg = [[torch.randn(1, 8, 4096, generator=g), {}]], [[torch.randn(1, 8, 4096, generator=g), {}]]
result = {}
for mode in ("standard", "diffusion forcing"):
    seen.clear()
    report = SampleVideo.execute(model, pos, neg, 32, 32, 9, 5, 1, 3.0, 8.0, "unipc", 24, {"mode": mode},
                                 noise="gpu (SkyReels-V2)").args[1]
    drawn = {str(d)[6:]: torch.randn(seen[0].shape, generator=torch.Generator().manual_seed(5), dtype=d).float()
             for d in (torch.float32, torch.bfloat16)}
    result[mode] = dict(same=[k for k, v in drawn.items() if torch.equal(seen[0], v)],
                        line=[l for l in report.splitlines() if l.startswith("noise:")])
# A device torch seeds no generator on (DirectML's privateuseone; XPU and MPS in builds without them): ComfyUI's
# CPU noise, and the note says why.
job = Job(model, pos, neg, 5, 1, 3.0, 8.0, "unipc", 24, None, [1, 16, 3, 4, 4], True,
          dict(base_num_frames=97, overlap_history=17, ar_step=0, causal_block_size=1, addnoise_condition=0))
job.model.load_device, job.notes = torch.device("privateuseone"), []
job._seed_noise(True, 5)
result["no generator"] = dict(notes=job.notes, device=str(job.generator.device), dtype=str(job.noise_dtype),
                              same=torch.equal(job._draw(job.generator, [1, 16, 3, 4, 4]),
                                               torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(5))))
"""


def test_gpu_noise_is_drawn_as_skyreels_v2s_pipelines_draw_it(host, tmp_path):
    # SkyReels-V2's DF pipeline draws its latents in its transformer's dtype (bf16 in its scripts), its T2V and I2V
    # pipelines in float32: so does Sample Video with noise "gpu (SkyReels-V2)". On a GPU the draw is on the model's
    # device: bench/noise.py checks that there. (What the draws and bf16 latents give against SkyReels-V2's own
    # pipeline: tests/host/test_host_reference_pixels.py.)
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + NOISE)
    line = ("noise: drawn on cpu (the model's device) in {}, as SkyReels-V2's scripts draw it (their scripts draw on "
            "CUDA: only an NVIDIA GPU gives theirs)")
    assert r.pop("standard") == dict(same=["float32"], line=[line.format("float32")])
    kept = ", and the latents kept in bfloat16 between steps as their DF pipeline keeps them"
    assert r.pop("diffusion forcing") == dict(same=["bfloat16"], line=[line.format("bfloat16") + kept])
    fallback = r.pop("no generator")
    assert (fallback["device"], fallback["dtype"], fallback["same"]) == ("cpu", "torch.float32", True), fallback
    [note] = fallback["notes"]
    assert note.startswith("noise: gpu (SkyReels-V2) needs a seeded generator on privateuseone, which torch does "
                           "not offer (") and note.endswith("): drawn on the CPU as ComfyUI does"), note
