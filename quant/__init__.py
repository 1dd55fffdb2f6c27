"""FP8 core of the SkyReels-V2 FP8 pack: pure PyTorch, no ComfyUI imports (tested on its own)."""
__version__ = "0.1.0"

from .checkpoint import Checkpoint, CheckpointError  # noqa: E402
from .convert import Options, VerifyError, convert  # noqa: E402
from .fp8 import dequantize_weight, fp8_linear, quantize_weight, quantize_weight_chunked  # noqa: E402
from .model_info import ModelInfo, detect  # noqa: E402
from .policy import should_quantize  # noqa: E402

__all__ = ["Checkpoint", "CheckpointError", "ModelInfo", "Options", "VerifyError", "convert", "dequantize_weight",
           "detect", "fp8_linear", "quantize_weight", "quantize_weight_chunked", "should_quantize"]
