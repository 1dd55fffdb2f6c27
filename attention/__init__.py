"""8-bit SageAttention for SkyReels-V2: pure PyTorch, no ComfyUI imports (tested on its own). `sageattention` (and
triton) are imported only when a CUDA call first uses the kernels."""
from .dispatch import MODES, Installed, choose
from .reference import sage_attention_reference
from .sage import kernel_unavailable, sage_attention

__all__ = ["MODES", "Installed", "choose", "kernel_unavailable", "sage_attention", "sage_attention_reference"]
