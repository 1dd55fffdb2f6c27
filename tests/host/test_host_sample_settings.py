"""Sample Video with its widgets and inputs set at random (seeded), on the tiny DF and T2V models: every setting
makes a finite latent, or is refused by a ValueError starting "Sample Video:" (its checks), never an error from
inside a run. Hand-picked cases are in test_host_sample.py; this finds the combinations no one picked."""
from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

SETTINGS = 300      # about 25 s on 2 cores, 112 of them run; 1000 other seeds were run by hand when this was written

RUN = r"""
import random, traceback
import comfy.utils
from skyreels_pack.nodes.sample import SampleVideo
from generate_video_fp8 import write_tiny_vae
write_tiny_vae(os.path.join({folder!r}, "vae.safetensors"))
vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(os.path.join({folder!r}, "vae.safetensors")))
models = [load("df_bf16.safetensors")[0], load("t2v_bf16.safetensors")[0]]
pos, neg = ([[torch.randn(1, 8, 4096, generator=g), {{}}]] for _ in range(2))


def setting(r):
    w = dict(width=r.choice([16, 32, 48]), height=r.choice([16, 32]), seed=r.randrange(100), steps=r.randint(1, 4),
             frames=r.choice([1, 5, 9, 13, 17, 21, 29, 37, 45, 57]) if r.random() < 0.95 else r.choice([3, 6]),
             cfg=r.choice([0.0, 1.0, 3.0]), shift=r.choice([0.0, 3.0, 8.0, 100.0]),
             sampler=r.choice(["unipc", "euler"]),
             fps=r.choice([1, 16, 24, 120]), mode="standard")
    if r.random() < 0.8:
        w.update(mode="diffusion forcing", ar_step=r.choice([0, 0, 1, 2, 5, 10]), causal_attention=r.random() < 0.3,
                 base_num_frames=r.choice([5, 9, 13, 17, 21, 25, 97]) if r.random() < 0.95 else r.choice([1, 2, 7]),
                 overlap_history=r.choice([1, 5, 9]) if r.random() < 0.9 else r.choice([3, 13, 17]),
                 causal_block_size=r.choice([1, 1, 1, 2, 3, 5]), addnoise_condition=r.choice([0, 0, 20, 50, 999]))
    inputs = dict(vae=vae if r.random() < 0.4 else None,
                  start_image=torch.rand(1, r.choice([16, 32, 40]), r.choice([16, 32, 64]), 3) if r.random() < 0.15
                  else None,
                  end_image=torch.rand(1, 32, 32, 3) if r.random() < 0.1 else None,
                  prefix_video=torch.rand(r.choice([1, 5, 13, 20]), 32, 32, 3) if r.random() < 0.1 else None,
                  latent={{"samples": torch.zeros(1, 16, r.choice([1, 2, 5, 8]), 4, 4)}} if r.random() < 0.1 else None,
                  window_prompts={{"window_2": pos, "window_4": neg}} if r.random() < 0.1 else None)
    return w, inputs


ran, failed = 0, []
for case in range({settings}):
    r = random.Random(case)
    torch.manual_seed(case)      # the images' values: each case alone draws what it drew here
    widgets, inputs = setting(r)
    try:
        latent = SampleVideo.execute(r.choice(models), pos, neg, **nest_mode(widgets), **inputs).args[0]["samples"]
        ran += 1
        if not torch.isfinite(latent).all():
            failed.append(f"case {{case}} {{widgets}}: a latent of NaN/Inf")
    except ValueError as e:
        if not str(e).startswith("Sample Video: "):
            failed.append(f"case {{case}} {{widgets}}: {{e}}")
    except Exception as e:
        where = traceback.format_tb(e.__traceback__)[-1]
        failed.append(f"case {{case}} {{widgets}}: {{type(e).__name__}}: {{e}} {{where}}")
result = dict(ran=ran, failed=failed)
"""


def test_random_settings_run_or_are_refused_by_name(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + RUN.format(folder=str(tmp_path),
                                                                                     settings=SETTINGS))
    assert r["failed"] == [], "\n".join(r["failed"][:5])
    assert SETTINGS * 0.25 < r["ran"] < SETTINGS * 0.75, r      # both outcomes: the settings reach the sampler
