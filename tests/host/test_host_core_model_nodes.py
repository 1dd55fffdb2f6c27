"""Core nodes that change how a MODEL runs or what it predicts, chained after Load FP8 SkyReels Model: what Sample
Video and Patch SageAttention do with them, where that differs from core's loader + KSampler."""
from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

SAMPLING = r"""
import logging
from comfy_extras.nodes_model_advanced import ModelNoiseScale, ModelSamplingDiscrete, ModelSamplingSD3
from skyreels_pack.nodes.sample import SampleVideo

lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("skyreels_fp8").addHandler(handler)
pos = [[torch.randn(1, 8, 4096, generator=g), {}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {}]]
ARGS = dict(width=32, height=32, frames=5, seed=1, steps=2, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="standard")

def sample(model, **kw):
    samples, report, _ = SampleVideo.execute(model, pos, neg, **nest_mode({**ARGS, **kw})).args
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


REPLACED = r"""
import logging
import nodes as core
from comfy_extras.nodes_model_advanced import ModelAttentionBackend
from skyreels_pack.nodes.sage_patch import PatchSageAttention
from skyreels_pack.nodes.sample import SampleVideo

lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("skyreels_fp8").addHandler(handler)
pos = [[torch.randn(1, 8, 4096, generator=g), {}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {}]]
latent = {"samples": torch.zeros(1, 16, 2, 8, 8)}

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
"""


def test_patch_sage_attention_replaced_by_a_later_attention_override_is_logged(host, tmp_path):
    # Core ModelAttentionBackend after Patch SageAttention sets its own override, which ComfyUI runs alone: none of
    # the attention calls reaches Patch SageAttention. Under KSampler nothing said so (Sample Video's report names
    # the other override); the reverse order was already logged by Patch SageAttention itself.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + REPLACED)
    replaced = r["sage then backend"]
    assert replaced["lines"] == [
        "Patch SageAttention: not used: a node after it set another attention override on this MODEL, "
        "optimized_attention_override (ModelPatcher, comfy); ComfyUI runs one per model, the last applied (apply "
        "Patch SageAttention after that node to use it)"], replaced                 # once, for two runs
    assert replaced["counts"] is None, replaced             # the override that ran is the host's
    for name in ("backend then sage", "sage", "causal"):
        assert r[name]["lines"] == [] and r[name]["counts"]["sage"] > 0, (name, r[name])
