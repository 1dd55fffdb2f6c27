"""sampling/: the flow schedule, the UniPC and Euler solvers against SkyReels-V2's own scheduler, and Diffusion
Forcing's plan and window loop, on toy denoisers (no host needed)."""
import importlib.util
import json
import os

import pytest
import safetensors.torch
import torch

from sampling import forcing
from sampling.schedule import flow_sigmas, latent_frames, model_timesteps, video_frames
from sampling.solvers import FlowUniPC, make_solver, sample

REF = json.load(open(os.path.join(os.path.dirname(__file__), "data", "unipc_reference.json")))
SCHEDULES = REF["cases"] + REF["sigma_cases"]      # every (steps, shift) whose sigmas SkyReels-V2's scheduler gave
_spec = importlib.util.spec_from_file_location(
    "skyreels_unipc_bf16", os.path.join(os.path.dirname(__file__), "data", "skyreels_unipc_bf16.py"))
skyreels_unipc_bf16 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(skyreels_unipc_bf16)


def toy_velocity(x, sigma):
    # The toy written in tests/data/unipc_reference.json ("toy"), standing in for transformer + CFG.
    return 0.8 * x - 0.3 * torch.sin(2.0 * x) + 0.5 * sigma * torch.cos(x)


def toy_denoise(x, sigma):
    """x0 prediction of the toy flow model: x0 = x - sigma * v (per frame when sigma is a vector)."""
    s = sigma.float().reshape(1, 1, -1, 1, 1) if torch.is_tensor(sigma) and sigma.ndim else float(sigma)
    return x - s * toy_velocity(x, s)


def init_x():
    return torch.tensor(REF["init_x"]).reshape(1, 4, 3, 2, 2)


@pytest.mark.parametrize("case", SCHEDULES, ids=lambda c: f"{c['steps']}steps-shift{c['shift']}")
def test_sigmas_match_skyreels(case):
    # the same float32 sigmas, to the bit: the same float64 grid (numpy's) rounded once. sigma_cases: where a
    # torch.linspace grid rounded one sigma an ulp away (steps 60, shift 1)
    assert torch.equal(flow_sigmas(case["steps"], case["shift"]), torch.tensor(case["sigmas"]))


@pytest.mark.parametrize("case", REF["cases"], ids=lambda c: f"{c['steps']}steps-shift{c['shift']}")
def test_unipc_matches_skyreels_scheduler(case):
    out = sample(toy_denoise, init_x(), flow_sigmas(case["steps"], case["shift"]), "unipc")
    # Reference computed in float32 with float32 coefficients; ours uses float64 coefficients: 1e-6 is a few ulps.
    assert (out.flatten() - torch.tensor(case["final_x"])).abs().max().item() < 1e-6


def test_unipc_every_step_matches_skyreels():
    case = next(c for c in REF["cases"] if "x_per_step" in c)
    seen = []
    sample(toy_denoise, init_x(), flow_sigmas(case["steps"], case["shift"]), "unipc",
           callback=lambda i, x0, x: seen.append(x.flatten()))
    assert len(seen) == case["steps"]
    for got, want in zip(seen, case["x_per_step"]):
        assert (got - torch.tensor(want)).abs().max().item() < 1e-6


def test_unipc_differs_from_first_order():
    # The reference is not reachable by Euler: guards against the corrector/second-order terms silently vanishing.
    case = next(c for c in REF["cases"] if c["steps"] == 10)
    out = sample(toy_denoise, init_x(), flow_sigmas(10, case["shift"]), "euler")
    assert (out.flatten() - torch.tensor(case["final_x"])).abs().max().item() > 1e-3


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_solvers_exact_on_straight_paths(solver):
    # A model that always predicts the same x0 makes the flow ODE's path a straight line from noise to x0; both
    # solvers integrate it exactly, so every intermediate sample lies on the line.
    g = torch.Generator().manual_seed(3)
    target, noise = torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)
    sigmas = flow_sigmas(7, 8.0)
    x = (1 - sigmas[0]) * target + sigmas[0] * noise
    s = make_solver(solver, sigmas)
    for k in range(7):
        x = s.step(target, x)
        want = (1 - sigmas[k + 1]) * target + sigmas[k + 1] * noise
        assert torch.allclose(x, want, atol=1e-5)
    assert torch.equal(x, target) if solver == "unipc" else torch.allclose(x, target, atol=1e-6)


def test_make_solver_names_choices():
    with pytest.raises(ValueError, match="unknown sampler 'dpm'; choose one of unipc, euler"):
        make_solver("dpm", flow_sigmas(3, 1.0))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        flow_sigmas(0, 8.0)
    with pytest.raises(ValueError, match="shift must be above 0, got 0.0"):
        flow_sigmas(3, 0.0)


def test_frame_arithmetic():
    assert [latent_frames(n) for n in (1, 5, 97, 257)] == [1, 2, 25, 65]
    assert video_frames(25) == 97


# --- Diffusion Forcing plan ---------------------------------------------------------------------------------------

# tests/data/skyreels_df_plan.json: SkyReels-V2's own generate_timestep_matrix over a grid of settings, and the
# windows its pipeline lays out for long videos (written by tests/data/skyreels_df_plan.py). Conventions:
# - step_index and step_update_mask (stored 0/1) are ours as they are: Plan.step_index, Plan.update (their counter
#   also runs 0 = not started .. steps + 1 = finished).
# - step_matrix is [999, *scheduler timesteps, 0][step_index]: ours is the timestep Sample Video gives the model for
#   that counter, model_timesteps(steps, shift)[frame_sigmas(step_index, flow_sigmas(steps, shift))].
# - Each case plans one window as SkyReels-V2 calls it (base_num_frames = num_frames: test_windows_match_skyreels),
#   where its model sees the whole window in every row (valid_interval), as Sample Video's does.
PLAN_REF = json.load(open(os.path.join(os.path.dirname(__file__), "data", "skyreels_df_plan.json")))


def plan_id(c):
    return (f"{c['num_frames']}f-{c['steps']}steps-ar{c['ar_step']}-pre{c['num_pre_ready']}"
            f"-block{c['causal_block_size']}")


@pytest.mark.parametrize("case", PLAN_REF["plan_cases"], ids=plan_id)
def test_plan_matches_skyreels(case):
    plan = forcing.timestep_matrix(case["num_frames"], case["steps"], case["ar_step"], case["num_pre_ready"],
                                   case["causal_block_size"])
    assert plan.step_index.tolist() == case["step_index"]
    assert plan.update.int().tolist() == case["step_update_mask"]
    assert case["valid_interval"] == [[0, case["num_frames"]]] * plan.rows
    table = model_timesteps(case["steps"], PLAN_REF["shift"])
    sigmas = forcing.frame_sigmas(plan.step_index, flow_sigmas(case["steps"], PLAN_REF["shift"]))
    assert [[table[s] for s in row] for row in sigmas.tolist()] == case["step_matrix"]
    # The frames it starts finished: num_pre_ready in whole blocks.
    cbs = case["causal_block_size"]
    assert plan.prefix == case["num_pre_ready"] // cbs * cbs


@pytest.mark.parametrize("ar_step", [0, 1, 3])
def test_plan_clean_end_frame_is_never_updated_and_changes_no_other_frame(ar_step):
    # An end image's frame: clean in every row, never stepped; the other frames keep the plan they have without it
    # (no frame waits for a later one), and the rows where only it would have moved are gone.
    with_end = forcing.clean_end(forcing.timestep_matrix(6, 4, ar_step, num_pre_ready=1), 1)
    without = forcing.timestep_matrix(5, 4, ar_step, num_pre_ready=1)
    assert (with_end.step_index[:, -1] == 5).all() and not with_end.update[:, -1].any()
    assert torch.equal(with_end.step_index[:, :5], without.step_index)
    assert torch.equal(with_end.update[:, :5], without.update)


def test_plan_errors_name_the_fix():
    # SkyReels-V2 silently drops the frames past the last whole block; ours refuses.
    with pytest.raises(ValueError, match="do not split into blocks of causal_block_size 5"):
        forcing.timestep_matrix(12, 30, causal_block_size=5)


def test_frame_sigmas():
    sigmas = flow_sigmas(3, 8.0)
    got = forcing.frame_sigmas(torch.tensor([[0, 1, 3, 4]]), sigmas)
    assert got.tolist() == [[0.9990000128746033, sigmas[0].item(), sigmas[2].item(), 0.0]]


@pytest.mark.parametrize("case", PLAN_REF["window_cases"],
                         ids=lambda c: f"{c['latent_frames']}-base{c['base_latent']}-overlap{c['overlap_latent']}"
                                       f"-block{c['causal_block_size']}")
def test_windows_match_skyreels(case):
    # Each SkyReels-V2 window is one generate_timestep_matrix(n, n, num_pre_ready) call: ours (prefix, n) has the
    # same n; its num_pre_ready is our prefix (the whole overlap) in whole causal blocks, as Sample Video starts
    # each window (it encodes the last overlap_history video frames again and truncates them to whole blocks).
    cbs = case["causal_block_size"]
    wins = forcing.windows(case["latent_frames"], case["base_latent"], case["overlap_latent"])
    assert [[n, n, p // cbs * cbs] for p, n in wins] == case["windows"]
    assert video_frames(sum(n - p for p, n in wins)) == case["video_frames"]


def test_whole_blocks_names_the_lengths_skyreels_readme_gives():
    # Its README: with base_num_frames 97 and overlap_history 17, num_frames 237 leaves 20 latent frames for the last
    # window, which blocks of 5 divide; 257, 377 and 737 are its recommended lengths. 241 (61 latent) fits none.
    assert forcing.whole_blocks(61, 25, 5, 5) == (60, 65)                   # 237 and 257 frames
    assert all(forcing.whole_blocks(n + 1, 25, 5, 5)[0] == n for n in (60, 65, 95, 185))
    assert forcing.whole_blocks(24, 25, 5, 5) == (20, 25)                  # one window: whole blocks of its own
    assert forcing.whole_blocks(3, 25, 5, 5) == (None, 5)                  # none below
    assert forcing.whole_blocks(30, 26, 5, 4)[1] is None                   # base_num_frames not whole blocks: none
    assert forcing.whole_blocks(25, 25, 25, 4) == (24, None)   # an overlap as long as a window: one window only


def test_windows_errors():
    assert forcing.windows(20, 25, 5) == [(0, 20)]
    with pytest.raises(ValueError, match="overlap_history must give fewer latent frames than base_num_frames"):
        forcing.windows(60, 25, 25)


# --- Diffusion Forcing loop ---------------------------------------------------------------------------------------

def video_noise(frames, seed=0):
    return torch.randn(1, 4, frames, 2, 2, generator=torch.Generator().manual_seed(seed))


def test_sync_forcing_equals_standard_for_euler():
    # (UniPC differs, as in SkyReels-V2: test_forcing_matches_skyreels_df_loop)
    sigmas, x = flow_sigmas(6, 8.0), video_noise(5)
    plan = forcing.timestep_matrix(5, 6, ar_step=0)
    df = forcing.sample_window(toy_denoise, x, sigmas, plan, "euler")
    std = sample(toy_denoise, x, sigmas, "euler")
    assert (df - std).abs().max().item() < 1e-6


def test_async_forcing_steps_every_frame_through_its_schedule():
    # With a model whose x0 prediction does not depend on the other frames, asynchronous DF must give every frame
    # exactly the result of standard sampling of that frame alone: each frame sees the same sigmas in order.
    sigmas, x = flow_sigmas(6, 8.0), video_noise(6)
    plan = forcing.timestep_matrix(6, 6, ar_step=2, causal_block_size=2)
    calls = []
    df = forcing.sample_window(lambda a, s: (calls.append(s.clone()), toy_denoise(a, s))[1], x, sigmas, plan)
    alone, solver = x, FlowUniPC(sigmas, df=True)     # every frame through one DF solver, all at once
    for sigma in sigmas[:-1]:
        alone = solver.step(toy_denoise(alone, sigma), alone)
    assert (df - alone).abs().max().item() < 1e-6
    assert len(calls) == plan.rows == 10
    assert calls[0].tolist() == pytest.approx([sigmas[0].item()] * 2 + [0.999] * 4)


def test_prefix_stays_clean_and_addnoise_only_changes_what_the_model_sees():
    sigmas, x = flow_sigmas(4, 8.0), video_noise(4)
    prefix = torch.full((1, 4, 2, 2, 2), 0.5)
    x[:, :, :2] = prefix
    plan = forcing.timestep_matrix(4, 4, num_pre_ready=2)
    seen = []

    def denoise(a, s):
        seen.append((a[:, :, :2].clone(), s[:2].clone()))
        return toy_denoise(a, s)

    g = torch.Generator().manual_seed(0)
    out = forcing.sample_window(denoise, x, sigmas, plan, addnoise_condition=20,
                                draw=lambda shape: torch.randn(shape, generator=g))
    assert torch.equal(out[:, :, :2], prefix)
    model_in, model_sigma = seen[0]
    assert model_sigma.tolist() == pytest.approx([0.02, 0.02])
    # SkyReels-V2's mix, 0.98 * prefix + 0.02 * the draw (the generator's first numbers); a model shown the prefix
    # plus that noise unscaled was within the old bound |model_in - 0.98 prefix| < 0.1.
    torch.testing.assert_close(model_in, 0.98 * prefix + 0.02 * torch.randn(prefix.shape,
                                                                       generator=torch.Generator().manual_seed(0)))
    plain = []
    forcing.sample_window(lambda a, s: (plain.append(s[:2].clone()), toy_denoise(a, s))[1], x, sigmas, plan)
    assert plain[0].tolist() == [0.0, 0.0]


def test_unipc_state_is_per_instance():
    # DF runs one solver per frame; they must not share history.
    sigmas = flow_sigmas(5, 8.0)
    a, b = FlowUniPC(sigmas), FlowUniPC(sigmas)
    xa, xb = video_noise(1, 1), video_noise(1, 2)
    alone = sample(toy_denoise, xa, sigmas)
    for _ in range(5):
        xa = a.step(toy_denoise(xa, sigmas[a.index]), xa)
        xb = b.step(toy_denoise(xb, sigmas[b.index]), xb)
    assert torch.equal(xa, alone)


@pytest.mark.parametrize("case", REF["cases"], ids=lambda c: f"{c['steps']}steps-shift{c['shift']}")
def test_forcing_matches_skyreels_df_loop(case):
    # SkyReels-V2's DF loop writes each step's result into the view it gave its scheduler, which changes the
    # corrector of the second step (tests/data: final_x_df). Textbook UniPC (standard sampling) is measurably off it.
    sigmas, x = flow_sigmas(case["steps"], case["shift"]), init_x()
    plan = forcing.timestep_matrix(3, case["steps"], ar_step=0)
    df = forcing.sample_window(toy_denoise, x, sigmas, plan).flatten()
    want = torch.tensor(case["final_x_df"])
    assert (df - want).abs().max().item() < 1e-6          # float32 vs float64 coefficients: a few ulps
    if case["steps"] > 2:                                  # the corrector of step 2 exists
        assert (sample(toy_denoise, x, sigmas).flatten() - want).abs().max().item() > 1e-4


@pytest.mark.parametrize("case", REF["cases"], ids=lambda c: f"{c['steps']}steps-shift{c['shift']}")
def test_forcing_with_bf16_latents_matches_skyreels_df_loop_bit_for_bit(case):
    # SkyReels-V2's DF pipeline with its bf16 transformer keeps its latents in bf16 between steps (tests/data:
    # final_x_df_bf16, its scheduler run on the CPU). The same arithmetic in the same dtypes gives the same bits; the
    # float32 state is 0.004 to 0.045 away from it.
    sigmas, plan = flow_sigmas(case["steps"], case["shift"]), forcing.timestep_matrix(3, case["steps"], ar_step=0)
    want = torch.tensor(case["final_x_df_bf16"])
    out = forcing.sample_window(toy_denoise, init_x(), sigmas, plan, dtype=torch.bfloat16)
    assert out.dtype == torch.float32 and torch.equal(out.flatten(), want)
    assert (forcing.sample_window(toy_denoise, init_x(), sigmas, plan).flatten() - want).abs().max().item() > 3e-3


@pytest.mark.parametrize("steps, shift", skyreels_unipc_bf16.CASES)
def test_bf16_latents_match_skyreels_scheduler_on_65536_values(steps, shift):
    # tests/data/skyreels_unipc_bf16.py: SkyReels-V2's scheduler on bf16 latents (its DF pipeline with a bf16
    # transformer), its model stand-in made of +, -, *, / only (the same bits on every machine). Every value equal:
    # leaving out one of its roundings (the corrector's weights to bf16) changes 175 of them at 50 steps, and a
    # Python float for its float32 CPU ratio of sigmas about 42,000.
    table = safetensors.torch.load_file(skyreels_unipc_bf16.OUT)
    x = table["initial"].float()
    plan = forcing.timestep_matrix(x.shape[2], steps, ar_step=0)

    def denoise(x, sigma):
        s = sigma.reshape(1, 1, -1, 1, 1)
        return x - s * skyreels_unipc_bf16.velocity(x, s)

    out = forcing.sample_window(denoise, x, flow_sigmas(steps, shift), plan, dtype=torch.bfloat16)
    want = table[f"steps{steps}_shift{shift:g}"].float()
    assert (out != want).sum().item() == 0, f"{(out != want).sum().item()} of {want.numel()} values differ"


@pytest.mark.parametrize("case", SCHEDULES, ids=lambda c: f"{c['steps']}steps-shift{c['shift']}")
def test_model_timesteps_are_skyreels_integers(case):
    table = model_timesteps(case["steps"], case["shift"], addnoise_condition=251)
    sigmas = flow_sigmas(case["steps"], case["shift"])
    assert [table[s] for s in sigmas[:-1].tolist()] == case["timesteps"]
    assert table[forcing.frame_sigmas(torch.tensor([[0]]), sigmas).item()] == 999       # not started
    # The addnoise level: float32(0.251) * 1000 is just under 251; the table still says 251.
    assert table[torch.tensor(0.251).item()] == 251 and torch.tensor(0.251).item() * 1000 < 251


def test_latent_frames_of_any_frame_count_as_the_vae_encodes_them():
    """The causal VAE makes 1 + (F - 1) // 4 latent frames of F video frames, 4k + 1 or not (a prefix video shorter
    than overlap_history: Sample Video's _tail_pixels keeps latent_frames(available) of them)."""
    assert [latent_frames(n) for n in (1, 2, 4, 5, 8, 9, 12, 97, 100)] == [1, 1, 1, 2, 2, 3, 3, 25, 25]
    assert all(latent_frames(video_frames(n)) == n for n in range(1, 40))


def test_aspect_crop_keeps_the_box_inside_the_picture():
    """The largest centred box of the target's aspect: a wide picture to a square loses its sides, a tall one its
    top and bottom (never a box past the picture's edge)."""
    from sampling.schedule import aspect_crop
    assert aspect_crop(1000, 500, 100, 100) == (250, 0, 750, 500)
    assert aspect_crop(500, 1000, 100, 100) == (0, 250, 500, 750)
    assert aspect_crop(1920, 1080, 960, 544) == (7.5, 0, 1912.5, 1080)
