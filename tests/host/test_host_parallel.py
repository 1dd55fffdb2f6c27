"""Parallel Config + Sample Video on a local Ray cluster: 2 CPU actors on gloo, inside a fresh host process."""
from comfy_host import IMPORT_PACK, REPO, run_in_host
from in_host import SETUP, write_models

COMMON = r"""
import threading, time, psutil, ray
from skyreels_pack.nodes.parallel import ParallelConfig
from skyreels_pack.nodes.sample import SampleVideo
config = ParallelConfig.execute(2, "cpu", "", cfg_parallel=False, keep_workers=False).args[0]      # Ulysses 2
model = load("df_bf16.safetensors")[0]
pos = [[torch.randn(1, 8, 4096, generator=g), {}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {}]]
FLAT = dict(width=48, height=32, frames=17, seed=1, steps=3, cfg=5.0, shift=8.0, sampler="unipc", fps=24,
            mode="standard")
ARGS = nest_mode(FLAT)

def sample(parallel=None, **kw):
    return SampleVideo.execute(model, pos, neg, **nest_mode({**FLAT, **kw}), parallel=parallel).args[:3]

def workers():
    # (pid, command line) of Ray's worker processes that hold one of our actors, alive now: this process's local
    # cluster only (its raylet is a child of this process), so another test run on the machine does not count
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if cmdline.startswith("ray::Worker"):
            found.append((p.pid, cmdline))
    return found
"""

EQUAL = COMMON + r"""
import comfy.utils
from comfy_extras.nodes_model_advanced import ModelSamplingSD3, RescaleCFG   # before generate_video_fp8's import
bar, previews = [], {"one": 0, "two": 0, "other": 0}
run = ["one"]
def hook(value, total, preview=None, node_id=None):
    bar.append((value, total))
    previews[run[0]] += preview is not None
comfy.utils.set_progress_bar_global_hook(hook)
comfy.cli_args.args.preview_method = comfy.cli_args.LatentPreviewMethod.Latent2RGB    # --preview-method latent2rgb
result = {"previews": previews}
# DF with SkyReels-V2's noise: every rank draws it on its own device, then takes rank 0's (a GPU's numbers depend
# on its size), for each window and each addnoise draw: the broadcasts must pair up in order
for mode, extra in (("standard", {}), ("diffusion forcing", dict(frames=17, base_num_frames=13, overlap_history=5,
                                                                 ar_step=1, addnoise_condition=20,
                                                                 noise="gpu (SkyReels-V2)"))):
    run[0] = "one"
    one = sample(mode=mode, **extra)[0]["samples"]
    run[0] = "two"
    two, report = sample(config, mode=mode, **extra)[:2]
    run[0] = "other"
    result[mode] = rel(two["samples"], one)
    result[mode + " report"] = report
time.sleep(1)
# CFG parallel, Diffusion Forcing with a start image through the VAE (overlap through pixels) and causal attention
from generate_video_fp8 import write_tiny_vae
write_tiny_vae(os.path.join(@FOLDER@, "vae.safetensors"))
vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(os.path.join(@FOLDER@, "vae.safetensors")))
image = torch.rand(1, 32, 48, 3, generator=g)
extra = dict(mode="diffusion forcing", frames=25, base_num_frames=17, overlap_history=9, ar_step=1,
             addnoise_condition=20, causal_attention=True)
one, one_report, one_images = SampleVideo.execute(model, pos, neg, **nest_mode({**FLAT, **extra}), vae=vae,
                                                  start_image=image).args[:3]
two, report = SampleVideo.execute(model, pos, neg, **nest_mode({**FLAT, **extra}), vae=vae, start_image=image,
                                  parallel=ParallelConfig.execute(2, "cpu", "", keep_workers=False).args[0]).args[:2]
result["cfg parallel, vae, causal"] = rel(two["samples"], one["samples"])
result["cfg parallel report"] = report
result["autograd graph"] = two["samples"].requires_grad    # (it crosses Ray with the latent)
result["start frame"] = rel(two["samples"][:, :, :1], vae.encode(image[:, :, :, :3]))
# cfg 1 (e.g. with a distillation LoRA) makes one pass per step: cfg parallel would run it twice, so both split it
one_pass = sample(cfg=1.0)[0]["samples"]
two_pass, one_pass_report = sample(ParallelConfig.execute(2, "cpu", "", keep_workers=False).args[0], cfg=1.0)[:2]
result["cfg 1"] = [rel(two_pass["samples"], one_pass), one_pass_report.splitlines()[-1]]
# The forward pass alone, in 2 Ray actors set up as Parallel Config sets them up (join, load), against one process.
from skyreels_pack.nodes.adapters import parallel_pool, parallel_run, parallel_worker
class Forward(parallel_worker.Worker):
    def forward(self, x, t, ctx, teacache=False):
        # The model's output; with `teacache`, also the tokens of each residual TeaCache keeps after this (computed)
        # first call, with the width 256 given the 1.3B coefficients.
        from skyreels_pack.nodes.adapters import teacache_hooks
        from skyreels_pack.sampling.teacache import SIZES, TeaCache
        SIZES[256], cache = "1.3B", TeaCache(1e9, False)
        m = teacache_hooks.install(self.model, cache) if teacache else self.model
        opts = dict(m.model_options["transformer_options"], wrappers=m.wrappers, skyreels_call=0, skyreels_calls=2)
        with torch.no_grad():
            out = m.model.diffusion_model(x, t, ctx, transformer_options=opts)
        return (out, [s.residual.shape[1] for s in cache.streams.values()]) if teacache else out
    def fail(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    def frames_held(self, *args):
        # Sample Video through a VAE on this rank: the frames of video it holds after each window (what its Job
        # allocated), and what it returns
        from ray.util.queue import Queue
        from skyreels_pack.nodes.adapters.sample_job import Job
        held, add = [], Job._add_pixels
        def recorded(job, *a):
            add(job, *a)
            held.append(job.images.shape[1])
        Job._add_pixels = recorded
        try:
            return held, self.sample(*args, Queue())
        finally:
            Job._add_pixels = add
actors = [ray.remote(num_cpus=1)(Forward).remote(os.getcwd(), parallel_pool.PACK, True, 1) for _ in range(2)]
address, port = ray.get(actors[0].address.remote())
ray.get([a.join.remote(address, port, r, 2, 1, 1) for r, a in enumerate(actors)])
ray.get([a.load.remote(*parallel_run.recipe_of(model)[:3]) for a in actors])    # (TeaCache travels per run)
xx, tt = torch.randn(1, 16, 5, 8, 12, generator=g), torch.tensor([[999.0, 800, 600, 300, 0]])
outs = ray.get([a.forward.remote(xx, tt, ctx) for a in actors])
opts = dict(model.model_options["transformer_options"], wrappers=model.wrappers)
with torch.no_grad():
    want = model.model.diffusion_model(xx, tt, ctx, transformer_options=opts)
result["forward"] = [rel(o, want) for o in outs]
cached = ray.get([a.forward.remote(xx, tt, ctx, teacache=True) for a in actors])
result["forward, teacache"] = [[rel(o, want), tokens] for o, tokens in cached]
# Only rank 0's video reaches the host: rank 1 keeps the frames the next window starts from (overlap_history 9) and
# decodes no last window
widgets = dict({**FLAT, **extra}, causal_block_size=1, latent=None, noise="cpu (ComfyUI)")
inputs = dict(vae=ray.put(vae.first_stage_model.state_dict()), start_image=image)
held = ray.get([a.frames_held.remote((pos, neg), widgets, inputs) for a in actors])
result["frames held"] = [frames for frames, _ in held]
result["rank 0's images"] = rel(held[0][1][2], one_images)
try:          # a worker's error as the host shows it (its type decides ComfyUI's out-of-memory advice)
    parallel_pool.wait(ray, [actors[0].fail.remote()], actors)
except Exception as e:
    result["worker error"] = [type(e).__name__, str(e)]
for a in actors:
    ray.kill(a)
# A LoRA (core's loader function) travels to the workers; kept workers serve the next run without reloading.
lora = {}
for i in range(2):
    for name in ("self_attn.q", "cross_attn.o", "ffn.0"):
        w = model.model.diffusion_model.blocks[i].get_submodule(name).weight
        lora[f"diffusion_model.blocks.{i}.{name}.lora_up.weight"] = torch.randn(w.shape[0], 4, generator=g) * 0.3
        lora[f"diffusion_model.blocks.{i}.{name}.lora_down.weight"] = torch.randn(4, w.shape[1], generator=g) * 0.3
        # Kijai's ComfyUI-format distillation LoRAs (lightx2v, CausVid, ...) also carry .diff_b on the Linear biases
        lora[f"diffusion_model.blocks.{i}.{name}.diff_b"] = torch.randn(w.shape[0], generator=g) * 0.05
    lora[f"diffusion_model.blocks.{i}.norm3.diff"] = torch.randn(256, generator=g) * 0.1    # ... and .diff on norms
with_lora = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)[0]
keep = ParallelConfig.execute(2, "cpu", "", cfg_parallel=False, keep_workers=True).args[0]
one = SampleVideo.execute(with_lora, pos, neg, **ARGS).args[0]["samples"]
plain = SampleVideo.execute(model, pos, neg, **ARGS).args[0]["samples"]
first = SampleVideo.execute(with_lora, pos, neg, **ARGS, parallel=keep).args[:3]
pids = sorted(pid for pid, _ in workers())
comfy.model_management.load_models_gpu([model])     # what the prompt loaded in the host before (a text encoder)
host_models = len(comfy.model_management.current_loaded_models)
second = SampleVideo.execute(with_lora, pos, neg, **ARGS, parallel=keep).args[:3]
result["host models"] = [host_models, len(comfy.model_management.current_loaded_models)]
result["lora changes the output"] = rel(one, plain)
result["lora, parallel"] = [rel(first[0]["samples"], one), rel(second[0]["samples"], one)]
result["kept"] = [first[1].splitlines()[-1], second[1].splitlines()[-1], pids == sorted(pid for pid, _ in workers()),
                  len(pids)]
# A kept worker that died while idle (e.g. killed for memory) is noticed: the next run starts new workers
psutil.Process(pids[-1]).kill()
time.sleep(1)
try:
    revived = SampleVideo.execute(with_lora, pos, neg, **ARGS, parallel=keep).args[:3]
    result["kept worker died"] = [rel(revived[0]["samples"], one), revived[1].splitlines()[-1]]
except ValueError as e:
    result["kept worker died"] = str(e)
third = SampleVideo.execute(model, pos, neg, **ARGS, parallel=keep).args       # another model: new workers
result["new model"] = [rel(third[0]["samples"], plain), third[1].splitlines()[-1],
                       bool(set(pids) & {pid for pid, _ in workers()})]
# ModelSamplingSD3 before Sample Video, as in core's Wan workflows (shift 0: Sample Video takes its shift): the
# workers run with the shift read here, as the single-device run does.
sd3 = ModelSamplingSD3().patch(model, 5.0)[0]
taken = SampleVideo.execute(sd3, pos, neg, **nest_mode({**FLAT, "shift": 0}), parallel=keep).args
result["model sampling sd3"] = [rel(taken[0]["samples"], sample(shift=5.0)[0]["samples"]),
                                [line for line in taken[1].splitlines() if "is not used" in line]]
overridden = SampleVideo.execute(sd3, pos, neg, **ARGS, parallel=keep).args[1].splitlines()    # shift 8 runs
result["sd3 note"] = [overridden[-2], overridden[-1].startswith("parallel:")]
# What the workers could not rebuild is refused before any starts: a bypass LoRA (injected, not a weight patch),
# a model merge (whole weights as patches).
refused = {}
bypass = comfy.sd.load_bypass_lora_for_models(model, None, lora, 1.0, 0)[0]
merged = model.clone()
q = model.model.diffusion_model.blocks[0].self_attn.q.weight
merged.add_patches({"diffusion_model.blocks.0.self_attn.q.weight": (torch.zeros(q.shape),)}, 0.5, 0.5)  # as ModelMergeSimple
for name, m in (("bypass", bypass), ("merge", merged), ("rescale", RescaleCFG().patch(model, 0.7)[0])):
    try:
        SampleVideo.execute(m, pos, neg, **ARGS, parallel=keep)
    except ValueError as e:
        refused[name] = str(e)
nccl, torch.distributed.is_nccl_available = torch.distributed.is_nccl_available, lambda: False   # as on Windows
try:
    SampleVideo.execute(model, pos, neg, **ARGS, parallel=ParallelConfig.execute(2, "cuda", "").args[0])
except ValueError as e:
    refused["no nccl"] = str(e)
torch.distributed.is_nccl_available = nccl
device = comfy.model_management.get_torch_device
# ComfyUI on a GPU that the Ray cluster does not show: on Linux (NCCL), and on a Mac (mps, no NCCL)
for name, kind, has_nccl in (("auto, no gpu", "cuda", True), ("auto, mac", "mps", False)):
    comfy.model_management.get_torch_device = lambda kind=kind: torch.device(kind)
    torch.distributed.is_nccl_available = lambda has_nccl=has_nccl: has_nccl
    try:
        SampleVideo.execute(model, pos, neg, **ARGS, parallel=ParallelConfig.execute(2, "auto", "").args[0])
    except ValueError as e:
        refused[name] = str(e)
comfy.model_management.get_torch_device, torch.distributed.is_nccl_available = device, nccl
try:                                                     # Ray would retry this address for minutes, silently
    SampleVideo.execute(model, pos, neg, **ARGS, parallel=ParallelConfig.execute(2, "cpu", "127.0.0.1:1").args[0])
except ValueError as e:
    refused["nobody there"] = str(e)
# no port (Ray's own "Invalid address format"), or none that is a number (int() of it)
for address in ("localhost", "auto", "10.0.0.5:", "myhost:port", "10.0.0.5:\u00b2"):    # "²": a digit, no int
    try:
        SampleVideo.execute(model, pos, neg, **ARGS, parallel=ParallelConfig.execute(2, "cpu", address).args[0])
    except ValueError as e:
        refused[address] = str(e)
result["refused"] = refused
# TeaCache (SkyReels-V2) reaches the workers, installed again around their blocks: it decides on the whole call (DF's
# per-frame modulation, with retention steps) and the ranks of a sequence group skip together. The model has DF-1.3B's
# width, whose coefficients TeaCache takes (on its random weights a threshold of 1000 skips some calls, not all). Kept
# workers take another threshold without loading again.
from helpers import write_tiny
from skyreels_pack.nodes.teacache import TeaCache
write_tiny(os.path.join(@FOLDER@, "df_1536.safetensors"), "DF", seed=3, dim=1536, ffn_dim=256)
wide = load("df_1536.safetensors")[0]
tea = lambda report: [line for line in report.splitlines() if line.startswith("TeaCache")]
cases = {"ulysses, df": (1e9, True, False, False, dict(mode="diffusion forcing", ar_step=1, steps=8)),
         "cfg parallel": (1e9, False, True, False, dict(steps=6)),
         "between": (1000.0, False, False, True, dict(steps=10)), "never": (1e-12, False, False, True, {})}
ones = {name: SampleVideo.execute(TeaCache.execute(wide, threshold, retention).args[0], pos, neg,
                                  **nest_mode({**FLAT, **extra})).args[:2]     # first: they release kept workers
        for name, (threshold, retention, _, _, extra) in cases.items()}
for name, (threshold, retention, cfg_parallel, keep_workers, extra) in cases.items():
    one, one_report = ones[name]
    two, two_report = SampleVideo.execute(TeaCache.execute(wide, threshold, retention).args[0], pos, neg,
                                          **nest_mode({**FLAT, **extra}), parallel=ParallelConfig.execute(
                                              2, "cpu", "", cfg_parallel=cfg_parallel, keep_workers=keep_workers)
                                          .args[0]).args[:2]
    result["teacache " + name] = [rel(two["samples"], one["samples"]), tea(one_report), tea(two_report),
                                  two_report.splitlines()[-1]]
SampleVideo.execute(model, pos, neg, **ARGS)             # a single-device run gives the GPUs back
time.sleep(1)
result["bar"] = bar
result["workers left"] = len(workers())
result["left"] = [(pid, cmdline[:120]) for pid, cmdline in workers()]
"""

FAULT = COMMON + r"""
# Nodes run in ComfyUI's one prompt-worker thread, not the main thread: so do these runs.
outcome = {}
def prompts():
    try:
        sample(config, steps=400, width=64, height=64)
        outcome["error"] = None
    except Exception as e:
        outcome["error"] = f"{type(e).__name__}: {e}"
    time.sleep(2)
    outcome["workers_after"] = len(workers())
    again = sample(config)[0]["samples"]       # the host carries on, and the next run starts new workers
    outcome["again"] = bool(again.isfinite().all())
    # A run that fails once its workers started releases them, also with keep_workers on (the default): a failed
    # run's workers may be stuck in a collective, and hold their memory
    from skyreels_pack.nodes.adapters import parallel_run
    real_sample = parallel_run._sample
    def failing(*args):
        raise RuntimeError("a worker's error")
    parallel_run._sample = failing
    try:
        sample(ParallelConfig.execute(2, "cpu", "", cfg_parallel=False, keep_workers=True).args[0])
    except RuntimeError as e:
        outcome["kept after a failure"] = [str(e), len(workers())]
    finally:
        parallel_run._sample = real_sample
runner = threading.Thread(target=prompts)
runner.start()
deadline = time.time() + 120
while time.time() < deadline and not any("sample" in cmdline for _, cmdline in workers()):
    time.sleep(0.2)
time.sleep(3)                                   # inside the sampling steps
victim = psutil.Process(workers()[-1][0])
victim.kill()                                   # a worker process dies (SIGKILL), as on an out-of-memory kill
runner.join(300)
time.sleep(2)
result = dict(outcome, alive=runner.is_alive(), workers_end=len(workers()))
"""

NO_RAY = COMMON.replace("import threading, time, psutil, ray", "import threading, time, psutil\nsys.modules['ray'] = None") + r"""
try:
    sample(config)
    message = None
except ValueError as e:
    message = str(e)
result = dict(message=message, single=bool(sample()[0]["samples"].isfinite().all()))
"""


def run(host, tmp_path, code):
    write_models(tmp_path)
    return run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + code.replace("@FOLDER@",
                                                                                          repr(str(tmp_path))))


def test_two_actors_equal_one_process(host, tmp_path):
    r = run(host, tmp_path, EQUAL)
    for mode in ("standard", "diffusion forcing"):
        # fp32 on both sides; measured 4e-7 (the actors' order of float operations in attention differs).
        assert r[mode] <= 1e-5, (mode, r[mode])
        assert "parallel: 2 CPU processes (gloo), cfg 1 x ulysses 2 x ring 1" in r[mode + " report"]
    assert "2 window(s)" in r["diffusion forcing report"]
    assert "noise: drawn on cpu (the model's device) in bfloat16" in r["diffusion forcing report"]
    # ar_step 1, and the workers' own cond batching is no guidance patch of the user's
    assert "guidance patches" not in r["diffusion forcing report"], r["diffusion forcing report"]
    # cfg parallel (one actor the positive pass, one the negative), windows through the VAE from a start image,
    # causal attention: measured 7e-7 (a batch of one instead of two).
    assert r["cfg parallel, vae, causal"] <= 1e-5, r["cfg parallel, vae, causal"]
    report = r["cfg parallel report"]
    assert "cfg 2 x ulysses 1 x ring 1" in report and "(causal attention)" in report and "through the VAE" in report
    assert r["start frame"] <= 1e-5, r["start frame"]   # the start image is the clean first latent frame
    # rank 0 holds the whole video (25 frames, 1 of 2 windows made), rank 1 the 9 its next window starts from, and
    # nothing of the last window; rank 0's images are the single-process run's (ulysses 2 here: measured 1.8e-6)
    assert r["frames held"] == [[25, 25], [9]], r["frames held"]
    assert r["rank 0's images"] <= 1e-5, r["rank 0's images"]
    # the workers sample without autograd, as the host does: the latent from their VAE carried an autograd graph
    # through every step (each step's activations held), and the latent came back requiring grad
    assert r["autograd graph"] is False
    assert r["cfg 1"][0] <= 1e-5 and r["cfg 1"][1].startswith(
        "parallel: 2 CPU processes (gloo), cfg 1 x ulysses 2 x ring 1 (cfg 1: one pass per step, so all split the "
        "sequence); "), r["cfg 1"]
    # A LoRA reaches the workers: the parallel run equals the single-device LoRA run (measured 0.0), which differs
    # from the model without it; the second run reuses the workers (same processes, no loading); another model
    # starts new ones; a single-device run releases them (checked with "workers left" below).
    assert r["lora changes the output"] > 1e-2, r["lora changes the output"]
    assert max(r["lora, parallel"]) <= 1e-5, r["lora, parallel"]
    first, second, same, count = r["kept"]
    assert "with starting the workers and loading" in first and "(workers kept from the last run)" in second
    assert same and count == 2, r["kept"]
    died = r["kept worker died"]
    assert isinstance(died, list) and died[0] <= 1e-5 and "with starting the workers and loading" in died[1], died
    # ... and the host's models are unloaded for kept workers too (else they sit on the first worker's device)
    assert r["host models"] == [1, 0], r["host models"]
    assert r["new model"][0] <= 1e-5 and "with starting the workers" in r["new model"][1], r["new model"]
    assert not r["new model"][2], r["new model"]
    assert r["refused"]["bypass"].startswith("Sample Video: parallel: this MODEL carries injections, which parallel "
                                             "runs cannot rebuild"), r["refused"]
    assert "a weight patch of type tuple (a model merge" in r["refused"]["merge"], r["refused"]
    assert r["refused"]["rescale"].startswith("Sample Video: parallel: this MODEL carries changes a worker cannot "
                                              "rebuild (sampler_cfg_function: e.g. RescaleCFG, Perp-Neg)"), r["refused"]
    # was refused (object_patches); its shift taken, the report says nothing is left unused (it said "shift 0 runs;
    # the MODEL's ModelSamplingSD3 shift 5 is not used")
    assert r["model sampling sd3"][0] <= 1e-5 and r["model sampling sd3"][1] == [], r["model sampling sd3"]
    assert r["sd3 note"] == ["shift 8 runs; the MODEL's ModelSamplingSD3 shift 5 is not used (set Sample Video's shift "
                             "to 0 to use it)", True], r["sd3 note"]      # as a single-device run says
    assert r["refused"]["no nccl"].startswith("Sample Video: parallel: GPU workers talk through NCCL, which this "
                                              "PyTorch does not have"), r["refused"]
    # device auto on a machine whose GPU Ray cannot give: as many CPU processes as workers, each loading the model
    assert r["refused"]["auto, no gpu"] == (
        "Sample Video: parallel: device auto: ComfyUI runs on cuda, and the Ray cluster has no GPU for the workers; "
        "start one that has (ray start --head --num-gpus N, and its address in ray_address), run without Parallel "
        "Config, or set its device to cpu for CPU processes (each loads the model)"), r["refused"]
    assert r["refused"]["auto, mac"] == (       # no NCCL there: no GPU workers to start
        "Sample Video: parallel: device auto: ComfyUI runs on mps, and the Ray cluster has no GPU for the workers; "
        "run without Parallel Config, or set its device to cpu for CPU processes (each loads the model)"), r["refused"]
    assert r["refused"]["nobody there"].startswith("Sample Video: parallel: ray_address 127.0.0.1:1: nothing "
                                                   "answers there ("), r["refused"]
    assert r["refused"]["nobody there"].endswith("); start the cluster there (ray start --head), or leave "
                                                 "ray_address empty for a cluster on this machine")
    for address in ("localhost", "10.0.0.5:", "myhost:port", "10.0.0.5:\u00b2"):
        assert r["refused"][address].startswith(f"Sample Video: parallel: ray_address {address}: give the cluster's "
                                                "host:port, as ray start --head prints it"), r["refused"]
    assert r["refused"]["auto"].startswith("Sample Video: parallel: ray_address auto: Ray found no cluster there "
                                           "(Could not find any running Ray instance"), r["refused"]
    # TeaCache in the workers: the same latents as on one device (measured 9.0e-7, 9.4e-7, 0.0, 0.0) and the same
    # calls skipped, with cfg parallel summed over the two halves (each counts its own pass); another threshold
    # keeps the workers
    for name, layout in (("ulysses, df", "cfg 1 x ulysses 2"), ("cfg parallel", "cfg 2 x ulysses 1"),
                         ("between", "cfg 1 x ulysses 2"), ("never", "cfg 1 x ulysses 2")):
        diff, one, two, last = r["teacache " + name]
        assert diff <= 1e-5 and one == two and layout in last, (name, r["teacache " + name])
    assert "skipped (threshold 1e+09, retention steps;" in r["teacache ulysses, df"][1][0]
    assert r["teacache cfg parallel"][1] == ["TeaCache: 8 of 12 model calls skipped (threshold 1e+09; cond and "
                                             "uncond counted apart)"]
    skipped = int(r["teacache between"][1][0].split()[1])
    assert 0 < skipped < 16 and " of 20 model calls" in r["teacache between"][1][0], r["teacache between"]
    assert r["teacache never"][1][0].startswith("TeaCache: 0 of 6 model calls skipped")
    assert r["teacache never"][3].endswith("(workers kept from the last run)"), r["teacache never"]
    # one forward pass (5 frames padded to 6, per-frame timesteps) in 2 actors: measured 2.5e-7 on both ranks
    assert len(r["forward"]) == 2 and max(r["forward"]) <= 1e-5, r["forward"]
    # ... with TeaCache around the blocks: the same output, and each rank keeps its share of the 5 x 24 tokens as the
    # residual (3 frames, the last one padding on rank 1), not the whole hidden state
    assert [tokens for _, tokens in r["forward, teacache"]] == [[72], [72]], r["forward, teacache"]
    assert max(diff for diff, _ in r["forward, teacache"]) <= 1e-5, r["forward, teacache"]
    # a worker's error reaches the host as itself, in its own words (Ray's wrapping made the message start with
    # its process header and traceback)
    assert r["worker error"] == ["OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB"], r["worker error"]
    # The host's progress bar followed rank 0 to the end of the parallel runs (3 model calls; DF: 2 windows).
    assert [3, 3] in r["bar"] and any(total > 3 and value == total for value, total in r["bar"]), r["bar"]
    # Under --preview-method latent2rgb the parallel runs show rank 0's previews too (none came before): one with
    # each progress update the host polls (every model call on one device: 3 + 9 here)
    assert r["previews"]["one"] == 12 and r["previews"]["two"] >= 2, r["previews"]
    assert r["workers left"] == 0, r["left"]      # released after every run


def test_a_killed_worker_is_a_clear_error_and_the_host_carries_on(host, tmp_path):
    r = run(host, tmp_path, FAULT)
    assert not r["alive"], r
    assert r["error"] is not None and r["error"].startswith("ValueError: Sample Video: parallel: a worker stopped"), r
    assert "all workers were released" in r["error"]
    assert r["workers_after"] == 0 and r["workers_end"] == 0, r   # no stray processes, after the failure or the rerun
    assert r["again"], r
    assert r["kept after a failure"] == ["a worker's error", 0], r


def test_without_ray_the_message_says_how_and_single_device_works(host, tmp_path):
    r = run(host, tmp_path, NO_RAY)
    assert r["message"] == ("Sample Video: parallel: Ray is not installed: `pip install ray` in ComfyUI's Python "
                            "(single-device runs need nothing)")
    assert r["single"]


HOST_FLAGS = r"""
from comfy.cli_args import PerformanceFeature
a = comfy.cli_args.args              # as main.py's parser leaves them for these launch options
a.fp16_intermediates = a.deterministic = a.disable_smart_memory = a.use_split_cross_attention = True
a.reserve_vram, a.fast = 2.0, set([PerformanceFeature.Fp16Accumulation, PerformanceFeature.AutoTune])
""" + IMPORT_PACK + r"""
from skyreels_pack.nodes.adapters import parallel_pool
a.use_flash_attention = True   # as a host with flash_attn has it; a worker without it leaves it off (ComfyUI would exit)
result = parallel_pool.host_args()
"""

WORKER_MODULE = r"""
import importlib.util, os, torch
path = os.path.join({repo!r}, "nodes", "adapters", "parallel_worker.py")
spec = importlib.util.spec_from_file_location("parallel_worker", path)
parallel_worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parallel_worker)
"""

IN_WORKER = WORKER_MODULE + r"""
parallel_worker.Worker(os.getcwd(), {repo!r}, True, 1, {given!r})      # what a Ray actor runs first
import comfy.cli_args, comfy.model_management as mm, comfy.ldm.modules.attention as attention
a = comfy.cli_args.args
result = dict(intermediate=str(mm.intermediate_dtype()), smart_off=mm.DISABLE_SMART_MEMORY,
              deterministic=torch.are_deterministic_algorithms_enabled(), attention=attention.optimized_attention.__name__,
              fast=sorted(f.value for f in a.fast), reserve=a.reserve_vram, flash=a.use_flash_attention, cpu=a.cpu)
"""


AUTOTUNE = WORKER_MODULE + r"""
torch.cuda.is_available = torch.backends.cudnn.is_available = lambda: True     # as on a GPU
parallel_worker.Worker(os.getcwd(), {repo!r}, True, 1, {{"fast": ["autotune"]}})
result = torch.backends.cudnn.benchmark
"""


def test_workers_autotune_convolutions_under_fast_autotune(host):
    # main.py turns cuDNN's autotuning on after loading custom nodes (--fast, --fast autotune); a worker does too
    # (the VAE's convolutions run in the workers)
    assert run_in_host(host, AUTOTUNE.format(repo=REPO)) is True


def test_workers_start_with_the_hosts_launch_options(host):
    # A Ray actor is a fresh Python: without the host's options it ran with ComfyUI's defaults (measured: under
    # --fp16-intermediates a parallel run returned float32 where one device returns float16; --lowvram,
    # --reserve-vram, --force-fp32, --use-sage-attention ... did not reach the workers either).
    given = run_in_host(host, HOST_FLAGS.format(repo=REPO))
    assert given["fp16_intermediates"] and given["reserve_vram"] == 2.0 and given["use_flash_attention"], given
    assert given["fast"] == ["autotune", "fp16_accumulation"], given
    r = run_in_host(host, IN_WORKER.format(repo=REPO, given=given))
    assert r == dict(intermediate="torch.float16", smart_off=True, deterministic=True, attention="attention_split",
                     fast=["autotune", "fp16_accumulation"], reserve=2.0, flash=False, cpu=True), r


TOO_FEW = IMPORT_PACK + r"""
import comfy.cli_args, torch
from types import SimpleNamespace
from skyreels_pack.nodes.adapters import parallel_pool
torch.distributed.is_nccl_available = lambda: True         # as PyTorch on Linux with CUDA has it
one_gpu = SimpleNamespace(cluster_resources=lambda: {{"GPU": 1.0, "CPU": 16.0}})    # what Ray counts on such a machine
result = {{}}
for shown in (None, "0"):
    comfy.cli_args.args.cuda_device = shown      # as main.py leaves it for --cuda-device 0
    for address in ("", "10.0.0.2:6379"):
        try:
            parallel_pool._use_cpu(one_gpu, dict(device="gpu", address=address), 2)
        except ValueError as e:
            result[f"{{shown}} {{address}}"] = str(e)
# device "auto": GPU workers where the cluster has GPUs, CPU workers where it has none
result["auto"] = [parallel_pool._use_cpu(SimpleNamespace(cluster_resources=lambda: {{"GPU": 2.0, "CPU": 16.0}}),
                                         dict(device="auto", address=""), 2),
                  parallel_pool._use_cpu(SimpleNamespace(cluster_resources=lambda: {{"CPU": 16.0}}),
                                         dict(device="auto", address=""), 2)]
# The user's cancel stops the workers and the run at the next poll, whatever the workers are doing (here: never
# answering)
import comfy.model_management
killed, polls = [], []
def never(refs, num_returns, timeout):
    polls.append(1)
    if len(polls) > 20:
        raise RuntimeError("still waiting after the cancel")
    return [], refs
comfy.model_management.interrupt_current_processing(True)
try:
    parallel_pool.wait(SimpleNamespace(wait=never, kill=killed.append), ["ref"], ["worker 0", "worker 1"])
except comfy.model_management.InterruptProcessingException:
    result["cancel"] = [killed, len(polls)]
except RuntimeError as e:
    result["cancel"] = str(e)
comfy.model_management.interrupt_current_processing(False)
"""


def test_too_few_gpus_names_comfyuis_cuda_device_where_it_hid_them(host):
    # --cuda-device sets CUDA_VISIBLE_DEVICES, so the Ray cluster the pack starts on this machine sees that GPU alone
    r = run_in_host(host, TOO_FEW.format(repo=REPO))
    assert r.pop("auto") == [False, True], r
    assert r.pop("cancel") == [["worker 0", "worker 1"], 1], r
    plain = "Sample Video: parallel: 2 workers need 2 GPUs; the Ray cluster has 1"
    assert r["None "] == r["None 10.0.0.2:6379"] == r["0 10.0.0.2:6379"] == plain + (   # nothing hid them there
        ": run without Parallel Config, or set its device to cpu"), r
    assert r["0 "] == plain + (" (ComfyUI's --cuda-device 0 shows it only that: start ComfyUI without it, or start a "
                               "Ray cluster yourself (ray start --head) and give its address as ray_address)"), r
