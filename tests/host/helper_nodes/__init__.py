"""Test-only ComfyUI nodes, installed next to the pack in the test host's custom_nodes.

Two stand-ins, for encoders whose host loaders build the full-size model whatever the file holds: Wan's text
encoder (umt5-xxl, 5.7B parameters) gives conditioning [1, tokens, 4096], and CLIP vision ViT-H (632M) gives the
image features Wan I2V reads ([1, 257, 1280] penultimate hidden states). Both are seeded random tensors of those
shapes. Everything after them is the real host. (generate_video_fp8.py's demo needs none of them: it feeds
its random conditioning through core's Load Training Dataset.)
"""
import torch
import comfy.clip_vision
from comfy_api.latest import ComfyExtension, io


class TestWanConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TestWanConditioning",
            category="testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2 ** 31), io.Int.Input("tokens", default=16, min=1),
                    io.Int.Input("width", default=4096, min=1, optional=True)],   # another text encoder's: 768 ...
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, seed, tokens, width=4096):
        g = torch.Generator().manual_seed(seed)
        return io.NodeOutput([[torch.randn(1, tokens, width, generator=g), {}]])


class TestClipVisionOutput(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TestClipVisionOutput",
            category="testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2 ** 31)],
            outputs=[io.ClipVisionOutput.Output()],
        )

    @classmethod
    def execute(cls, seed):
        g = torch.Generator().manual_seed(seed)
        out = comfy.clip_vision.Output()
        out.penultimate_hidden_states = torch.randn(1, 257, 1280, generator=g)
        out.last_hidden_state = torch.randn(1, 257, 1280, generator=g)
        out.image_embeds = torch.randn(1, 1024, generator=g)
        return io.NodeOutput(out)


class Extension(ComfyExtension):
    async def get_node_list(self):
        return [TestWanConditioning, TestClipVisionOutput]


async def comfy_entrypoint():
    return Extension()
