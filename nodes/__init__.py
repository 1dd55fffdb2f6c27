"""ComfyUI nodes: thin adapters from the host's types onto `quant/`, `attention/` and `sampling/`."""
from comfy_api.latest import ComfyExtension

from .convert import ConvertToFP8
from .loader import LoadFP8SkyReelsModel
from .parallel import ParallelConfig
from .sample import SampleVideo, upgrade_prompt
from .sage_patch import PatchSageAttention
from .teacache import TeaCache


class SkyReelsFP8Extension(ComfyExtension):
    async def on_load(self):
        try:                       # the server exists when ComfyUI runs as one, not in a bare PromptExecutor
            from server import PromptServer
        except ImportError:
            return
        if getattr(PromptServer, "instance", None) is not None:
            PromptServer.instance.add_on_prompt_handler(upgrade_prompt)

    async def get_node_list(self):
        return [LoadFP8SkyReelsModel, ConvertToFP8, PatchSageAttention, TeaCache, SampleVideo, ParallelConfig]
