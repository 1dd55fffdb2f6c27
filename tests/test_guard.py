"""The accuracy guard's pieces (attention.guard): its check schedule, the step lookup, the NaN/Inf check."""
import torch

from attention.guard import StepIndex, all_finite, guard_cosine, guard_rows, phase
from attention.reference import sage_attention_reference


def test_phases_of_the_steps():
    assert [phase(s, 20) for s in range(20)] == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    assert [phase(s, 2) for s in range(2)] == [0, 2]  # 2 steps: 1/4 and 1/2 both fall on step 1
    assert phase(7, 0) == 0  # no schedule known: only the first check


def test_step_from_the_schedule_is_looked_up_once_per_model_call():
    schedule = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    index = StepIndex()
    sigmas = torch.tensor([0.5])
    assert index({"sigmas": sigmas, "sample_sigmas": schedule}) == (2, 4)
    schedule[2] = 9.0  # the same sigmas tensor (the same model call): the cached step, no second lookup
    assert index({"sigmas": sigmas, "sample_sigmas": schedule}) == (2, 4)
    assert index({"sigmas": torch.tensor([0.25]), "sample_sigmas": schedule}) == (3, 4)  # the next model call
    assert index({"skyreels_call": 1, "sample_sigmas": schedule}) == (1, 4)  # Sample Video's own count
    # an asynchronous DF window: more model calls than steps, checked at 1/4, 1/2, 3/4 of its calls
    assert index({"skyreels_call": 7, "skyreels_calls": 10, "sample_sigmas": schedule}) == (7, 10)
    assert index({}) == (0, 0)


def test_a_pass_that_starts_below_the_top_of_the_schedule_continues_one():
    index, top = StepIndex(), torch.tensor([1.0, 0.5, 0.0])
    assert not index.continues({"sample_sigmas": top})
    later = torch.tensor([0.5, 0.25, 0.0])          # KSampler (Advanced) from step 2 of 4, or denoise 0.5
    assert index.continues({"sample_sigmas": later})
    later[0] = 1.0             # the same schedule tensor: the answer read at the pass's first call
    assert index.continues({"sample_sigmas": later})
    assert not index.continues({"sample_sigmas": later, "skyreels_call": 3})     # Sample Video: from noise
    assert not index.continues({})


def test_on_the_models_grid_a_pass_less_than_one_step_below_the_top_starts_from_noise():
    t = torch.arange(1, 1001) / 1000
    grid = 8 * t / (1 + 7 * t)        # the noise levels of ComfyUI's flow model sampling at shift 8, ascending
    index = StepIndex()
    index.grid = grid
    zero = torch.zeros(1)
    # ddim_uniform, 4 steps: grid levels 751, 501, 251, 1 (sigma 0.960 first), 248 levels below the top
    assert not index.continues({"sample_sigmas": torch.cat([grid[[751, 501, 251, 1]], zero])})
    assert float(grid[751]) < 0.99     # which a sigma threshold alone took for a continued pass
    # simple, 4 steps (levels 999, 749, 499, 249): the pass from step 1 or from step 2 continues one
    assert index.continues({"sample_sigmas": torch.cat([grid[[749, 499, 249]], zero])})
    assert index.continues({"sample_sigmas": torch.cat([grid[[499, 249]], zero])})
    assert not index.continues({"sample_sigmas": torch.cat([grid[[999, 749, 499, 249]], zero])})


def test_guard_cosine_and_non_finite_outputs():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 6, 32, 16, generator=g) for _ in range(3))
    seen = []

    def exact(a, b, c):
        seen.append(list(a.shape))
        return torch.nn.functional.scaled_dot_product_attention(a, b, c)

    out = exact(q, k, v)
    assert guard_cosine(out, exact, q, k, v) > 0.9999 and seen == [[1, 6, 32, 16]] * 2  # short: every row
    out[0, 2, 5, 1] = float("nan")
    assert guard_cosine(out, exact, q, k, v) == float("-inf")


def test_the_finite_check_makes_no_copy_of_the_output():
    # Every 8-bit attention call's output is checked. A sum in fp32 made an fp32 copy of it on the CPU (measured 2x
    # its bytes); min and max read it in its own dtype (two scalars).
    from test_act_quant import peak_extra_bytes
    out = torch.randn(1, 512, 640).bfloat16()
    peak, finite = peak_extra_bytes(lambda: all_finite(out))
    assert finite and peak <= 4096, peak / out.nbytes


def test_all_finite():
    out = torch.randn(2, 64, 4, 8, dtype=torch.bfloat16)
    assert all_finite(out)
    for bad in (float("nan"), float("inf"), -float("inf")):
        spoiled = out.clone()
        spoiled[1, 63, 3, 7] = bad
        assert not all_finite(spoiled)


def test_the_guard_checks_every_head_on_blocks_of_rows_against_all_keys():
    """An 8-bit error in one head is seen (two heads of six, the old check, missed head 3), on 9 blocks of 128 rows
    that start on multiples of 128 (as the kernels quantize q), against all the keys: exact attention runs for those
    rows alone, the 8-bit rows are the call's own."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 6, 8192, 16, generator=g) for _ in range(3))
    seen = []

    def exact(a, b, c):
        seen.append((list(a.shape), list(b.shape)))
        return torch.nn.functional.scaled_dot_product_attention(a, b, c)

    off_in_head_3 = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    off_in_head_3[:, 3] += 0.5 * torch.randn(off_in_head_3[:, 3].shape, generator=g)
    assert guard_cosine(off_in_head_3, exact, q, k, v) < 0.9
    assert seen == [([1, 6, 9 * 128, 16], [1, 6, 8192, 16])]
    rows = guard_rows(q).reshape(9, 128)
    assert torch.equal(rows % 128, torch.arange(128).expand(9, 128)) and rows[-1, 0] == 8192 - 128
    assert guard_rows(q[:, :, :18 * 128]) is None and guard_rows(q[:, :, :18 * 128 + 1]).numel() == 8 * 128 + 1


def test_the_guards_other_blocks_are_spread_over_the_whole_video():
    """Beside the last block and the 4 widest, the guard's blocks spread over the whole sequence (a review found the
    first choice cut to the video's start: blocks 100 to 174 of 200 were never checked)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 200 * 128, 8, generator=g)
    for b in (11, 37, 61, 97):           # the 4 widest: an outlier in each
        q[0, 1, b * 128 + 5, 3] = 300.0
    blocks = sorted(set((guard_rows(q) // 128).tolist()))
    assert blocks == [0, 11, 37, 50, 61, 97, 100, 149, 199], blocks


def test_the_guard_finds_the_block_an_outlier_in_q_wrecks():
    """One large value in q widens its block's int8 scale and spoils that block (whole-call cosine 0.9977, its
    block's 0.983, measured on CPU with this seed): the guard checks the blocks whose values span the most, so it
    sees the block that 4 evenly spread blocks (the previous choice) missed and reads 0.9905, under the 0.995
    threshold; and the last, partial block, where the kernels pad."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 8192 + 56, 64, generator=g) for _ in range(3))
    q[0, 0, 1000, 5] = 400.0
    exact = lambda a, b, c: torch.nn.functional.scaled_dot_product_attention(a, b, c)  # noqa: E731
    rows = guard_rows(q)
    assert 1000 in rows and rows[-56:].tolist() == list(range(8192, 8248)) and rows.numel() == 8 * 128 + 56
    assert guard_cosine(sage_attention_reference(q, k, v, layout="HND"), exact, q, k, v) < 0.995


def test_an_error_from_q_stays_in_its_block():
    """Why the guard checks whole blocks of BLOCK_Q rows: our PyTorch SageAttention (as the kernels) quantizes q per
    block of 128 rows, so those rows computed alone are the whole call's, bit for bit: each block stands alone."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 19 * 128 + 40, 64, generator=g) for _ in range(3))
    rows = guard_rows(q)
    whole = sage_attention_reference(q, k, v, layout="HND")
    assert rows.numel() == 8 * 128 + 40
    assert torch.equal(sage_attention_reference(q.index_select(2, rows), k, v, layout="HND"),
                       whole.index_select(2, rows))


def test_a_short_last_block_takes_none_of_the_widest_places():
    """The last block is always checked; its mean |q| counts its real rows only, so a one-row last block does not
    look widest and push out a block an outlier wrecks (each of the 4 widest stays checked)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 200 * 128 - 127, 8, generator=g)
    for b in (11, 37, 61, 97):
        q[0, 1, b * 128 + 5, 3] = 30.0
    blocks = set((guard_rows(q) // 128).tolist())
    assert {11, 37, 61, 97, 199} <= blocks, sorted(blocks)


def test_an_outlier_in_one_head_of_twelve_is_among_the_widest():
    """Outliers sit in some heads: a block that one head's outlier wrecks is checked even where other blocks span
    more on average over the heads."""
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 12, 200 * 128, 8, generator=g)
    q[0, 0, 11 * 128 + 5, 3] = 300.0          # one head: span ~270
    for b in (37, 61, 97, 120):               # every head: span ~35
        q[0, :, b * 128 + 7, 2] = 30.0
    assert 11 in set((guard_rows(q) // 128).tolist())
