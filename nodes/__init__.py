"""ComfyUI nodes: thin adapters from the host's types onto `quant/`, `attention/` and `sampling/`."""
import sys

from comfy_api.latest import ComfyExtension

from .convert import ConvertToFP8
from .loader import LoadFP8SkyReelsModel
from .parallel import ParallelConfig
from .sample import SampleVideo, upgrade_prompt
from .sage_patch import PatchSageAttention
from .teacache import TeaCache


class SkyReelsFP8Extension(ComfyExtension):
    async def on_load(self):
        # The server exists when ComfyUI runs as one (main.py imports it first), not in a bare PromptExecutor.
        server = getattr(sys.modules.get("server"), "PromptServer", None)
        if getattr(server, "instance", None) is not None:
            server.instance.add_on_prompt_handler(upgrade_prompt)

    async def get_node_list(self):
        return [LoadFP8SkyReelsModel, ConvertToFP8, PatchSageAttention, TeaCache, SampleVideo, ParallelConfig]
