"""The Wan FFN with its GELU applied in place. The host's applies it out of place (it folds it into the
down-projection for INT8 weights only), so the up-projection's output and its GELU were held at once: two tensors of
2.7x the hidden state at 14B (13824 / 5120 wide)."""
import functools

import torch
import comfy.ldm.wan.model

# the host's FFN forward, which this replaces (WanFeedForward's; a plain Sequential's before ComfyUI had it)
HOST = getattr(comfy.ldm.wan.model, "WanFeedForward", torch.nn.Sequential).forward, torch.nn.Sequential.forward


def _forward(self, x):
    h = self[0](x)    # a new tensor, used by nothing else: autograd (training) alone needs it kept
    return self[2](self[1](h) if h.requires_grad else torch.ops.aten.gelu_(h, approximate="tanh"))


@functools.cache
def _in_place(cls):
    """`cls` with the forward above: a class, not a method bound on each module (a reference cycle through the
    module, which kept a dropped model's FFN weights until Python's cycle collector ran)."""
    return type(cls.__name__, (cls,), {"forward": _forward, "__module__": __name__})


def gelu_in_place(model):
    """Every block's FFN ([Linear, GELU(tanh), Linear], the host's forward) of `model` (a BaseModel)."""
    for block in model.diffusion_model.blocks:
        ffn = block.ffn
        if type(ffn).forward in HOST and len(ffn) == 3 and getattr(ffn[1], "approximate", None) == "tanh":
            ffn.__class__ = _in_place(type(ffn))
