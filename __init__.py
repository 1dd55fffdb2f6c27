"""ComfyUI entry point of the SkyReels-V2 FP8 pack.

ComfyUI imports every pack at start-up, so this file imports nothing heavy: the nodes (and through them torch
code, never sageattention/triton) are imported when the host asks for the node list.
"""

WEB_DIRECTORY = "./nodes/web"    # one frontend file: loads workflows saved before mode was a dynamic combo


async def comfy_entrypoint():
    from .nodes import SkyReelsFP8Extension

    return SkyReelsFP8Extension()
