"""Community Wan 2.1 / SkyReels-V2 LoRA files in every key format the host's comfy/lora.py reads for a Wan model
(ComfyUI lora_up/lora_down and lora_A/lora_B, kohya/musubi lora_unet_, Wan-Fun lora_unet__, Kijai-style distillation
LoRAs with .diff/.diff_b on biases, norms, modulation and head, full-weight .diff, LyCORIS LoKr and LoHa, layers this
loader keeps high precision: patch embedding Conv3d, text/time embeddings, head, I2V img_emb) through core Load LoRA
on a Load FP8 SkyReels Model MODEL, against the same LoRA on core's loader (comfy.sd.load_diffusion_model): the same
LoRA keys load (and the same are logged `lora key not loaded`, e.g. diffusers' transformer.* names, which the host
does not map for Wan), and every patched weight comes out as core's."""
import math

import pytest
import safetensors.torch
import torch

from comfy_host import REPO, run_in_host
from helpers import write_tiny
from in_host import SETUP

from quant.policy import _QUANTIZED

RANK = 4
KEPT = ("patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
        "time_projection.1", "head.head", "img_emb.proj.1", "img_emb.proj.3")


def _up_down(g, w, alpha=None):
    """A rank-4 pair whose product moves `w` by about half its norm (times alpha / rank where alpha is given)."""
    down = torch.randn((RANK,) + tuple(w.shape[1:]), generator=g) / math.sqrt(w[0].numel())
    up = torch.randn((w.shape[0], RANK) + (1,) * (w.dim() - 2), generator=g) * w.float().norm() / math.sqrt(
        w.shape[0] * RANK)
    return up.to(torch.bfloat16), down.to(torch.bfloat16)


def write_loras(folder, sd):
    g = torch.Generator().manual_seed(7)
    blocks = [k[:-7] for k in sd if _QUANTIZED.match(k)]
    kept = [k for k in KEPT if k + ".weight" in sd]
    kohya = lambda layer: "lora_unet_" + layer.replace(".", "_")
    files = {}

    def up_down(name, layers, key, up_name, down_name, alpha=None):
        out = {}
        for layer in layers:
            out[f"{key(layer)}.{up_name}"], out[f"{key(layer)}.{down_name}"] = _up_down(g, sd[layer + ".weight"])
            if alpha:
                out[f"{key(layer)}.alpha"] = torch.tensor(alpha)
        files[name] = out
        return out

    up_down("comfy_AB", blocks, lambda l: "diffusion_model." + l, "lora_B.weight", "lora_A.weight")
    up_down("kohya", blocks, kohya, "lora_up.weight", "lora_down.weight", alpha=2.0)
    up_down("wan_fun", blocks, lambda l: "lora_unet__" + l.replace(".", "_"), "lora_up.weight", "lora_down.weight", 2.0)
    up_down("kept_layers", kept, lambda l: "diffusion_model." + l, "lora_up.weight", "lora_down.weight", alpha=4.0)
    up_down("diffusers", blocks, lambda l: "transformer." + l, "lora_B.weight", "lora_A.weight")   # not for Wan
    distill = dict(up_down("distill", blocks + kept[1:], lambda l: "diffusion_model." + l, "lora_up.weight",
                           "lora_down.weight", alpha=4.0))
    for k, t in sd.items():        # Kijai's distillation LoRAs: .diff_b on biases, .diff on norms and modulation
        d = (0.05 * t.float().abs().mean() * torch.randn(t.shape, generator=g)).to(torch.bfloat16)
        if k.endswith(".bias"):
            distill[f"diffusion_model.{k[:-5]}.diff_b"] = d
        elif k.endswith("modulation") or ("norm" in k and k.endswith(".weight")):
            distill[f"diffusion_model.{k.removesuffix('.weight')}.diff"] = d
    files["distill"] = distill
    files["full_diff"] = {f"diffusion_model.{l}.diff": (0.1 * sd[l + ".weight"].float().abs().mean() * torch.randn(
        sd[l + ".weight"].shape, generator=g)).to(torch.bfloat16) for l in blocks[::3] + ["patch_embedding"]}
    files["lokr"], files["loha"] = {}, {}
    for l in blocks:
        (o, i), s = sd[l + ".weight"].shape, sd[l + ".weight"].float().std()
        files["lokr"].update({kohya(l) + ".lokr_w1": torch.randn(4, 4, generator=g) * 0.5,
                              kohya(l) + ".lokr_w2_a": torch.randn(o // 4, RANK, generator=g) * 0.3 * s,
                              kohya(l) + ".lokr_w2_b": torch.randn(RANK, i // 4, generator=g) * 6 / math.sqrt(i),
                              kohya(l) + ".alpha": torch.tensor(float(RANK))})
        files["loha"].update({kohya(l) + ".hada_w1_a": torch.randn(o, RANK, generator=g) * 0.7,
                              kohya(l) + ".hada_w1_b": torch.randn(RANK, i, generator=g) * 0.7,
                              kohya(l) + ".hada_w2_a": torch.randn(o, RANK, generator=g) * 0.7,
                              kohya(l) + ".hada_w2_b": torch.randn(RANK, i, generator=g) * 0.7 * s,
                              kohya(l) + ".alpha": torch.tensor(float(RANK))})
    for name, tensors in files.items():
        safetensors.torch.save_file(tensors, str(folder / f"{name}.safetensors"))
    return sorted(files)


CODE = r"""
import logging, types, nodes as core
folder_paths.add_model_folder_path("loras", {folder!r})
lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger().addHandler(handler)
path = os.path.join({folder!r}, "{variant}_bf16.safetensors")
ours = load("{variant}_bf16.safetensors", {weight_format!r})[0]
# core's loader: in bf16 to compare with weight_format bf16 (the host's own path, so equal); else as on a CPU (fp32)
bf16 = {weight_format!r} == "bf16"
core_model = comfy.sd.load_diffusion_model(path, model_options={{"dtype": torch.bfloat16}} if bf16 else {{}})

def with_lora(model, name):
    del lines[:]
    patched = core.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]
    return patched, sorted(l for l in lines if "lora key not loaded" in l or "NOT LOADED" in l)

def merged(patcher, key):
    w = patcher.patch_weight_to_device(key, return_weight=True)
    return (w.dequantize() if hasattr(w, "dequantize") else w).float()

def scales(patcher, key):     # the merged weight's scale after the host re-quantized it
    w = patcher.patch_weight_to_device(key, return_weight=True)
    s = w._params.scale
    return "per row" if list(s.shape) == [w.shape[0], 1] else "one" if s.dim() == 0 else str(list(s.shape))

clip = types.SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, 1280, generator=g))
pos = [[torch.randn(1, 8, 4096, generator=g), {{"clip_vision_output": clip}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{"clip_vision_output": clip}}]]
def ksampler(model):
    latent = {{"samples": torch.zeros(1, 16, 3, 4, 4)}}
    return core.common_ksampler(model, 1, 2, 3.0, "euler", "simple", pos, neg, latent)[0]["samples"]

quantized = {{k for k, v in ours.model.state_dict().items() if v.dtype == torch.float8_e4m3fn}}
result = {{}}
for name in {names!r}:
    (a, log_a), (b, log_b) = with_lora(ours, name + ".safetensors"), with_lora(core_model, name + ".safetensors")
    errors = {{}}
    for key in [k for k in b.patches if ".blocks.1." not in k]:     # block 1 is patched as block 0 is
        wa, wb = merged(a, key), merged(b, key)
        errors[key] = rel(wa, wb) if key in quantized else float((wa - wb).abs().max())
    result[name] = dict(keys=[sorted(a.patches) == sorted(b.patches), len(a.patches)], log=[log_a == log_b, len(log_a)],
                        fp8=max([e for k, e in errors.items() if k in quantized] or [0.0]),
                        fp8_layers=len([k for k in errors if k in quantized]),
                        kept=max([e for k, e in errors.items() if k not in quantized] or [0.0]),
                        scales=sorted({{scales(a, k) for k in errors if k in quantized}}))
(a, _), (b, _) = with_lora(ours, "distill.safetensors"), with_lora(core_model, "distill.safetensors")
sampled = ksampler(b)
result["sampled"] = [rel(ksampler(a), sampled), rel(sampled, ksampler(core_model))]
"""


@pytest.mark.parametrize("variant,weight_format", [("t2v", "bf16"), ("t2v", "fp8_e4m3fn (per-channel)"),
                                                   ("i2v", "fp8_e4m3fn (per-tensor)")])
def test_lora_formats_load_as_on_core_loader(host, tmp_path, variant, weight_format):
    sd = write_tiny(tmp_path / f"{variant}_bf16.safetensors", variant.upper(), seed=3)
    names = write_loras(tmp_path, sd)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + CODE.format(
        folder=str(tmp_path), variant=variant, weight_format=weight_format, names=names))
    blocks = 10 if variant == "t2v" else 12        # Linears per block: self/cross q k v o, ffn 0 and 2 (+ k_img v_img)
    for name in names:
        got = r[name]
        assert got["keys"][0] and got["log"][0], (name, got)      # the same weights patched, the same keys refused
        if name == "diffusers":     # comfy/lora.py maps no transformer.* names for Wan: all refused, on both
            assert got["keys"][1] == 0 and got["log"][1] == 4 * blocks, got
            continue
        assert got["keys"][1] > 0 and got["log"][1] == 0, (name, got)
        if weight_format == "bf16":
            assert got["fp8"] == 0.0 and got["kept"] == 0.0, (name, got)    # the host's own bf16 path: equal
        else:
            # Tensors kept high precision get core's fp32 merge exactly. FP8 ones: W + dW re-quantized, rounded
            # stochastically by the host's own rule (as its FP8 files are): 0.03-0.045 per weight here, against
            # about 0.02 for rounding to nearest; a LoRA not applied would be off by its whole size (0.2 and up).
            assert got["kept"] == 0.0, (name, got)
            assert got["fp8"] <= 0.06, (name, got)
            # re-quantized in the file's layout: one scale per output row stays one per row (a per-tensor scale
            # there is within the bound above on these random weights, but not on trained ones with outlier rows)
            per_row = weight_format.endswith("(per-channel)")
            assert got["scales"] == ([] if not got["fp8_layers"] else ["per row"] if per_row else ["one"]), (name, got)
    assert r["kept_layers"]["keys"][1] >= 7     # patch embedding (Conv3d), embeddings, head (+ img_emb)
    assert r["distill"]["fp8_layers"] == (0 if weight_format == "bf16" else blocks), r["distill"]   # FP8 merges seen
    # end to end, the distillation LoRA (every kind of key) through core KSampler: the LoRA moves the latents by
    # ~2x their size; bf16 equals core, FP8 differs by its own error with the merged weights re-quantized (0.07-0.11)
    moved_by_lora, sampled = r["sampled"][1], r["sampled"][0]
    assert moved_by_lora > 1.0 and sampled <= (0.0 if weight_format == "bf16" else 0.15), r["sampled"]
