"""What a Wan 2.1 / SkyReels-V2 state dict is, read from its key names and shapes only (never a file name)."""
import re
from dataclasses import dataclass

# Keys every Wan 2.1 DiT has; a state dict without them is some other architecture.
CORE_KEYS = ("patch_embedding.weight", "head.modulation", "head.head.weight", "blocks.0.self_attn.q.weight",
             "blocks.0.ffn.0.weight", "time_projection.1.weight")

_TOP_KEYS = [f"{m}.{p}" for m in ("patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0",
                                  "time_embedding.2", "time_projection.1") for p in ("weight", "bias")]
_TOP_KEYS += ["head.modulation", "head.head.weight", "head.head.bias"]
_I2V_TOP_KEYS = [f"img_emb.proj.{i}.{p}" for i in (0, 1, 3, 4) for p in ("weight", "bias")]
_FPS_KEYS = ["fps_embedding.weight"] + [f"fps_projection.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
_BLOCK_KEYS = ["modulation", "norm3.weight", "norm3.bias", "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias"]
_BLOCK_KEYS += [f"{a}.{l}.{p}" for a in ("self_attn", "cross_attn") for l in "qkvo" for p in ("weight", "bias")]
_BLOCK_KEYS += [f"{a}.norm_{l}.weight" for a in ("self_attn", "cross_attn") for l in "qk"]
_I2V_BLOCK_KEYS = ["cross_attn.k_img.weight", "cross_attn.k_img.bias", "cross_attn.v_img.weight",
                   "cross_attn.v_img.bias", "cross_attn.norm_k_img.weight"]

SIZES = {1536: "1.3B", 5120: "14B"}
_SQUARE = re.compile(r"(^|\.)([qkvo]|k_img|v_img|text_embedding\.2|time_embedding\.2|fps_projection\.0)\.weight$")
TEXT_DIM, FREQ_DIM, CLIP_DIM, OUT_DIM = 4096, 256, 1280, 16
# Keys of other Wan 2.1/2.2 models built on the same blocks; ComfyUI's own loader runs those.
OTHER_WAN_MODELS = {"vace_": "VACE", "img_emb.emb_pos": "FLF2V", "ref_conv.": "Fun reference",
                    "control_adapter.": "Fun Control / camera", "casual_audio_encoder.": "S2V",
                    "audio_proj.audio_proj_glob": "HuMo", "face_adapter.": "Animate",
                    "patch_embedding_": "SCAIL / WanDancer"}
# Add-ons whose own files ComfyUI loads beside a model; merged into a Wan file (as MultiTalk's setup links its
# weights into an I2V release's index) they are tensors the model does not use, named by the loader.
ADD_ONS = {"audio_proj.proj1.": "MultiTalk / InfiniteTalk"}
# LoRA, LoHa, LoKr and full-difference keys, in the kohya, ComfyUI and diffusers spellings
LORA_KEY = re.compile(r"(^|[._])lora[._]|\.(hada|lokr)_|\.diff(_b)?$")


@dataclass(frozen=True)
class ModelInfo:
    variant: str        # "T2V", "I2V" or "DF" (DF-1.3B is the one variant with an fps embedding)
    dim: int
    ffn_dim: int
    num_layers: int
    in_dim: int
    has_fps: bool

    @property
    def size(self):
        return SIZES.get(self.dim, f"custom (dim {self.dim})")

    def describe(self):
        # T2V and DF checkpoints have the same keys; only DF-1.3B's fps embedding tells DF apart.
        variant = "T2V/DF" if self.variant == "T2V" else self.variant
        return f"SkyReels-V2 {variant} {self.size}, {self.num_layers} blocks"

    def expected_keys(self):
        i2v = self.variant == "I2V"
        keys = _TOP_KEYS + (_I2V_TOP_KEYS if i2v else []) + (_FPS_KEYS if self.has_fps else [])
        block_keys = _BLOCK_KEYS + (_I2V_BLOCK_KEYS if i2v else [])
        return keys + [f"blocks.{i}.{k}" for i in range(self.num_layers) for k in block_keys]

    def expected_shapes(self):
        return {key: self._shape(key) for key in self.expected_keys()}

    def _shape(self, key):
        name = key.split(".", 2)[-1] if key.startswith("blocks.") else key   # block keys without "blocks.N."
        d, f = self.dim, self.ffn_dim
        fixed = {
            "patch_embedding.weight": (d, self.in_dim, 1, 2, 2), "text_embedding.0.weight": (d, TEXT_DIM),
            "time_embedding.0.weight": (d, FREQ_DIM), "time_projection.1.weight": (6 * d, d),
            "time_projection.1.bias": (6 * d,), "head.modulation": (1, 2, d), "head.head.weight": (4 * OUT_DIM, d),
            "head.head.bias": (4 * OUT_DIM,), "modulation": (1, 6, d), "ffn.0.weight": (f, d), "ffn.0.bias": (f,),
            "ffn.2.weight": (d, f), "img_emb.proj.0.weight": (CLIP_DIM,), "img_emb.proj.0.bias": (CLIP_DIM,),
            "img_emb.proj.1.weight": (CLIP_DIM, CLIP_DIM), "img_emb.proj.1.bias": (CLIP_DIM,),
            "img_emb.proj.3.weight": (d, CLIP_DIM), "fps_embedding.weight": (2, d),
            "fps_projection.2.weight": (6 * d, d), "fps_projection.2.bias": (6 * d,),
        }
        return fixed.get(name, (d, d) if _SQUARE.search(name) else (d,))


class NotWanModel(ValueError):
    def __init__(self, message, core_runs=False):
        super().__init__(message)
        self.core_runs = core_runs    # another Wan model, which core's Load Diffusion Model runs from one Wan file


def detect(shapes):
    """shapes: {original Wan key name: shape}. Raises NotWanModel if the keys are not a Wan 2.1 DiT."""
    missing = [k for k in CORE_KEYS if k not in shapes]
    if missing and any(LORA_KEY.search(k) for k in shapes):
        raise NotWanModel("this is a LoRA, not a model: put it in models/loras and apply it to the loader's MODEL with "
                          "ComfyUI's Load LoRA node")
    other = next((name for prefix, name in {**OTHER_WAN_MODELS, **ADD_ONS}.items()
                  if any(k.startswith(prefix) for k in shapes)), None)
    if other and missing:   # an add-on's weights alone (Kijai's VACE modules, MultiTalk's patch): no loader of models
        where = ("ComfyUI's Load Model Patch node loads it (models/model_patches)" if other in ADD_ONS.values()
                 else "use it with the nodes made for it")
        raise NotWanModel(f"not a whole model: this file holds only the weights of a Wan {other} add-on; {where}")
    if other in OTHER_WAN_MODELS.values():
        raise NotWanModel(f"this is a Wan {other} model, not SkyReels-V2; load it with ComfyUI's Load Diffusion "
                          "Model node", core_runs=True)
    if missing:
        raise NotWanModel("not a SkyReels-V2/Wan diffusion model (no " + ", ".join(missing[:3]) + "); this pack runs "
                          "SkyReels-V2 and Wan 2.1 models, ComfyUI's own loaders run other models")
    # The shapes read below have these ranks in every Wan model (the full shapes are checked once the size is known)
    ranks = {"head.modulation": 3, "patch_embedding.weight": 5, "head.head.weight": 2, "blocks.0.ffn.0.weight": 2}
    wrong = next((k for k, n in ranks.items() if len(shapes[k]) != n), None)
    if wrong:
        raise NotWanModel(f"not a SkyReels-V2/Wan diffusion model, or a damaged one (its {wrong} has shape "
                          f"{list(shapes[wrong])}, where a Wan 2.1 DiT's has {ranks[wrong]} dimensions)")
    dim = shapes["head.modulation"][-1]
    if dim % 128:
        raise NotWanModel(f"not a SkyReels-V2/Wan diffusion model (hidden size {dim} is not a multiple of 128)")
    has_img = "img_emb.proj.1.weight" in shapes
    has_fps = "fps_embedding.weight" in shapes
    # SkyReels-V2 takes 16 latent channels, I2V 20 more for the image (beside its CLIP embedding).
    in_dim, out_dim = shapes["patch_embedding.weight"][1], shapes["head.head.weight"][0] // 4
    if (in_dim, out_dim) != (36 if has_img else 16, 16):
        known = {(48, False): " (as Wan 2.2 TI2V-5B)", (36, False): " (as Wan 2.2 I2V-A14B)",
                 (48, True): " (as Wan 2.1 Fun Control)"}.get((in_dim, has_img), "")
        raise NotWanModel(f"not a model this pack runs: it takes {in_dim} latent channels and makes {out_dim}{known}, "
                          "where SkyReels-V2 takes 16 (36 for I2V) and makes 16; ComfyUI's Load Diffusion Model node "
                          "runs other Wan models", core_runs=True)
    variant = "I2V" if has_img else ("DF" if has_fps else "T2V")
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    return ModelInfo(variant=variant, dim=dim, ffn_dim=shapes["blocks.0.ffn.0.weight"][0],
                     num_layers=max(blocks) + 1, in_dim=in_dim, has_fps=has_fps)
