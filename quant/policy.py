"""Which tensors of a Wan 2.1 / SkyReels-V2 state dict become FP8.

Only the Linear weights inside the transformer blocks are quantized:
    blocks.N.self_attn.{q,k,v,o}, blocks.N.cross_attn.{q,k,v,o,k_img,v_img}, blocks.N.ffn.{0,2}
Everything else stays in high precision: patch_embedding, text/time embeddings, time_projection, head, img_emb,
fps_embedding/fps_projection, every norm, the modulation tables and all biases.

Why (measured with `python bench/convert.py --policy`, shapes of the real models on the meta device):
- the block Linears are 98.3% of the bf16 weight bytes of the 14B model (98.1% of 1.3B): keeping the rest in bf16
  makes the file 0.508x (0.510x) of bf16 instead of 0.5x. Most of that rest is time_projection (6*dim*dim, 1.1% of
  14B), which is also the most sensitive tensor there is: it alone produces the shift/scale/gate of every block;
- the rest feeds the whole network at once: the time embedding/projection and the modulation tables set the
  scale/shift/gate of every block (an error there is an error in every token of every block), the patch embedding
  and head are the model's input and output, and norms/biases are vectors too small to gain anything.
The first / last N blocks can be kept in bf16 as well (SkyReels-V2 users do this for long high-motion videos).
"""
import re

_QUANTIZED = re.compile(r"^blocks\.(\d+)\.(?:self_attn\.[qkvo]|cross_attn\.(?:[qkvo]|k_img|v_img)|ffn\.[02])\.weight$")


def block_index(key):
    """Block number of a quantizable weight key, or None if the key is never quantized."""
    m = _QUANTIZED.match(key)
    return int(m.group(1)) if m else None


def should_quantize(key, num_layers, keep_first_blocks=0, keep_last_blocks=0):
    block = block_index(key)
    if block is None:
        return False
    return keep_first_blocks <= block < num_layers - keep_last_blocks


def layer_name(weight_key):
    return weight_key[: -len(".weight")]
