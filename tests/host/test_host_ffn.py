"""The loader's models apply the FFN's GELU in place (nodes/adapters/ffn.py), against the host's own FFN forward."""
from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

FFN = r"""
from comfy.ldm.wan.model import WanFeedForward
from test_act_quant import peak_extra_bytes
result = {}
for name, fmt, compute in (("t2v_bf16.safetensors", "bf16", "upcast"), ("t2v_fp8_channel.safetensors", "auto", "upcast"),
                           ("t2v_fp8_channel.safetensors", "auto", "fp8 matmul")):
    ffn = load(name, fmt, compute)[0].model.diffusion_model.blocks[0].ffn
    x = torch.randn(1, 512, ffn[0].in_features, generator=g).to(torch.bfloat16)
    with torch.inference_mode():       # as the host runs every node
        ours, out = peak_extra_bytes(lambda: ffn(x))
        host, want = peak_extra_bytes(lambda: WanFeedForward.forward(ffn, x))
        wide = 512 * ffn[0].out_features * x.element_size()       # one output of the up-projection
    result[name + " " + compute] = [torch.equal(out, want), (host - ours) / wide]
x.requires_grad_(True)      # where autograd needs the GELU's input (training): out of place, as the host
loss = ffn(x).float().square().sum()
loss.backward()
result["autograd"] = x.grad is not None and bool(x.grad.isfinite().all())
import gc, weakref
gc.collect()
gc.disable()        # a dropped model's FFN goes with it, not when the cycle collector runs (its weights with it)
m = load("t2v_bf16.safetensors", "bf16", "upcast")[0]
ffn = weakref.ref(m.model.diffusion_model.blocks[0].ffn)
del m
result["freed"] = ffn() is None
gc.enable()
"""


def test_the_ffn_holds_one_output_of_its_up_projection(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + FFN)
    assert r.pop("autograd") is True     # (in place there, backward would find its input overwritten)
    assert r.pop("freed") is True        # (a forward bound on each FFN made a reference cycle: measured kept)
    for name, (same, saved) in r.items():
        # the same bytes as the host's forward; its GELU output (one up-projection output) no longer made beside
        # the up-projection's own: measured 1.0 of it saved
        assert same, name
        assert saved >= 0.95, (name, saved)
