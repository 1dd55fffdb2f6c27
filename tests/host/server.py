"""A real ComfyUI server (main.py --cpu) on 127.0.0.1 with this pack installed, for tests: generate_video_fp8's
HostServer (a copy of the pack in a temp base folder's custom_nodes, where a user's clone sits) plus
the test helper nodes."""
import os
import shutil

from generate_video_fp8 import PACK, HostServer, error_of  # noqa: F401  (re-exported for the tests)


class Server(HostServer):
    def __init__(self, host, base):
        super().__init__(host, base, ["--cpu"])
        os.makedirs(os.path.join(base, "models", "loras"), exist_ok=True)
        shutil.copytree(os.path.join(os.path.dirname(__file__), "helper_nodes"),
                        os.path.join(base, "custom_nodes", "skyreels_test_helpers"))

    def run(self, prompt, timeout=600):
        return super().run(prompt, timeout)
