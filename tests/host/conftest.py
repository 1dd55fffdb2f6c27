import json
import shutil
import os

import pytest
import safetensors.torch
import torch
from comfy_host import run_in_host
from helpers import write_tiny, write_tiny_release
from server import Server

from quant import Options, convert, tiny
from quant.policy import should_quantize

LORA_RANK = 4


def write_host_variants(folder, sd):
    """FP8 files as other tools write them, from the same bf16 weights."""
    linears = [k for k in sd if should_quantize(k, 2)]
    ours = dict(safetensors.torch.load_file(os.path.join(folder, "t2v_fp8_tensor.safetensors")))
    with open(os.path.join(folder, "t2v_fp8_tensor.safetensors"), "rb") as f:
        meta = json.loads(f.read(int.from_bytes(f.read(8), "little"))).get("__metadata__", {})
    # The host's format with the layer list only in the safetensors metadata.
    safetensors.torch.save_file({k: v for k, v in ours.items() if not k.endswith(".comfy_quant")},
                                os.path.join(folder, "t2v_comfy_metadata_only.safetensors"),
                                metadata={"_quantization_metadata": meta["_quantization_metadata"]})
    # ...and with comfy_quant tensors only.
    safetensors.torch.save_file(ours, os.path.join(folder, "t2v_comfy_tensors_only.safetensors"))
    # Legacy scaled_fp8: a marker tensor and <layer>.scale_weight.
    legacy = {k: v for k, v in sd.items()}
    for k in linears:
        w = sd[k].float()
        s = w.abs().max() / 448
        legacy[k] = (w / s).to(torch.float8_e4m3fn)
        legacy[k[:-len(".weight")] + ".scale_weight"] = s.reshape(1)
    legacy["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    safetensors.torch.save_file(legacy, os.path.join(folder, "t2v_legacy_scaled_fp8.safetensors"))
    # A plain cast to fp8, no scales.
    plain = {k: (v.to(torch.float8_e4m3fn) if k in linears else v) for k, v in sd.items()}
    safetensors.torch.save_file(plain, os.path.join(folder, "t2v_plain_cast.safetensors"))


def write_lora(path, sd, seed=5):
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for k in [k for k in sd if should_quantize(k, 2) and ".self_attn." in k]:
        out_f, in_f = sd[k].shape
        base = "diffusion_model." + k[: -len(".weight")]
        lora[base + ".lora_up.weight"] = torch.randn(out_f, LORA_RANK, generator=g) * 0.15
        lora[base + ".lora_down.weight"] = torch.randn(LORA_RANK, in_f, generator=g) * 0.15
    safetensors.torch.save_file(lora, str(path))


def write_bad_files(folder):
    safetensors.torch.save_file({"model.layers.0.mlp.up_proj.weight": torch.ones(4, 4)},
                                os.path.join(folder, "bad_other_arch.safetensors"))
    good = os.path.join(folder, "t2v_bf16.safetensors")
    data = open(good, "rb").read()
    open(os.path.join(folder, "bad_truncated.safetensors"), "wb").write(data[: len(data) // 2])
    torch.save({"w": torch.ones(2), "x": Payload()}, os.path.join(folder, "bad_pickled.pth"))
    sd = tiny.state_dict(tiny.info("T2V"), seed=1)
    sd["blocks.0.ffn.0.weight"][0, 0] = float("nan")
    safetensors.torch.save_file(sd, os.path.join(folder, "bad_nan.safetensors"))
    del sd["blocks.1.cross_attn.o.weight"]
    safetensors.torch.save_file(sd, os.path.join(folder, "bad_missing_keys.safetensors"))
    vace = tiny.state_dict(tiny.info("T2V"), seed=1)
    vace["vace_patch_embedding.weight"] = torch.zeros(256, 96, 1, 2, 2, dtype=torch.bfloat16)
    safetensors.torch.save_file(vace, os.path.join(folder, "bad_wan_vace.safetensors"))
    wan22 = tiny.state_dict(tiny.info("T2V"), seed=1)      # Wan 2.2 TI2V-5B's latent: 48 channels, same key names
    wan22["patch_embedding.weight"] = torch.zeros(256, 48, 1, 2, 2, dtype=torch.bfloat16)
    wan22["head.head.weight"], wan22["head.head.bias"] = torch.zeros(192, 256), torch.zeros(192)
    safetensors.torch.save_file(wan22, os.path.join(folder, "bad_wan22_ti2v.safetensors"))
    fp8 = safetensors.torch.load_file(os.path.join(folder, "t2v_fp8_tensor.safetensors"))
    del fp8["blocks.0.ffn.0.weight_scale"]                  # its comfy_quant still says it is scaled
    safetensors.torch.save_file(fp8, os.path.join(folder, "bad_fp8_no_scale.safetensors"))
    os.symlink("moved_away.safetensors", os.path.join(folder, "bad_dangling.safetensors"))   # a moved model
    safetensors.torch.save_file({"blocks.0.self_attn.q.lora_down.weight": torch.ones(4, 256),   # a LoRA, by its keys
                                 "blocks.0.self_attn.q.lora_up.weight": torch.ones(256, 4)},
                                os.path.join(folder, "bad_lora.safetensors"))
    safetensors.torch.save_file({"audio_proj.proj1.weight": torch.ones(8, 8), "audio_proj.norm.weight": torch.ones(8),
                                 "blocks.0.audio_cross_attn.proj.weight": torch.ones(8, 8)},   # MultiTalk's patch
                                os.path.join(folder, "bad_multitalk_patch.safetensors"))


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def write_workflow_files(host, base):
    """Tiny stand-ins under the names the shipped workflows carry: release folders of the public SkyReels-V2
    models, the Wan 2.1 VAE (tiny, built with the host's own VAE class), and LoadImage's example.png."""
    models = os.path.join(base, "models")
    for name, variant, seed in (("SkyReels-V2-T2V-14B-540P", "T2V", 1), ("SkyReels-V2-I2V-14B-540P", "I2V", 3),
                                ("SkyReels-V2-DF-1.3B-540P", "DF", 2)):
        write_tiny_release(os.path.join(models, "diffusion_models", name), variant, seed=seed)
    os.makedirs(os.path.join(models, "vae"), exist_ok=True)
    vae = os.path.join(models, "vae", "wan_2.1_vae.safetensors")
    run_in_host(host, f"from generate_video_fp8 import write_tiny_vae\nwrite_tiny_vae({vae!r})\nresult = 1")
    # The encoders the workflows name exist (empty) so the frontend lists them; tests substitute those nodes.
    for folder, name in (("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
                         ("clip_vision", "clip_vision_h.safetensors")):
        os.makedirs(os.path.join(models, folder), exist_ok=True)
        open(os.path.join(models, folder, name), "wb").close()
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(48, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
    from PIL import Image
    Image.fromarray(image).save(os.path.join(base, "input", "example.png"))


@pytest.fixture(scope="session")
def server(host, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("comfy_base"))
    srv = Server(host, base)
    models = os.path.join(base, "models", "diffusion_models")
    sd = write_tiny(os.path.join(models, "t2v_bf16.safetensors"), "T2V", seed=1)
    write_tiny(os.path.join(models, "df_bf16.safetensors"), "DF", seed=2)
    torch.save(sd, os.path.join(models, "t2v_bf16.pth"))     # the same weights as a plain torch state dict
    src = os.path.join(models, "t2v_bf16.safetensors")
    convert(src, os.path.join(models, "t2v_fp8_tensor.safetensors"), Options())
    convert(src, os.path.join(models, "t2v_fp8_channel.safetensors"), Options(granularity="channel"))
    write_host_variants(models, sd)
    write_lora(os.path.join(base, "models", "loras", "tiny_lora.safetensors"), sd)
    write_bad_files(models)
    tiny.write_release(os.path.join(models, "t2v.sharded"), sd, shards=3)
    tiny.write_release(os.path.join(models, "SkyReels", "t2v.nested"), sd, shards=2)   # users sort models in folders
    for part in ("transformer", "text_encoder"):             # a *-Diffusers download (keys as they are: not loaded)
        tiny.write_release(os.path.join(models, "t2v-Diffusers", part), sd, shards=2)
    open(os.path.join(models, "t2v-Diffusers", "model_index.json"), "w").write('{"_class_name": "SkyReelsV2Pipeline"}')
    os.makedirs(os.path.join(models, "t2v.release"))      # as SkyReels-V2's 1.3B releases: config.json, one file
    shutil.copyfile(src, os.path.join(models, "t2v.release", "model.safetensors"))
    with open(os.path.join(models, "t2v.release", "config.json"), "w") as f:
        f.write('{"_class_name": "WanModel", "model_type": "t2v"}')
    # SkyReels-V2's releases also carry Wan's text encoder and VAE as .pth files, which Load CLIP / Load VAE read
    for folder, name in (("t2v.release", "Wan2.1_VAE.pth"), ("t2v.sharded", "models_t5_umt5-xxl-enc-bf16.pth")):
        torch.save({"w": torch.ones(2)}, os.path.join(models, folder, name))
    shutil.copyfile(src, os.path.join(models, "t2v.sharded", "written_inside.safetensors"))   # not one of its shards
    shutil.copytree(os.path.join(models, "t2v.release"), os.path.join(models, "t2v.converted"))    # + a conversion
    shutil.copyfile(src, os.path.join(models, "t2v.converted", "model_fp8.safetensors"))
    write_workflow_files(host, base)
    srv.start()
    yield srv
    srv.stop()
