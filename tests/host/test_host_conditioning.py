"""Core CONDITIONING nodes between the text encoder and Sample Video: what it runs as core's samplers do, and what it
refuses (by name) or notes where one noise level per frame, or its own windows and end image, cannot honour them."""
from comfy_host import REPO, run_in_host
from helpers import write_tiny
from in_host import SETUP, write_models

# The prompts the runs below share (two the same length, so either may be positive or negative; one other).
PROMPTS = r"""
import nodes as core
from skyreels_pack.nodes.sample import SampleVideo
pos = [[torch.randn(1, 8, 4096, generator=g), {}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {}]]
other = [[torch.randn(1, 6, 4096, generator=g), {}]]
"""

AREAS = PROMPTS + r"""
from comfy_extras.nodes_video_model import ConditioningSetAreaPercentageVideo
ARGS = dict(width=64, height=64, frames=9, seed=1, steps=2, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="diffusion forcing", base_num_frames=97, overlap_history=17, ar_step=0, causal_block_size=1,
            addnoise_condition=0)
model = load("df_bf16.safetensors", "bf16")[0]

def with_area(temporal, z, width=1.0):
    area = ConditioningSetAreaPercentageVideo().append(other, width, 1.0, temporal, 0.0, 0.0, z, 1.0)[0]
    return core.ConditioningCombine().combine(pos, area)[0]

def sample(positive, **kw):
    try:
        return SampleVideo.execute(model, positive, neg, **nest_mode({**ARGS, **kw})).args[0]["samples"]
    except ValueError as e:
        return str(e)

plain = sample(pos)
spatial = sample(core.ConditioningCombine().combine(pos, core.ConditioningSetArea().append(other, 32, 64, 32, 0,
                                                                                            1.0)[0])[0])
result = dict(forcing=sample(with_area(0.5, 0.5)), offset=sample(with_area(1.0, 0.5)),
              window=sample(core.ConditioningCombine().combine(pos, core.ConditioningSetArea().append(other, 64, 64, 0,
                            0, 1.0)[0])[0], window_prompts={"window_2": with_area(0.5, 0.0)}),
              standard=rel(sample(with_area(0.5, 0.5), mode="standard"), sample(pos, mode="standard")),
              spatial=rel(spatial, plain), whole_frames=rel(sample(with_area(1.0, 0.0, width=0.5)), plain))
"""


def test_diffusion_forcing_refuses_an_area_over_part_of_the_frames(host, tmp_path):
    # Core Conditioning (Set Area with Percentage for Video) with temporal below 1 narrows the frames a prompt runs
    # on. With a noise level per frame (diffusion forcing) the per-frame levels no longer matched the frames: the run
    # stopped inside the model sampling with "shape '[1, 1, 16, 8, 8]' is invalid for input of size 3072". It is
    # refused by name (window prompts too); standard mode runs it (as KSampler does), and spatial areas run in both.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + AREAS)
    message = ("holds an area over part of the video's frames (e.g. Conditioning (Set Area with Percentage for "
               "Video) with temporal below 1 or z above 0), which diffusion forcing's per-frame noise levels do not "
               "cover; use mode 'standard', or an area over all frames")
    assert r["forcing"] == f"Sample Video: positive: {message}", r
    assert r["offset"] == f"Sample Video: positive: {message}", r
    assert r["window"] == f"Sample Video: window_2: {message}", r
    # The areas change the result (measured 0.2-0.3 of the latent): they were run, not dropped.
    for case in ("standard", "spatial", "whole_frames"):
        assert r[case] > 0.05, (case, r)


I2V = r"""
from comfy_extras.nodes_wan import WanFirstLastFrameToVideo, WanImageToVideo
from skyreels_pack.nodes.sample import SampleVideo
from generate_video_fp8 import write_tiny_vae
write_tiny_vae(os.path.join({folder!r}, "vae.safetensors"))
vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(os.path.join({folder!r}, "vae.safetensors")))
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
first, last = torch.rand(1, 32, 32, 3, generator=g), torch.rand(1, 32, 32, 3, generator=g)
ip, ineg, ilatent = WanImageToVideo.execute(pos, neg, vae, 32, 32, 17, 1, start_image=first).args
fp, fneg, flatent = WanFirstLastFrameToVideo.execute(pos, neg, vae, 32, 32, 17, 1, start_image=first,
                                                     end_image=last).args
model = load("i2v_bf16.safetensors", "bf16")[0]
ARGS = dict(width=32, height=32, frames=17, seed=1, steps=2, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="standard", base_num_frames=97, overlap_history=5, ar_step=0, causal_block_size=1,
            addnoise_condition=0)

def sample(p=ip, n=ineg, **kw):
    try:
        return SampleVideo.execute(model, p, n, **nest_mode({{**ARGS, **kw}})).args[0]["samples"]
    except ValueError as e:
        return str(e)

result = dict(frames=sample(frames=9), latent=sample(latent={{"samples": torch.zeros(1, 16, 3, 4, 4)}}),
              windows=sample(mode="diffusion forcing", base_num_frames=9),
              end=sample(mode="diffusion forcing", vae=vae, end_image=last),
              last_frame=rel(sample(fp, fneg, latent=flatent), sample(latent=ilatent)),
              one_window=list(sample(mode="diffusion forcing").shape))
"""


def test_i2v_image_conditioning_that_does_not_fit_the_video_is_refused(host, tmp_path):
    # Core WanImageToVideo / WanFirstLastFrameToVideo make their image conditioning for `length` frames. Sample Video
    # stopped inside the model ("Sizes of tensors must match except in dimension 1. Expected size 3 but got size 5")
    # when its video had another length (frames set apart from a latent not connected), when diffusion forcing made
    # it in windows shorter than that, and with its own end_image (one more latent frame). Each is refused by name;
    # WanFirstLastFrameToVideo's end image itself runs (standard mode) and changes the video, as under KSampler.
    write_models(tmp_path)
    write_tiny(tmp_path / "i2v_bf16.safetensors", "I2V", seed=3)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + I2V.format(folder=str(tmp_path)))
    assert r["frames"] == ("Sample Video: frames: 9, but positive's image conditioning (WanImageToVideo / "
                           "WanFirstLastFrameToVideo) was made for 17 frames; set frames to 17, or connect that "
                           "node's latent to latent"), r
    assert r["latent"] == ("Sample Video: latent: 9 frames, but positive's image conditioning (WanImageToVideo / "
                           "WanFirstLastFrameToVideo) was made for 17 frames; connect that node's own latent"), r
    assert r["windows"] == ("Sample Video: base_num_frames: 9, but positive's image conditioning (WanImageToVideo / "
                            "WanFirstLastFrameToVideo) covers all 17 frames, which diffusion forcing would make in "
                            "windows; set base_num_frames to at least 17, or use mode 'standard'"), r
    assert r["end"] == ("Sample Video: end_image: an I2V model takes its images from positive's image conditioning; "
                        "for a last frame use core WanFirstLastFrameToVideo's end_image (mode 'standard'), or a DF "
                        "model"), r
    assert r["last_frame"] > 0.02, r          # measured 0.095 on the 64x64 case
    assert r["one_window"] == [1, 16, 5, 4, 4], r


SCHEDULED = r"""
import nodes as core
import safetensors.torch
import comfy.hooks
from comfy_extras import nodes_hooks
from skyreels_pack.nodes.sample import SampleVideo
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 5, 4096, generator=g), {{}}]]
other = [[torch.randn(1, 6, 4096, generator=g), {{}}]]
ranged = core.ConditioningCombine().combine(core.ConditioningSetTimestepRange().set_range(pos, 0.0, 0.5)[0],
                                            core.ConditioningSetTimestepRange().set_range(other, 0.5, 1.0)[0])[0]
lora = safetensors.torch.load_file(os.path.join({folder!r}, "lora.safetensors"))
hooks = comfy.hooks.create_hook_lora(lora, 1.0, 0.0)
keyframes = nodes_hooks.CreateHookKeyframe().create_hook_keyframe(0.0, 0.5)[0]
hooked = nodes_hooks.PairConditioningSetProperties().set_properties(pos, neg, 1.0, "default", hooks=hooks)
scheduled = nodes_hooks.PairConditioningSetProperties().set_properties(
    pos, neg, 1.0, "default", hooks=nodes_hooks.SetHookKeyframes().set_hook_keyframes(hooks, keyframes)[0])
model = load("df_bf16.safetensors", "bf16")[0]
ARGS = dict(width=32, height=32, frames=9, seed=1, steps=4, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="diffusion forcing", base_num_frames=97, overlap_history=17, ar_step=2, causal_block_size=1,
            addnoise_condition=0)
# which prompt each model call ran (its token count: 8 the first, 6 the second) at each frame's timestep
seen = []
model.model.diffusion_model.register_forward_pre_hook(
    lambda m, args, kwargs: seen.append((args[1][0].tolist(), int(kwargs["context"][0].abs().sum(-1).gt(0).sum()))),
    with_kwargs=True)

def notes(p, n=neg, **kw):
    report = SampleVideo.execute(model, p, n, **nest_mode({{**ARGS, **kw}})).args[1]
    return [line for line in report.splitlines() if "scheduled" in line]

result = dict(ranged=notes(ranged), synchronous=notes(ranged, ar_step=0), standard=notes(ranged, mode="standard"),
              keyframes=notes(*scheduled), hooks=notes(*hooked), whole=notes(
                  core.ConditioningSetTimestepRange().set_range(pos, 0.0, 1.0)[0]))
# a prompt that ends at half the schedule beside one that runs throughout: only an end is scheduled
result["ends"] = notes(core.ConditioningCombine().combine(
    core.ConditioningSetTimestepRange().set_range(pos, 0.0, 0.5)[0], other)[0])
seen.clear()
notes(ranged)
result["seen"] = [(t, tokens) for t, tokens in seen if tokens != 5]      # the positive's calls
"""


def test_scheduled_conditioning_in_asynchronous_diffusion_forcing_is_noted(host, tmp_path):
    # With ar_step > 0 the host picks a timestep range's prompt (and a hook keyframe's strength) by one sigma per
    # model call, the noisiest frame's. Measured on 3 frames, 4 steps, ar_step 2, prompt A for the first half and B
    # for the second: frames 0 and 1 ran all four of their steps on A (their last two are in B's half); only the
    # last frame switched. Nothing said so (the guidance patches that read the sigma were already noted). The
    # report and the log (once) now say it; synchronous and standard runs switch every frame together.
    write_models(tmp_path)
    from conftest import write_lora
    import safetensors.torch
    write_lora(tmp_path / "lora.safetensors", safetensors.torch.load_file(str(tmp_path / "t2v_bf16.safetensors")))
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + SCHEDULED.format(folder=str(tmp_path)))
    note = ("ar_step 2: conditioning scheduled by noise level (ConditioningSetTimestepRange, hook keyframes) switches "
            "at the noisiest frame's level, one per model call; frames further along switch later than their own "
            "level says, or not at all")
    assert r["ranged"] == [note] and r["keyframes"] == [note] and r["ends"] == [note], r
    assert r["synchronous"] == r["standard"] == r["hooks"] == r["whole"] == [], r
    # (timesteps of the 3 frames, the prompt's tokens): frame 0 at 888 and 727, in B's half (from 888.9), ran A
    assert r["seen"] == [[[999.0, 999.0, 999.0], 8], [[959.0, 999.0, 999.0], 8], [[888.0, 999.0, 999.0], 8],
                         [[727.0, 959.0, 999.0], 8], [[0.0, 888.0, 999.0], 8], [[0.0, 727.0, 959.0], 8],
                         [[0.0, 0.0, 888.0], 6], [[0.0, 0.0, 727.0], 6]], r["seen"]


MASKS = PROMPTS + r"""
ARGS = dict(width=32, height=32, frames=17, seed=1, steps=2, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="diffusion forcing", base_num_frames=97, overlap_history=5, ar_step=0, causal_block_size=1,
            addnoise_condition=0)
model = load("df_bf16.safetensors", "bf16")[0]

def masked(frames):
    mask = torch.zeros(frames, 32, 32)
    mask[frames // 2:] = 1
    return core.ConditioningCombine().combine(pos, core.ConditioningSetMask().append(other, mask, "default", 1.0)[0])[0]

def effect(positive, **kw):
    try:
        run = lambda p: SampleVideo.execute(model, p, neg, **nest_mode({**ARGS, **kw})).args[0]["samples"]
        return rel(run(positive), run(pos))
    except ValueError as e:
        return str(e)

result = dict(windows=effect(masked(5), base_num_frames=9), one_window=effect(masked(5)),
              standard=effect(masked(5), mode="standard"), one_mask_windows=effect(masked(1), base_num_frames=9))
"""


def test_diffusion_forcing_windows_refuse_a_mask_per_frame(host, tmp_path):
    # Core ConditioningSetMask with one mask per latent frame (5 for a 17-frame video) runs under KSampler, in
    # standard mode and in a one-window diffusion forcing run; diffusion forcing's windows (3 latent frames here)
    # stopped inside the host ("The size of tensor a (3) must match the size of tensor b (5) at non-singleton
    # dimension 2"). Refused by name; a single mask, the same for every frame, still runs in windows.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + MASKS)
    assert r["windows"] == ("Sample Video: base_num_frames: 9, but positive holds a mask per frame (5 masks, e.g. "
                            "from ConditioningSetMask), which diffusion forcing would split into windows; set "
                            "base_num_frames to at least 17, or use mode 'standard'"), r
    for case in ("one_window", "standard", "one_mask_windows"):      # measured 0.3-0.4 of the latent
        assert isinstance(r[case], float) and r[case] > 0.05, (case, r)
