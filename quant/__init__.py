"""FP8 core of the SkyReels-V2 FP8 pack: pure PyTorch, no ComfyUI imports (tested on its own)."""
__version__ = "0.1.0"

from .checkpoint import Checkpoint, CheckpointError  # noqa: E402
from .convert import Options, VerifyError, convert  # noqa: E402

__all__ = ["Checkpoint", "CheckpointError", "Options", "VerifyError", "convert"]
