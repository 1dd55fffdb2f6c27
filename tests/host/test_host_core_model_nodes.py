"""Core nodes that change how a MODEL runs or what it predicts, chained after Load FP8 SkyReels Model: what Sample
Video and Patch SageAttention do with them, where that differs from core's loader + KSampler."""
import pytest
from comfy_host import REPO, host_release, run_in_host
from in_host import SETUP, write_models

# What the pack logs (`lines`), and a prompt pair and latent for KSampler runs.
LOGGED = r"""
import logging
import nodes as core
from skyreels_pack.nodes.sage_patch import PatchSageAttention

lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("skyreels_fp8").addHandler(handler)
pos = [[torch.randn(1, 8, 4096, generator=g), {}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {}]]
latent = {"samples": torch.zeros(1, 16, 2, 8, 8)}
"""

SAMPLING = LOGGED + r"""
from comfy_extras.nodes_model_advanced import ModelNoiseScale, ModelSamplingDiscrete, ModelSamplingSD3
from skyreels_pack.nodes.sample import SampleVideo
ARGS = dict(width=32, height=32, frames=5, seed=1, steps=2, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="standard")

def sample(model, **kw):
    samples, report, _ = SampleVideo.execute(model, pos, neg, **nest_mode({**ARGS, **kw})).args[:3]
    return samples["samples"], report

ours = load("t2v_fp8_channel.safetensors")[0]
plain = sample(ours)[0]
result = {}
for name, model in (("v", ModelSamplingDiscrete().patch(ours, "v_prediction", False)[0]),
                    ("noise scale", ModelNoiseScale().patch(ours, 2.0)[0]),
                    ("sd3 shift 0", ModelSamplingSD3().patch(ours, 3.0)[0])):
    runs = [sample(model, shift=0.0 if name == "sd3 shift 0" else 8.0) for _ in range(2)]
    result[name] = dict(same_as_plain=bool(torch.equal(runs[0][0], plain)), report=runs[0][1].splitlines()[-1],
                        logged=[l for l in lines if "model sampling" in l])
    lines.clear()
# ModelSamplingAuraFlow: a flow sampling whose multiplier (1, not 1000) Sample Video's timesteps drop
from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow
result["aura"] = sample(ModelSamplingAuraFlow().patch_aura(ours, 3.0)[0])[1].splitlines()[-1]
"""


def test_sample_video_names_a_model_sampling_it_does_not_run(host, tmp_path):
    # Core ModelSamplingDiscrete (eps / v_prediction) and ModelNoiseScale change what a MODEL predicts under KSampler
    # (measured on the tiny model: 39% and 55% of the latent), but Sample Video runs SkyReels-V2's flow with its own
    # model sampling: the same latent as without them. That is said once in the log and in the report, as for an
    # overridden ModelSamplingSD3 shift; a flow sampling whose shift is taken (shift 0) has nothing to say.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + SAMPLING)
    for name, what in (("v", "ModelSamplingDiscrete, V_PREDICTION"), ("noise scale", "noise scale 2")):
        note = (f"the MODEL's model sampling ({what}) is not used: Sample Video samples SkyReels-V2's flow matching "
                "(shift 8); use KSampler to sample with it")
        v = r[name]
        assert v["same_as_plain"], (name, v)
        assert v["report"] == note, (name, v)
        assert v["logged"] == [f"Sample Video: {note}"], (name, v)      # once for two runs
    assert not r["sd3 shift 0"]["same_as_plain"] and r["sd3 shift 0"]["logged"] == [], r["sd3 shift 0"]
    assert "model sampling" not in r["sd3 shift 0"]["report"], r["sd3 shift 0"]
    assert r["aura"] == ("the MODEL's model sampling (multiplier 1) is not used: Sample Video samples SkyReels-V2's "
                         "flow matching (shift 8); use KSampler to sample with it"), r["aura"]


REPLACED = LOGGED + r"""
from comfy_extras.nodes_model_advanced import ModelAttentionBackend
from skyreels_pack.nodes.sample import SampleVideo

def ksample(model):
    return core.common_ksampler(model, 0, 2, 3.0, "euler", "simple", pos, neg, latent)[0]["samples"]

def sage(model):
    return PatchSageAttention.execute(model, "reference", 0, 0, 0, 0.995).args[0]

def pytorch(model):
    return ModelAttentionBackend().patch(model, "pytorch attention")[0]

def override(model):
    return model.model_options["transformer_options"]["optimized_attention_override"]

ours = load("t2v_fp8_channel.safetensors")[0]
result = {}
for name, model in (("sage then backend", pytorch(sage(ours))), ("backend then sage", sage(pytorch(ours))),
                    ("sage", sage(ours))):
    lines.clear()
    ksample(model)
    ksample(model)
    result[name] = dict(lines=[l for l in lines if "not used" in l], counts=getattr(override(model), "counts", None))
# Sample Video's block-causal attention wraps Patch SageAttention's override: still ours underneath
lines.clear()
df = sage(load("df_bf16.safetensors")[0])
SampleVideo.execute(df, pos, neg, **nest_mode(dict(width=32, height=32, frames=9, seed=1, steps=2, cfg=3.0, shift=8.0,
        sampler="unipc", fps=24, mode="diffusion forcing", base_num_frames=97, overlap_history=17, ar_step=0,
        causal_block_size=1, addnoise_condition=0, causal_attention=True)))
result["causal"] = dict(lines=[l for l in lines if "not used" in l], counts=override(df).counts)
# ModelAttentionBackend after Patch SageAttention, then Sample Video's causal attention around the host's override
lines.clear()
SampleVideo.execute(pytorch(sage(load("df_bf16.safetensors")[0])), pos, neg, **nest_mode(dict(width=32, height=32,
        frames=9, seed=1, steps=2, cfg=3.0, shift=8.0, sampler="unipc", fps=24, mode="diffusion forcing",
        base_num_frames=97, overlap_history=17, ar_step=0, causal_block_size=1, addnoise_condition=0,
        causal_attention=True)))
result["backend, causal"] = dict(lines=[l for l in lines if "not used" in l])
# Patch SageAttention twice in a row (e.g. a blueprint's and one of the user's): the later one runs, as designed,
# and nothing says the earlier was "replaced by another override".
lines.clear()
twice = sage(sage(ours))
ksample(twice)
result["sage twice"] = dict(lines=[l for l in lines if "not used" in l], counts=override(twice).counts)
"""


def test_patch_sage_attention_replaced_by_a_later_attention_override_is_logged(host, tmp_path):
    # Core ModelAttentionBackend after Patch SageAttention sets its own override, which ComfyUI runs alone: none of
    # the attention calls reaches Patch SageAttention. Under KSampler nothing said so (Sample Video's report names
    # the other override); the reverse order was already logged by Patch SageAttention itself.
    if host_release(host) < (0, 32):
        pytest.skip("core ModelAttentionBackend came with ComfyUI 0.32 (with comfy-kitchen's attention)")
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + REPLACED)
    replaced = r["sage then backend"]
    assert replaced["lines"] == [
        "Patch SageAttention: not used: a node after it set another attention override on this MODEL, "
        "optimized_attention_override (ModelPatcher, comfy); ComfyUI runs one per model, the last applied (apply "
        "Patch SageAttention after that node to use it)"], replaced                 # once, for two runs
    assert replaced["counts"] is None, replaced             # the override that ran is the host's
    # Patch SageAttention twice in a row: the later one runs, and nothing calls the earlier one "replaced"
    assert r["sage twice"]["lines"] == [] and r["sage twice"]["counts"]["sage"] > 0, r["sage twice"]
    # Under Sample Video's causal attention (which wraps the override it finds) the line names the same override,
    # not Sample Video's own wrapper
    assert r["backend, causal"]["lines"] == replaced["lines"], r["backend, causal"]
    for name in ("backend then sage", "sage", "causal"):
        assert r[name]["lines"] == [] and r[name]["counts"]["sage"] > 0, (name, r[name])


BERNINI = r"""
from comfy_extras.nodes_bernini import BerniniConditioning
from skyreels_pack.nodes.sample import SampleVideo
from generate_video_fp8 import write_tiny_vae
write_tiny_vae(os.path.join({folder!r}, "vae.safetensors"))
vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(os.path.join({folder!r}, "vae.safetensors")))
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
pos, neg, _ = BerniniConditioning.execute(pos, neg, vae, 32, 32, 9, 1, source_video=torch.rand(9, 32, 32, 3,
                                                                                               generator=g)).args
ARGS = dict(width=32, height=32, frames=9, seed=1, steps=2, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="diffusion forcing", base_num_frames=97, overlap_history=17, ar_step=1, causal_block_size=1,
            addnoise_condition=0)
model = load("df_bf16.safetensors")[0]
result = dict(standard=bool(SampleVideo.execute(model, pos, neg, **nest_mode({{**ARGS, "mode": "standard"}})).args[0]
                            ["samples"].isfinite().all()))
try:
    SampleVideo.execute(model, pos, neg, **nest_mode(ARGS))
    result["forcing"] = "ran"
except ValueError as e:
    result["forcing"] = str(e)
"""


def test_diffusion_forcing_refuses_in_context_latents(host, tmp_path):
    # Core BerniniConditioning appends the source video's latents to the video's tokens. With a noise level per frame
    # (diffusion forcing) the host's Wan spreads each frame's level over all tokens per frame, context included:
    # measured 24 tokens for 3 frames of 4, so each level covered 8 tokens and frames 2 and 3 ran at their
    # predecessors' levels, with no word. Refused by name, as Phantom's frames are; standard mode runs them.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + BERNINI.format(folder=str(tmp_path)))
    assert r["standard"], r
    assert r["forcing"] == ("Sample Video: positive: holds in-context latents appended to the video "
                            "(BerniniConditioning), which diffusion forcing's per-frame noise levels do not cover; "
                            "use mode 'standard'"), r


SAGE_TWICE = LOGGED + r"""
first = PatchSageAttention.execute(load("t2v_fp8_channel.safetensors")[0], "reference", 0, 0, 0, 0.995).args[0]
second = PatchSageAttention.execute(first, "reference", 1, 0, 0, 0.995).args[0]     # its settings changed
core.common_ksampler(second, 0, 2, 3.0, "euler", "simple", pos, neg, latent)
override = second.model_options["transformer_options"]["optimized_attention_override"]
result = dict(lines=[l for l in lines if "not used" in l], sage=override.counts["sage"])
"""


def test_patch_sage_attention_applied_again_is_not_reported_as_replaced(host, tmp_path):
    # The second Patch SageAttention replaces the first one's override, as designed (silently: it is Patch
    # SageAttention that runs); the first one's sampling watch must not log that Patch SageAttention is not used.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + SAGE_TWICE)
    assert r["sage"] > 0 and r["lines"] == [], r


HOOKS = r"""
import folder_paths, safetensors.torch
from comfy_extras.nodes_hooks import ConditioningSetProperties, CreateHookLoraModelOnly
from skyreels_pack.nodes.sample import SampleVideo
loras = os.path.join({folder!r}, "loras")
os.makedirs(loras)
lora = {{f"diffusion_model.blocks.0.self_attn.q.lora_{{p}}.weight": torch.randn(*s, generator=g) * 0.3
        for p, s in (("up", (256, 4)), ("down", (4, 256)))}}
safetensors.torch.save_file(lora, os.path.join(loras, "hook.safetensors"))
folder_paths.add_model_folder_path("loras", loras, is_default=True)
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
hook = CreateHookLoraModelOnly().create_hook_model_only("hook.safetensors", 1.0)[0]
hooked = ConditioningSetProperties().set_properties(pos, 1.0, "default", hooks=hook)[0]
ARGS = dict(width=32, height=32, frames=5, seed=1, steps=2, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="standard")
def run(model, positive):
    return SampleVideo.execute(model, positive, neg, **nest_mode(ARGS)).args[0]["samples"]
bf16 = load("t2v_bf16.safetensors", "bf16")[0]
result = dict(bf16_moved=rel(run(bf16, hooked), run(bf16, pos)))
try:
    run(load("t2v_fp8_channel.safetensors")[0], hooked)
    result["fp8"] = "ran"
except ValueError as e:
    result["fp8"] = str(e)
"""


def test_hook_loras_on_fp8_weights_are_refused_before_the_run(host, tmp_path):
    # ComfyUI 0.33's hooks (Create Hook LoRA into Cond Set Props) stop deep in a run on any FP8 weights, its own files'
    # too ("'Linear' object has no attribute 'weight_scale'", a helper's sweep of 68 core model nodes): Sample Video
    # says so before the first step, and what to do; with bf16 weights the hook applies.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + HOOKS.format(folder=str(tmp_path)))
    assert r["bf16_moved"] > 1e-3, r
    assert r["fp8"] == ("Sample Video: positive: holds hook LoRAs (Create Hook LoRA into Cond Set Props), which "
                        "ComfyUI 0.33 cannot apply to FP8 weights; apply the LoRA with Load LoRA instead, or load "
                        "bf16 weights (Load FP8 SkyReels Model's weight_format bf16)"), r
