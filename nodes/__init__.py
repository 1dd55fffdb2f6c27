"""ComfyUI nodes: thin adapters from the host's types onto `quant/`, `attention/` and `sampling/`."""
from comfy_api.latest import ComfyExtension

from .convert import ConvertToFP8
from .loader import LoadFP8SkyReelsModel
from .parallel import ParallelConfig
from .sample import SampleVideo
from .sage_patch import PatchSageAttention
from .teacache import TeaCache


class SkyReelsFP8Extension(ComfyExtension):
    async def get_node_list(self):
        return [LoadFP8SkyReelsModel, ConvertToFP8, PatchSageAttention, TeaCache, SampleVideo, ParallelConfig]
