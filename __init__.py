"""ComfyUI entry point of the SkyReels-V2 FP8 pack.

ComfyUI imports every pack at start-up, so this file imports nothing heavy: the nodes (and through them torch
code, never sageattention/triton) are imported when the host asks for the node list.
"""
import logging
import os
import re

WEB_DIRECTORY = "./nodes/web"    # a frontend file (workflows saved before mode was a dynamic combo), a help page
# The oldest ComfyUI the host tests pass on (pyproject.toml's requires-comfyui tells ComfyUI-Manager the same). An
# older one fails on host internals the nodes build on, with errors that name neither the pack nor the cure.
OLDEST_COMFYUI = "0.30.0"


def _check_comfyui():
    try:
        from comfyui_version import __version__ as found
    except ImportError:     # not ComfyUI's main.py (a test harness, a fork without the file): nothing to compare
        return
    found_release, oldest = (tuple(int(n) for n in re.findall(r"\d+", v)[:3]) for v in (found, OLDEST_COMFYUI))
    if found_release < oldest:
        raise ImportError(f"SkyReels-V2 FP8 needs ComfyUI {OLDEST_COMFYUI} or newer, and this ComfyUI is {found}: "
                          "update ComfyUI (ComfyUI-Manager: Update ComfyUI; Windows portable: "
                          "update\\update_comfyui.bat), then restart it")


def _check_folder_name():
    # ComfyUI serves a pack's web files and workflow templates under its folder's name, and its web server (aiohttp)
    # answers 404 where a URL has to escape the name: a space (the "... (1)" of a second download), non-ASCII letters.
    folder = os.path.basename(os.path.dirname(os.path.abspath(__file__)))
    if re.search(r'[^\x21-\x7e]|[%#"<>`{}|\\^?\[\]]', folder):    # what yarl quotes in a path: aiohttp's route
        logging.warning("SkyReels-V2 FP8: ComfyUI cannot serve this pack's workflow templates, help page and frontend "
                        "file from a folder named %r (a space, non-ASCII letters, %%, # or [ ]): rename the folder to "
                        "ComfyUI-SkyReels-FP8 and restart ComfyUI", folder)


_check_comfyui()
_check_folder_name()


async def comfy_entrypoint():
    from .nodes import SkyReelsFP8Extension

    return SkyReelsFP8Extension()
