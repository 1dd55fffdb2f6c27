"""Which tensors become FP8: only the Linear weights inside the transformer blocks (attention q/k/v/o, k_img/v_img,
ffn.0/ffn.2). They are 98% of the weight bytes (docs/benchmarks.md); the rest (embeddings, time projection and
modulation, head, norms, biases) sets every block's scale/shift/gate or is too small to gain anything, so it stays
high precision. The first/last N blocks can stay too (SkyReels-V2 users do this for long high-motion videos)."""
import re

from .checkpoint import CheckpointError

_QUANTIZED = re.compile(r"^blocks\.(\d+)\.(?:self_attn\.[qkvo]|cross_attn\.(?:[qkvo]|k_img|v_img)|ffn\.[02])\.weight$")


def block_index(key):
    """Block number of a quantizable weight key, or None if the key is never quantized."""
    m = _QUANTIZED.match(key)
    return int(m.group(1)) if m else None


def should_quantize(key, num_layers, keep_first_blocks=0, keep_last_blocks=0):
    block = block_index(key)
    return block is not None and keep_first_blocks <= block < num_layers - keep_last_blocks


def layer_name(weight_key):
    return weight_key[: -len(".weight")]


def check_kept(path, num_layers, keep_first_blocks, keep_last_blocks):
    if keep_first_blocks + keep_last_blocks >= num_layers:
        raise CheckpointError(f"{path}: keep_first_blocks {keep_first_blocks} + keep_last_blocks "
                              f"{keep_last_blocks} keep all {num_layers} blocks in high precision, so nothing would "
                              "be FP8: lower them (or keep the model as it is: Load FP8 SkyReels Model's weight_format "
                              "bf16 loads it in high precision)")
