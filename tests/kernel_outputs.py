"""Run the real sageattention 1.0.6 Triton kernels on CPU (TRITON_INTERPRET=1) and save their outputs.

Called by tests/test_attention.py in a subprocess, because the interpreter must be chosen before triton is imported.
It calls the functions below `sageattn` (which insists on CUDA) the way `sageattn` calls them.
    python tests/kernel_outputs.py CASES.pt OUT.pt
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from sageattention.attn_qk_int8_per_block import forward as attn  # noqa: E402
from sageattention.attn_qk_int8_per_block_causal import forward as attn_causal  # noqa: E402
from sageattention.attn_qk_int8_per_block_h96 import forward as attn_h96  # noqa: E402
from sageattention.attn_qk_int8_per_block_h96_causal import forward as attn_h96_causal  # noqa: E402
from sageattention.quant_per_block import per_block_int8  # noqa: E402
from sageattention.quant_per_block_hd96 import per_block_int8_hd96  # noqa: E402


def kernel(q, k, v, layout, is_causal, sm_scale):
    seq = 1 if layout == "NHD" else 2
    k = k - k.mean(dim=seq, keepdim=True)
    hd96 = q.shape[-1] == 96  # sageattn's own dispatch: head dim 96 has kernels of its own
    quant = per_block_int8_hd96 if hd96 else per_block_int8
    q_int8, q_scale, k_int8, k_scale = quant(q, k, sm_scale=sm_scale, tensor_layout=layout)
    fn = {(False, False): attn, (False, True): attn_causal, (True, False): attn_h96, (True, True): attn_h96_causal}[
        (hd96, is_causal)]
    return fn(q_int8, k_int8, v.to(torch.float16), q_scale, k_scale, tensor_layout=layout, output_dtype=q.dtype)


def main(cases_path, out_path):
    cases = torch.load(cases_path)
    torch.save({name: kernel(**case) for name, case in cases.items()}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
