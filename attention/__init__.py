"""8-bit SageAttention for SkyReels-V2: pure PyTorch, no ComfyUI imports (tested on its own). `sageattention` (and
triton) are imported only when a CUDA call first uses the kernels."""
