"""Run our Triton activation-quantization kernel on CPU (TRITON_INTERPRET=1) and save its outputs.

Called by the tests in a subprocess, because the interpreter must be chosen before triton is imported.
    python tests/act_quant_outputs.py CASES.pt OUT.pt
CASES.pt maps a name to either
    {"x", "scale" (None: per row), "max_tile"}          -> (q, scale) of the kernel
    {"x", "qweight", "weight_scale", "bias"}            -> fp8_linear(..., mode="w8a8") with the kernel quantizing x
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from quant import act_quant  # noqa: E402
from quant.fp8 import fp8_linear  # noqa: E402
from quant.act_quant_triton import quantize_rows  # noqa: E402


def run(case):
    if "qweight" in case:
        return fp8_linear(case["x"], case["qweight"], case["weight_scale"], case["bias"], mode="w8a8")
    return quantize_rows(case["x"], case["scale"], max_tile=case["max_tile"])


def main(cases_path, out_path):
    act_quant._use_fused = lambda x: True   # the kernel for CPU tensors too (it only runs on CUDA otherwise)
    cases = torch.load(cases_path)
    torch.save({name: run(case) for name, case in cases.items()}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
