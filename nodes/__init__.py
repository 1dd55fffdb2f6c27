"""ComfyUI nodes: thin adapters from the host's types onto `quant/` and `attention/`."""
from comfy_api.latest import ComfyExtension


class SkyReelsFP8Extension(ComfyExtension):
    async def get_node_list(self):
        return []
