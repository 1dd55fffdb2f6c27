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
