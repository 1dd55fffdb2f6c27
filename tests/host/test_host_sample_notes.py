"""What Sample Video says instead of losing something silently: DF-1.3B's fps term dropped by another loader, a
ModelSamplingSD3 shift it overrides (or honours, with shift 0). (GGUF weights named by their quantization:
test_host_gguf.py, with the real ComfyUI-GGUF.)"""
from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

CODE = r"""
import logging, torch
from comfy_extras.nodes_model_advanced import ModelSamplingSD3
from skyreels_pack.nodes.sample import SampleVideo

lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("skyreels_fp8").addHandler(handler)
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
ARGS = dict(width=32, height=32, frames=5, seed=1, steps=2, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="diffusion forcing", base_num_frames=97, overlap_history=17, ar_step=0, causal_block_size=1,
            addnoise_condition=0)

def sample(model, **kw):
    return SampleVideo.execute(model, pos, neg, **nest_mode({{**ARGS, **kw}})).args[:3]

result = {{}}
# The tiny DF model stands for DF-1.3B (the check compares the model's width with this constant).
from skyreels_pack.nodes.adapters import fps
fps.DF_1_3B_DIM = 256
core = comfy.sd.load_diffusion_model(os.path.join({folder!r}, "df_bf16.safetensors"))
ours = load("df_bf16.safetensors")[0]
result["core"] = [sample(core)[1], sample(core)[1]]
result["ours"] = sample(ours)[1]

# ModelSamplingSD3: shift 0 uses it, another shift overrides it (and says so once).
patched = ModelSamplingSD3().patch(ours, 3.0)[0]
zero, zero_report = sample(patched, shift=0.0)[:2]
three, three_report = sample(ours, shift=3.0)[:2]
result["three report"] = three_report        # no ModelSamplingSD3 on the MODEL: nothing overridden to name
# Standard mode guides at any cfg (SkyReels-V2's T2V / I2V pipelines, the host); only diffusion forcing not below 1.
result["standard cfg 0.5"] = sample(ours, mode="standard", cfg=0.5)[1]
# The weights line names the host's own per-tensor FP8 layout as ours.
from skyreels_pack.nodes.adapters import run_report
core_fp8 = comfy.sd.load_diffusion_model(os.path.join({folder!r}, "t2v_fp8_tensor.safetensors"))
result["core fp8 weights"] = run_report.weights_summary(core_fp8)[0]
# legacy scaled_fp8 files keep one scale per layer in a tensor of shape [1]: per-tensor too
legacy = comfy.sd.load_diffusion_model(os.path.join({folder!r}, "t2v_legacy_scaled_fp8.safetensors"))
result["legacy fp8 weights"] = run_report.weights_summary(legacy)[0]
eight = [sample(patched, shift=8.0)[1] for _ in range(2)]
result["shift 0 = shift 3"] = torch.equal(zero["samples"], three["samples"])
result["zero report"] = zero_report
result["eight report"] = eight[0]
result["plain 0"] = "shift 8;" in sample(ours, shift=0.0)[1]          # no patch: the host's Wan default, 8
# SkipLayerGuidanceDiT turns its start/end percent into sigmas with the MODEL's shift (8) when it runs: at Sample
# Video's shift 3 its steps are others (at 2 steps, none), which the note says
from comfy_extras.nodes_slg import SkipLayerGuidanceDiT
slg = SkipLayerGuidanceDiT.execute(ours, 3.0, 0.01, 0.15, "1", "", 0.0).args[0]
result["slg"] = [sample(slg, shift=s)[1] for s in (3.0, 8.0)]
from comfy_extras.nodes_cfg import CFGZeroStar
result["cfg zero star"] = sample(CFGZeroStar.execute(ours).args[0], shift=3.0)[1]
# Normalized Attention Guidance patches attention outputs, which the host's Wan model never calls (KSampler: silent)
from comfy_extras.nodes_nag import NAGuidance
nag = NAGuidance.execute(ours, 5.0, 0.5, 1.5).args[0]
nag_out, nag_report = sample(nag)[:2]
result["nag"] = [nag_report, torch.equal(nag_out["samples"], sample(ours)[0]["samples"])]

# A MODEL whose sampling has no flow shift: shift 0 is refused with a message, a set shift runs.
from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete
eps = ModelSamplingDiscrete().patch(ours, "eps", False)[0]
try:
    sample(eps, shift=0.0)
except ValueError as e:
    result["no flow shift"] = str(e)
result["eps runs"] = bool(sample(eps, shift=8.0)[0]["samples"].isfinite().all())
# The model is given SkyReels-V2's integer timesteps; sigmas not in the table get 1000 sigma.
from skyreels_pack.nodes.adapters import per_frame
from skyreels_pack.sampling.schedule import flow_sigmas, model_timesteps
sampling = per_frame.patch(ours, 8.0, model_timesteps(4, 8.0, 251)).get_model_object("model_sampling")
sigmas = flow_sigmas(4, 8.0)
result["timesteps"] = sampling.timestep(torch.tensor([[sigmas[0], sigmas[1], 0.251, 0.999, 0.0, 0.5]])).tolist()

# Core Wan Context Windows: standard mode samples through them; Diffusion Forcing (its own windows, a sigma per
# frame) refuses them by name instead of failing inside the model on mismatched sizes.
from comfy_extras.nodes_context_windows import WanContextWindowsManualNode
windowed = WanContextWindowsManualNode.execute(ours, 9, 4, "standard_static", 1, False, "pyramid", False).args[0]
plain, split = (sample(m, mode="standard", frames=17)[0]["samples"] for m in (ours, windowed))
result["windows standard"] = [bool(split.isfinite().all()), rel(split, plain)]
try:
    sample(windowed, frames=17)
except ValueError as e:
    result["windows df"] = str(e)

result["log"] = lines
"""


def test_sample_video_says_what_it_does_not_use(host, tmp_path):
    import safetensors.torch
    from conftest import write_host_variants
    write_models(tmp_path)
    write_host_variants(str(tmp_path), safetensors.torch.load_file(str(tmp_path / "t2v_bf16.safetensors")))
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + CODE.format(folder=str(tmp_path)))
    note = ("fps: not applied: this 1.3B MODEL has no fps embedding. SkyReels-V2 DF-1.3B has one, which core Load "
            "Diffusion Model and ComfyUI-GGUF drop: load DF-1.3B with Load FP8 SkyReels Model to condition on fps")
    assert all(report.endswith(note) for report in r["core"]), r["core"]
    assert note not in r["ours"]
    assert r["log"].count(f"Sample Video: {note}") == 1, r["log"]          # once, for two runs
    assert r["shift 0 = shift 3"] and "shift 3;" in r["zero report"]
    assert "shift 8;" in r["eight report"] and r["plain 0"]
    overridden = ("Sample Video: shift 8 runs; the MODEL's ModelSamplingSD3 shift 3 is not used (set Sample Video's "
                  "shift to 0 to use it)")
    assert r["log"].count(overridden) == 1, r["log"]
    assert r["eight report"].endswith("\n" + overridden[len("Sample Video: "):]), r["eight report"]   # and the report
    assert "ModelSamplingSD3" not in r["zero report"]
    slg = ("Sample Video: shift 3 runs, the MODEL's own is 8; a guidance patch on the MODEL with a step range "
           "(SkipLayerGuidanceDiT's start and end percent) turned it into noise levels at shift 8, so it acts at other "
           "steps: put ModelSamplingSD3 (shift 3) before it, and shift 0 here")
    assert r["slg"][0].endswith("\n" + slg[len("Sample Video: "):]) and r["log"].count(slg) == 1, r["slg"][0]
    assert "guidance patch" not in r["slg"][1], r["slg"][1]       # its own shift: no note
    assert "guidance patch" not in r["cfg zero star"], r["cfg zero star"]    # no step range: no note (it said one)
    assert r["nag"][0].endswith("\nthis MODEL carries patches that ComfyUI's Wan model never calls "
                                "(attn1_output_patch, e.g. from Normalized Attention Guidance): they have no effect, "
                                "in KSampler too") and r["nag"][1], r["nag"]     # and none it has
    assert "shift 3;" in r["three report"] and "ModelSamplingSD3" not in r["three report"], r["three report"]
    assert ", cfg 0.5, " in r["standard cfg 0.5"].splitlines()[0] and "guides only" not in r["standard cfg 0.5"]
    assert r["core fp8 weights"] == "Linear weights: 20 float8_e4m3fn (per-tensor), 6 float32", r["core fp8 weights"]
    assert r["legacy fp8 weights"].startswith("Linear weights: 20 float8_e4m3fn (per-tensor)"), r["legacy fp8 weights"]
    assert r["no flow shift"] == ("Sample Video: shift: 0 takes the MODEL's flow shift, but its model sampling "
                                  "(ModelSamplingAdvanced) has none; set a shift (SkyReels-V2: 8.0)"), r
    assert r["eps runs"]
    assert r["windows standard"][0] and r["windows standard"][1] > 1e-3, r["windows standard"]   # windows applied
    assert r["windows df"] == ("Sample Video: mode: diffusion forcing makes long videos in its own windows "
                               "(base_num_frames, overlap_history), with a noise level per frame that the MODEL's "
                               "context windows (e.g. Wan Context Windows) cannot split; remove that node from the "
                               "MODEL, or use mode 'standard'"), r.get("windows df")
    assert r["timesteps"] == [[999.0, 959.0, 251.0, 999.0, 0.0, 500.0]], r["timesteps"]


def test_no_fps_note_for_a_1_3b_file_without_one_loaded_by_our_loader(host, tmp_path):
    # Wan 2.1 T2V-1.3B (core's text_to_video_wan template's model) has no fps embedding, and Load FP8 SkyReels Model
    # keeps one wherever a file has it: nothing was dropped, so Sample Video must not tell the user to load DF-1.3B
    # with the node they already use. Core's loader of the same file still gets the note.
    from helpers import write_tiny
    write_tiny(tmp_path / "wan_t2v_1.3B.safetensors", "T2V", seed=1, dim=1536, ffn_dim=256)
    # SkyReels-V2 I2V-1.3B is 1.3B too (36 input channels) and has no fps embedding: core's loader drops none
    write_tiny(tmp_path / "i2v_1.3B.safetensors", "I2V", seed=2, dim=1536, ffn_dim=256)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + """
from skyreels_pack.nodes.adapters import fps
ours = load("wan_t2v_1.3B.safetensors", "bf16")[0]
core = comfy.sd.load_diffusion_model(folder_paths.get_full_path("diffusion_models", "wan_t2v_1.3B.safetensors"))
i2v = comfy.sd.load_diffusion_model(folder_paths.get_full_path("diffusion_models", "i2v_1.3B.safetensors"))
result = dict(ours=fps.lost(ours), ours_clone=fps.lost(ours.clone()), core=fps.lost(core), i2v=fps.lost(i2v))
""")
    assert r["ours"] is None and r["ours_clone"] is None, r
    assert r["core"].startswith("fps: not applied"), r
    assert r["i2v"] is None, r
