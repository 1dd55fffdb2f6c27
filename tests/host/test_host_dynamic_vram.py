"""Our FP8 model under ComfyUI's Dynamic VRAM (comfy-aimdo), what main.py turns on by default on every NVIDIA GPU:
comfy.sd builds a ModelPatcherDynamic and loads the weights with assign=True; its load() gives every cast module a
slot `_v` in a virtual VRAM range (a "vbar"), and each forward pass faults the slot in and, when it is not resident,
gathers weight and bias (our QuantizedTensor through __tensor_flatten__) into one uint8 buffer
(comfy.memory_management, comfy.model_management.cast_to_gathered), views it back (interpret_gathered_like) and, with
a LoRA, dequantizes, patches, re-quantizes (scale "recalculate", a seed) and copies the result into the slot
(`orig.copy_(y)`), which later passes use as they are. With --cpu (all other tests) none of this runs: the host sends
CPU load devices to the plain ModelPatcher.

Everything here is the real host; only comfy-aimdo's CUDA-only native parts are replaced, by the labelled fakes in
FAKE_AIMDO (the virtual VRAM range and its page faults, its tensor view of device memory, its file-to-VRAM read). Its
library itself is loaded for real (it loads without a GPU): the host's mmap loader and host buffers use it.

- test_fp8_layer_through_the_dynamic_cast: values, on the CPU. The host's own cast functions for vbar modules
  (cast_modules_with_vbar, resolve_cast_module_with_vbar) called with a CPU device, which cast_bias_weight never
  does (it takes a CPU target as a reason to skip the vbar): gathering, viewing back, the fp8 products, a LoRA
  through its LowVramPatch against the plain ModelPatcher's merge, eviction and a failed fault.
- test_dynamic_patcher_loads_and_runs_our_model: the whole route, on FakeTensorMode tensors that say they are on
  "cuda": Load FP8 SkyReels Model -> ModelPatcherDynamic (as main.py sets it up) -> a LoRA loader -> load() ->
  forward passes of the host's Wan model with Sample Video's per-frame sigmas, the fps term and Patch SageAttention's
  override; the report's weight count, model_size and VRAM line. Each op runs its meta function (device, dtype,
  shape rules), no value is computed.

What a GPU run must check in addition (ComfyUI's main.py on an NVIDIA GPU, once as it starts by default and once with
--disable-dynamic-vram; the log says "DynamicVRAM support detected and enabled"):
- a Sample Video run of an FP8 model (per-channel and per-tensor, fp8 matmul and upcast) gives the same latents in
  both modes (without a LoRA the same bytes reach the same kernels: equal unless a kernel is non-deterministic; with
  a LoRA the two modes round the merged weight with different seeds, the host's own choice: close, not equal), and
  its report counts the same w8a8 products;
- with a LoRA: the first model call patches in the compute dtype, later calls use the re-quantized weight kept in
  VRAM (the real stochastic rounding on CUDA, which FakeTensorMode cannot run);
- VRAM under pressure (a model larger than free VRAM, or --reserve-vram): pages evicted and faulted back give the same
  output; the pinned host buffers (--disable-pinned-memory is set here) carry our QuantizedTensor;
- the report's memory line against nvidia-smi in both modes (under Dynamic VRAM it adds the host's vbar
  loaded_size(), which this file only sees from the fake), and the process's RSS: under Dynamic VRAM the CPU copy
  of the weights stays for the whole session and pinned copies may come on top of it;
- TorchCompileModel, TeaCache and the sequence-parallel / parallel paths (their Ray workers do not run main.py, so
  they load with the plain ModelPatcher) in both modes.
"""
from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

# Before the host is imported: the comfy-aimdo modules bind their library when first imported (main.py, too, calls
# init before it imports the host). It loads without a GPU; only its device calls need one.
AIMDO_LIBRARY = """
import comfy_aimdo.control
assert comfy_aimdo.control.init(), "comfy-aimdo's library did not load"
"""

FAKE_AIMDO = r'''
# ---- FAKES of comfy-aimdo's CUDA-only parts (nothing of ComfyUI itself is replaced) ----
import ctypes
import comfy_aimdo.host_buffer, comfy_aimdo.model_vbar, comfy_aimdo.torch

class FakeVBAR:
    """comfy_aimdo.model_vbar.ModelVBAR (CUDA virtual memory) on one plain tensor, made on the device of the first view
    asked for. alloc() is the real one's (512-byte aligned offsets); fault() returns the signature of the slot's
    pages, as the real one does while they stay resident, or None when `oom` is set (no VRAM for it); evict() is a
    page reuse: new signatures and other bytes in the pages."""
    PAGE = 4096
    made = []

    def __init__(self, size, device):
        self.max_size, self.offset, self.base_addr, self.device = size, 0, 0, device
        self.store, self.generation, self.oom = None, 1, False
        self.faults = self.unpins = 0
        FakeVBAR.made.append(self)

    def alloc(self, num_bytes):
        self.offset = (self.offset + 511) & ~511
        if self.offset + num_bytes > self.max_size:
            raise MemoryError("VBAR OOM")
        alloc = self.base_addr + self.offset
        self.offset += num_bytes
        return (self, alloc, num_bytes)

    def fault(self, alloc, size):
        self.faults += 1
        if self.oom:
            return None
        signature = (ctypes.c_uint32 * (size // self.PAGE + 2))()
        for i in range(size // self.PAGE + 1):
            signature[i] = self.generation * 100003 + alloc // self.PAGE + i
        return signature

    def evict(self):
        self.generation += 1
        if self.store is not None:
            with torch.inference_mode():    # where ComfyUI runs the model (the store may be an inference tensor)
                self.store.fill_(0xA5)

    def view(self, alloc, size, device):
        if self.store is None:
            self.store = torch.zeros(self.max_size, dtype=torch.uint8, device=device)
        return self.store[alloc - self.base_addr:alloc - self.base_addr + size]

    def unpin(self, alloc, size):
        self.unpins += 1

    def loaded_size(self):
        return self.offset

    prioritize = deprioritize = set_watermark = set_watermark_limit = lambda self, *args: None
    free_memory = lambda self, size: 0

comfy_aimdo.model_vbar.ModelVBAR = FakeVBAR
comfy_aimdo.model_vbar.vbars_analyze = lambda device=None: 0
comfy_aimdo.model_vbar.vbars_reset_watermark_limits = lambda: None
comfy_aimdo.torch.aimdo_to_tensor = lambda alloc, device: alloc[0].view(alloc[1], alloc[2], device)
# A file slice read straight into VRAM: fake "cuda" tensors have no memory to write into.
comfy_aimdo.host_buffer.read_file_to_device = lambda *args, **kwargs: None
# ---- end of the fakes ----
'''

HOST = r"""
import dataclasses
import comfy.cli_args, comfy.float, comfy.lora, comfy.memory_management, comfy.model_management, comfy.model_patcher
import comfy.ops, comfy.utils
import comfy_aimdo.host_buffer, comfy_aimdo.torch
from comfy.quant_ops import QuantizedTensor
from skyreels_pack.nodes.adapters import fp8_ops
from skyreels_pack.quant import fp8
mm, mmg = comfy.memory_management, comfy.model_management
assert comfy_aimdo.host_buffer.lib is not None
# cudaHostRegister is CUDA: the host's own option to pin nothing (a GPU run checks the pinned route)
comfy.cli_args.args.disable_pinned_memory = True
# As on a GPU: the loader computes in bf16 (float32 on this CPU host)
comfy.model_management.unet_manual_cast = lambda *args, **kwargs: torch.bfloat16
lora = comfy.utils.load_torch_file(os.path.join({folder!r}, "lora.safetensors"))

def fp8_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), QuantizedTensor)]

def raw(qt):
    return [qt._qdata.view(torch.uint8), qt._params.scale]

def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(raw(a), raw(b)))
"""

CAST = r"""
import threading
cpu = torch.device("cpu")
result = {{}}
for granularity in ("tensor", "channel"):
    for compute in ("upcast", "fp8 matmul"):
        r = result[f"{{granularity}} {{compute}}"] = {{}}
        patcher, _ = load(f"t2v_fp8_{{granularity}}.safetensors", compute=compute)
        n = "diffusion_model.blocks.0.self_attn.q"
        key = n + ".weight"
        m = comfy.utils.get_attr(patcher.model, n)
        W, b = m.weight, m.bias
        xs = torch.randn(2, 8, W.shape[1], generator=g).to(torch.bfloat16)
        r["weight"] = [type(W).__name__, W._layout_cls, str(W.dtype), list(W._params.scale.shape)]

        # the slot's size: qdata, scale and bias, each rounded up to 1024 bytes
        def up(t):
            return -(-t.numel() * t.element_size() // 1024) * 1024
        r["size"] = [mm.vram_aligned_size([W, b]), up(W._qdata) + up(W._params.scale) + up(b)]
        r["geometry"] = mm.tensors_to_geometries([W, b])[0] is W      # a QuantizedTensor is its own geometry
        # our tensors are not file slices (the loader made them): the gather copies them
        r["file_read"] = mm.read_tensor_file_slice_into(
            W, mm.interpret_gathered_like([W], torch.empty(r["size"][0], dtype=torch.uint8))[0])
        # gathered into a buffer and a second one (the pinned one and the VRAM slot), as cast_to_gathered's r and r2
        r1, r2 = (torch.full((r["size"][0],), 0xA5, dtype=torch.uint8) for _ in range(2))
        mmg.cast_to_gathered([W, b], r1, r2=r2)
        views = [mm.interpret_gathered_like([W, b], buf) for buf in (r1, r2)]
        r["views"] = [[type(v[0]).__name__, v[0]._layout_cls, str(v[0].dtype), list(v[0]._params.scale.shape),
                       same(v[0], W), torch.equal(v[1], b)] for v in views]
        with torch.no_grad():
            r["forward"] = [torch.equal(m._forward(xs, views[1][0], views[1][1]), m._forward(xs, W, b)),
                            torch.equal(m._forward(xs, views[1][0], views[1][1]), m(xs))]
        # read_tensor_file_slice_into's copy of the params into a gathered QuantizedTensor: in place, in the buffer
        buf = torch.zeros(r["size"][0], dtype=torch.uint8)
        dest = mm.interpret_gathered_like([W], buf)[0]
        dest._params.copy_from(W._params)
        again = mm.interpret_gathered_like([W], buf)[0]
        r["copy_from"] = torch.equal(again._params.scale, W._params.scale)
        # ... and with a file slice: the bytes read from the file into the destination's qdata, then the params
        # copied. (The host's mmap loader gives file descriptors, which comfy-aimdo reads into pinned or device
        # memory, CUDA calls; a file object takes the same function's readinto route, on the CPU.)
        path = os.path.join({folder!r}, f"q_{{granularity}}.bin")
        with open(path, "wb") as f:
            f.write(bytes(100) + W._qdata.contiguous().view(torch.uint8).numpy().tobytes())
        blank = torch.zeros_like(W._qdata)       # what the file holds is what arrives
        file = open(path, "rb")
        blank.untyped_storage()._comfy_tensor_file_slice = mm.TensorFileSlice(file, threading.Lock(), 100,
                                                                               W._qdata.numel())
        from_file = QuantizedTensor(blank, W._layout_cls, W._params.clone())
        dest = mm.interpret_gathered_like([W], torch.zeros(r["size"][0], dtype=torch.uint8))[0]
        r["file_slice"] = [mm.read_tensor_file_slice_into(from_file, dest), same(dest, W), str(dest.dtype)]
        file.close()
        # .to(dtype) / .dtype as post_cast uses them
        f16 = W.to(dtype=torch.float16)
        r["to"] = [type(f16).__name__, str(f16.dtype), str(W.dtype),
                   torch.equal(f16._qdata.view(torch.uint8), W._qdata.view(torch.uint8)),
                   str(f16.dequantize().dtype), rel(f16.dequantize().float(), W.dequantize().float())]

        # A LoRA through the dynamic cast (LowVramPatch, as ModelPatcherDynamic.load attaches it)
        lp = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)[0]
        legacy = lp.patch_weight_to_device(key, device_to=cpu, return_weight=True)   # the plain ModelPatcher's merge
        exact = comfy.lora.calculate_weight(lp.patches[key], W.dequantize().float(), key)
        own = W._qdata.clone()
        pin_state = {{}}
        m.weight_lowvram_function = comfy.model_patcher.LowVramPatch(key, lp.patches)
        m.weight_lowvram_function._pin_state = m._pin_state = pin_state
        m.bias_lowvram_function, m.weight_function, m.bias_function = None, [], []
        m.seed_key, m._v_signature = n, None
        vbar = FakeVBAR(1 << 20, 0)
        m._v = vbar.alloc(mm.vram_aligned_size([W, b]))

        def call():    # cast_bias_weight's vbar branch, for a CPU device (ComfyUI runs its nodes in inference mode)
            with torch.inference_mode():
                comfy.ops.cast_modules_with_vbar([m], torch.bfloat16, cpu, torch.bfloat16, False)
                resident = m._prefetch["resident"]
                w, bb = comfy.ops.resolve_cast_module_with_vbar(m, torch.bfloat16, cpu, torch.bfloat16,
                                                                torch.bfloat16, False)
            m.weight_lowvram_function.clear_prepared()
            del m._prefetch
            return w, bb, resident

        w1, b1, res1 = call()
        w2, b2, res2 = call()
        patched = comfy.lora.calculate_weight(lp.patches[key], W.dequantize(), key, intermediate_dtype=torch.bfloat16)
        seed = comfy.utils.string_to_seed(n)
        expected = W.requantize_from_float(w1, scale="recalculate", stochastic_rounding=seed)
        # the slot's bytes themselves, viewed afresh (not the object the host kept): the merge landed in VRAM
        slot = mm.interpret_gathered_like([W, b], comfy_aimdo.torch.aimdo_to_tensor(m._v, cpu))
        r["lora"] = dict(
            slot=[same(slot[0], expected), torch.equal(slot[1], b)],
            first=[type(w1).__name__, str(w1.dtype), res1, torch.equal(w1, patched), torch.equal(b1, b)],
            second=[type(w2).__name__, getattr(w2, "_layout_cls", None), res2, str(w2.dtype),
                    list(w2._params.scale.shape), list(legacy._params.scale.shape), same(w2, expected)],
            err=[rel(w2.dequantize().float(), exact), rel(legacy.dequantize().float(), exact),
                 rel(W.dequantize().float(), exact)],
            module_weight_kept=torch.equal(m.weight._qdata.view(torch.uint8), own.view(torch.uint8)),
        )
        with torch.no_grad():
            out = m._forward(xs, w2, b2)
            ref = torch.nn.functional.linear(xs, w2.dequantize(), b2)
        r["lora"]["product"] = [rel(out.float(), ref.float()), str(out.dtype)]
        kept = [t.clone() for t in raw(w2)]     # w2 views the slot, which eviction overwrites
        vbar.evict()       # the pages went to something else: gathered and patched again, the same bytes
        w3, b3, res3 = call()
        w4, b4, res4 = call()
        r["lora"]["evicted"] = [res3, torch.equal(w3, w1), res4, all(map(torch.equal, raw(w4), kept))]
        vbar.oom = True    # no VRAM for the slot: a patched weight of its own on every call, nothing kept
        w5, b5, res5 = call()
        r["lora"]["oom"] = [type(w5).__name__, res5, torch.equal(w5, w1), same(m.weight, W)]
"""


def run_with_fake_aimdo(host, tmp_path, part):
    """`part` (CAST or DYNAMIC) in a host process with the tiny models, a LoRA and the comfy-aimdo fakes."""
    import safetensors.torch
    from conftest import write_lora
    write_models(tmp_path)
    write_lora(tmp_path / "lora.safetensors", safetensors.torch.load_file(str(tmp_path / "t2v_bf16.safetensors")))
    code = (AIMDO_LIBRARY + SETUP.format(repo=REPO, folder=str(tmp_path)) + FAKE_AIMDO
            + HOST.format(folder=str(tmp_path)) + part.format(folder=str(tmp_path)))
    r = run_in_host(host, code)
    print(r)
    return r


def test_fp8_layer_through_the_dynamic_cast(host, tmp_path):
    r = run_with_fake_aimdo(host, tmp_path, CAST)
    for case, v in r.items():
        scale = [] if case.startswith("tensor") else [256, 1]
        assert v["weight"] == ["QuantizedTensor", "SkyReelsFP8Layout", "torch.bfloat16", scale], (case, v)
        # 256 x 256 fp8 (64 KiB), its scale, 256 bf16 bias: 1024-byte pieces
        assert v["size"][0] == v["size"][1] == 65536 + 1024 + 1024, (case, v)
        assert v["geometry"] and v["file_read"] is False, (case, v)
        for view in v["views"]:        # bytes, scale and bias come back, as our layout, in both buffers
            assert view == ["QuantizedTensor", "SkyReelsFP8Layout", "torch.bfloat16", scale, True, True], (case, v)
        assert v["forward"] == [True, True], (case, v)    # the gathered weight gives the same products, bit for bit
        assert v["copy_from"] and v["file_slice"] == [True, True, "torch.bfloat16"], (case, v)
        # the same fp8 bytes (a copy: aten._to_copy), another orig_dtype: fp8 values times an fp32 scale rounded once to
        # fp16 or to bf16, within bf16's rounding (2^-9) of each other
        assert v["to"][:5] == ["QuantizedTensor", "torch.float16", "torch.bfloat16", True, "torch.float16"], (case, v)
        assert v["to"][5] < 4e-3, (case, v)
        lora = v["lora"]
        # First call: the slot is filled, the LoRA applied in bf16 to the dequantized weight, exactly as the plain
        # ModelPatcher's on-the-fly (lowvram) patch does; the bias passes through.
        assert lora["first"] == ["Tensor", "torch.bfloat16", False, True, True], (case, lora)
        # Later calls: the re-quantized merge kept in the slot, our layout with its scale shape, the bytes the host's
        # requantize_from_float makes for this seed (orig.copy_(y) copied all of qdata and scale).
        assert lora["second"] == ["QuantizedTensor", "SkyReelsFP8Layout", True, "torch.bfloat16", scale, scale,
                                  True], (case, lora)
        # Against the exact merge (fp32): one fp8 stochastic rounding of the merged weight, as the plain ModelPatcher's
        # merge (another seed: the host seeds it with the key's name, the dynamic one with the module's; measured
        # 0.0377 / 0.0377 / 0.0371 / 0.0371); the LoRA itself moves the weight by ~0.58.
        dynamic, plain, base = lora["err"]
        assert dynamic < 0.06 and 0.8 < dynamic / plain < 1.25 and base > 0.3, (case, lora)
        assert lora["slot"] == [True, True], (case, lora)
        assert lora["module_weight_kept"], (case, lora)     # the model's own CPU weight is never written
        # w8a8 quantizes the activations per token (e4m3: ~2-3% relative); upcast multiplies the same dequantized weight
        assert lora["product"][1] == "torch.bfloat16", (case, lora)
        assert lora["product"][0] < (0.05 if "matmul" in case else 1e-6), (case, lora)
        assert lora["evicted"] == [False, True, True, True], (case, lora)
        assert lora["oom"] == ["Tensor", False, True, True], (case, lora)


DYNAMIC = r"""
from torch._subclasses.fake_tensor import FakeTensorMode
from skyreels_pack.nodes.adapters import per_frame, run_report
from skyreels_pack.nodes.adapters.sage_override import SageOverride
from skyreels_pack.quant import act_quant
from skyreels_pack.sampling.schedule import model_timesteps
# What main.py does on an NVIDIA GPU once comfy-aimdo has initialised the device
comfy.memory_management.aimdo_enabled = True
comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
# The GPU this machine lacks, where the loader and comfy.sd ask the host for the load device; an H100's compute
# capability for the fp8 plan; the Triton kernel cannot take fake tensors, so the activations are quantized eagerly.
gpu = torch.device("cuda", 0)
comfy.model_management.get_torch_device = lambda: gpu
torch.cuda.get_device_capability = lambda device=None: (9, 0)
act_quant.fused_available = lambda: (False, "no Triton on fake tensors")
result = {{}}
patcher, report = load("df_bf16.safetensors", compute="fp8 matmul")
# a LoRA file as the host's loaders read it now: mapped by comfy-aimdo, each tensor a slice of the file
lora = comfy.utils.load_torch_file(os.path.join({folder!r}, "lora.safetensors"))
result["lora_file_slices"] = all(hasattr(t.untyped_storage(), "_comfy_tensor_file_slice") for t in lora.values())
blocks = len(patcher.model.diffusion_model.blocks)
lp = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)[0]
with_sigmas = [per_frame.patch(p, 8.0, model_timesteps(4, 8.0)) for p in (patcher, lp)]
result["report"] = report
result["patchers"] = [type(p).__name__ for p in (patcher, lp, *with_sigmas)]
result["summary"] = run_report.weights_summary(patcher)[0]
layers = fp8_layers(patcher.model)
result["layers"] = [len(layers), all(str(m.weight.device) == "cpu" for n, m in layers)]
expected_size = sum(m.weight._qdata.nbytes + m.weight._params.scale.nbytes + (0 if m.bias is None else m.bias.nbytes)
                    for n, m in layers) + sum(
    t.nbytes for n, t in patcher.model.state_dict().items() if not any(n.startswith(l + ".") for l, m in layers))
result["size"] = [patcher.model_size(), expected_size, len(layers)]
result["memory_required"] = lp.memory_required([2, 16, 2, 16, 16]) > 2 ** 30

def fakes(model):   # the model's CPU tensors as fake CPU tensors: they stay on the CPU, as the weights do here
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if isinstance(tensor, QuantizedTensor):
                    p = tensor._params
                    tensor = QuantizedTensor(mode.from_tensor(tensor._qdata), tensor._layout_cls,
                                             dataclasses.replace(p, scale=mode.from_tensor(p.scale)))
                elif tensor is not None:
                    tensor = mode.from_tensor(tensor.data if store is module._parameters else tensor)
                if tensor is not None:
                    param = store is module._parameters
                    store[name] = torch.nn.Parameter(tensor, requires_grad=False) if param else tensor

with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
    for module in (patcher.model, *(p.get_model_object("model_sampling") for p in with_sigmas)):
        fakes(module)
    dm = patcher.model.diffusion_model
    xc, ctxc = (mode.from_tensor(a).to("cuda", torch.bfloat16) for a in (x, ctx))
    sigma = mode.from_tensor(torch.tensor([[0.999, 0.6]])).to("cuda")   # Diffusion Forcing: a sigma per frame
    override = SageOverride("disabled", guard=0)

    def forward(p):
        sampling = p.get_model_object("model_sampling")
        sampling.keys, sampling.values = (mode.from_tensor(t) for t in (sampling.keys, sampling.values))
        opts = dict(p.model_options["transformer_options"], optimized_attention_override=override,
                    wrappers=p.wrappers, skyreels_fps=16)
        before, faults = dict(fp8.stats), sum(v.faults for v in FakeVBAR.made)
        out = dm(sampling.calculate_input(sigma, xc), sampling.timestep(sigma), ctxc, transformer_options=opts)
        out = sampling.calculate_denoised(sigma, out, xc)
        return dict(out=[list(out.shape), str(out.dtype), str(out.device)], attention=dict(override.counts),
                    faults=sum(v.faults for v in FakeVBAR.made) - faults,
                    **{{k: fp8.stats[k] - before[k] for k in before}})

    def slots():
        return {{n: m._v_weight for n, m in layers if getattr(m, "_v_weight", None) is not None}}

    comfy.model_management.LoadedModel(with_sigmas[0]).model_load()     # what load_models_gpu does with it
    cast = [m for m in dm.modules() if hasattr(m, "_v")]
    result["load"] = dict(vbars=len(FakeVBAR.made), slots=len(cast), fp8_slots=sum(hasattr(m, "_v") for n, m in layers),
                          cast_weights=all(m.comfy_cast_weights for n, m in layers),
                          on_cpu=all(str(m.weight.device) == "cpu" for n, m in layers))
    result["first"] = forward(with_sigmas[0])
    kept = slots()
    result["kept"] = [len(kept), all(isinstance(w, QuantizedTensor) and w._layout_cls == fp8_ops.LAYOUT
                                     and str(w.device) == "cuda:0"
                                     and w._params.scale.shape == m.weight._params.scale.shape
                                     for (n, m), w in zip(layers, kept.values()))]
    result["second"] = forward(with_sigmas[0])
    result["reused"] = all(slots()[n] is w for n, w in kept.items())   # resident: the slots' views as they were
    # Sample Video's memory line: PyTorch's peak (the CUDA calls of its meter stubbed: 512 MiB) does not hold what the
    # vbar holds (comfy-aimdo maps that memory itself)
    torch.cuda.synchronize = torch.cuda.reset_peak_memory_stats = lambda device=None: None
    torch.cuda.max_memory_allocated = lambda device=None: 512 * 2 ** 20
    result["meter"] = [run_report.Meter(gpu, with_sigmas[0]).finish().memory, run_report.Meter(gpu).finish().memory,
                       with_sigmas[0].loaded_size() - patcher.model.model_loaded_weight_memory,
                       FakeVBAR.made[0].loaded_size()]
    # The LoRA clone: its patches go to the layers as LowVramPatch; with no VRAM for the slots (fault -> None) every
    # call patches a weight of its own (with VRAM the merge is re-quantized into the slot: stochastic rounding makes a
    # CUDA generator, which fake tensors cannot; test_fp8_layer_through_the_dynamic_cast checks it on the CPU)
    FakeVBAR.made[0].oom = True
    comfy.model_management.LoadedModel(with_sigmas[1]).model_load()
    result["lora_load"] = [sum(type(getattr(m, "weight_lowvram_function", None)).__name__ == "LowVramPatch"
                               for n, m in layers), len(lp.patches)]
    result["lora"] = forward(with_sigmas[1])
result["blocks"] = blocks
"""


def test_dynamic_patcher_loads_and_runs_our_model(host, tmp_path):
    r = run_with_fake_aimdo(host, tmp_path, DYNAMIC)
    blocks = r["blocks"]
    assert "fps embedding: on" in r["report"] and "compute: fp8 matmul" in r["report"], r
    assert r["patchers"] == ["ModelPatcherDynamic"] * 4, r      # the LoRA loader and our clones stay dynamic
    assert r["lora_file_slices"], r
    # loaded with assign=True: our QuantizedTensors as the loader made them, on the CPU; the report counts them
    assert r["layers"] == [10 * blocks, True], r
    assert r["summary"].startswith(f"Linear weights: {10 * blocks} float8_e4m3fn (per-channel)"), r
    # model_size: fp8 bytes, scales and biases (plus each layer's comfy_quant tensor, 45 bytes), not the bf16 size
    size, expected, n = r["size"]
    assert expected <= size <= expected + 128 * n, r
    assert r["memory_required"], r
    load = r["load"]
    # one vbar; a slot for every FP8 layer (and the host's other cast modules over 16 KiB); weights never moved
    assert load["vbars"] == 1 and load["fp8_slots"] == 10 * blocks and load["slots"] >= 10 * blocks, r
    assert load["cast_weights"] and load["on_cpu"], r
    for run in ("first", "second"):
        v = r[run]
        # the x0 prediction, in float32 as the host's apply_model returns it, for each latent frame's sigma
        assert v["out"] == [[1, 16, 2, 16, 16], "torch.float32", "cuda:0"], (run, v)
        # every block Linear through the vbar (one fault each) and multiplied in FP8 from the gathered weight
        assert v["faults"] == load["slots"], (run, v)
        assert (v["w8a8"], v["fallback"], v["upcast"]) == (10 * blocks, 0, 0), (run, v)
    assert r["first"]["attention"] == {"sage": 0, "exact": 2 * blocks}, r
    # after the first pass each slot holds our QuantizedTensor on the GPU, which the second pass reuses as it is
    assert r["kept"] == [10 * blocks, True] and r["reused"], r
    # the report's VRAM line adds the weights Dynamic VRAM holds (the host's loaded_size: the vbar's, here the fake's)
    dynamic, plain, held, vbar = r["meter"]
    assert held == vbar > 10 * blocks * 65536, r
    assert dynamic == (f"peak VRAM 512 MiB + {held / 2 ** 20:.0f} MiB of weights held by ComfyUI's Dynamic VRAM at the "
                       "end (outside PyTorch's allocator)"), r
    assert plain == "peak VRAM 512 MiB", r
    # the LoRA (self-attention q, k, v, o of each block): those layers get a patched bf16 weight, the others stay FP8
    assert r["lora_load"] == [4 * blocks, 4 * blocks], r
    v = r["lora"]
    assert v["out"] == [[1, 16, 2, 16, 16], "torch.float32", "cuda:0"], v
    assert (v["w8a8"], v["fallback"], v["upcast"]) == (6 * blocks, 0, 0), v


NON_DYNAMIC = r"""
from comfy_extras.nodes_torch_compile import TorchCompileModel
comfy.memory_management.aimdo_enabled = True
comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
comfy.model_management.get_torch_device = lambda: torch.device("cuda", 0)
torch.cuda.get_device_capability = lambda device=None: (9, 0)     # an H100's, for the fp8 plan
patcher = load("df_bf16.safetensors")[0]
lp = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)[0]
result = {{}}
for name, make in (("TorchCompileModel", lambda: TorchCompileModel.execute(lp, "inductor").args[0]),
                   ("non-dynamic delegate", lp.get_non_dynamic_delegate)):
    try:
        p = make()
    except Exception as e:
        result[name] = f"{{type(e).__name__}}: {{e}}"
        continue
    ours, theirs = patcher.model.state_dict(), p.model.state_dict()
    result[name] = dict(patcher=type(p).__name__, keys=sorted(ours) == sorted(theirs), patches=len(p.patches),
                        same=all(same(ours[k], theirs[k]) if isinstance(ours[k], QuantizedTensor)
                                 else torch.equal(ours[k], theirs[k]) for k in ours))
result["patches"] = len(lp.patches)
"""


def test_non_dynamic_copies_of_our_model(host, tmp_path):
    """What ComfyUI makes of a Dynamic VRAM MODEL where it needs a plain one: core TorchCompileModel, conditioning with
    hooks and its multi-GPU clones rebuild the model through the loader's cached_patcher_init (before: "Cannot create
    non-dynamic delegate: cached_patcher_init is not initialized", on every NVIDIA GPU). The copy has the same
    tensors, FP8 bytes and scales (the DF fps layers included), and keeps the LoRA's patches."""
    r = run_with_fake_aimdo(host, tmp_path, NON_DYNAMIC)
    for name in ("TorchCompileModel", "non-dynamic delegate"):
        assert r[name] == dict(patcher="ModelPatcher", keys=True, patches=r["patches"], same=True), (name, r)
    assert r["patches"] > 0, r
