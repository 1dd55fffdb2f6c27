"""Test-only ComfyUI nodes, installed next to the pack in the test host's custom_nodes.

The one stand-in: Wan's text encoder (umt5-xxl, 5.7B parameters) cannot be made tiny, so conditioning comes from a
seeded random tensor of the shape that encoder gives ([1, tokens, 4096]). Everything after it is the real host.
"""
import torch
from comfy_api.latest import ComfyExtension, io


class TestWanConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TestWanConditioning",
            category="testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2 ** 31), io.Int.Input("tokens", default=16, min=1)],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, seed, tokens):
        g = torch.Generator().manual_seed(seed)
        return io.NodeOutput([[torch.randn(1, tokens, 4096, generator=g), {}]])


class Extension(ComfyExtension):
    async def get_node_list(self):
        return [TestWanConditioning]


async def comfy_entrypoint():
    return Extension()
