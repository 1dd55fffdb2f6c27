"""TeaCache's decisions (sampling/teacache.py), with a rescaling of x -> x so the sums are the relative changes."""
import numpy as np
import pytest
import torch

from sampling import teacache

IDENTITY = (0, 0, 0, 1, 0)


def calls(cache, changes, total=None, stream=0, agree=None):
    """Run calls whose embedding changes by the given relative L1 amounts; returns which ran the blocks."""
    total = total or len(changes) + 1
    e, out = torch.ones(4, 8), []
    for i, change in enumerate([0.0] + changes):
        e = e * (1 + change)        # |e_new - e| / |e| = change
        run = cache.compute(stream, i, total, e, IDENTITY, (1, 2), agree)
        if run:
            cache.keep(stream, torch.zeros(1, 2))
        out.append(run)
    return out


def test_the_sum_of_changes_decides_and_starts_again_after_a_computed_call():
    # threshold 0.1: 0.06 skips, 0.06 + 0.06 computes, then 0.06 skips again; the first and last calls always run
    assert calls(teacache.TeaCache(0.1, False), [0.06, 0.06, 0.06, 0.5], total=6) == [True, False, True, False,
                                                                                       True]


def test_parallel_ranks_decide_on_the_change_they_agree_on():
    # a rank whose own changes differ (its figures in the last bits, here by much more) decides as the rank whose
    # change it is given, sums included: the 0.06 steps of the test above, whatever this rank measured
    given = iter([0.06, 0.06, 0.06, 0.5])
    assert calls(teacache.TeaCache(0.1, False), [0.5, 0.0, 0.5, 0.0], total=6) == [True, True, False, True, False]
    assert calls(teacache.TeaCache(0.1, False), [0.5, 0.0, 0.5, 0.0], total=6, agree=lambda mine: next(given)) == \
        [True, False, True, False, True]


def test_first_and_last_calls_are_computed_and_retention_keeps_five():
    assert calls(teacache.TeaCache(1e9, False), [0.01] * 7) == [True] + [False] * 6 + [True]
    assert calls(teacache.TeaCache(1e9, True), [0.01] * 7) == [True] * 5 + [False] * 3


def test_streams_keep_their_own_sums_and_counts():
    cache = teacache.TeaCache(1e9, False)
    calls(cache, [0.01] * 3, stream=0)
    calls(cache, [0.01] * 3, stream=1)
    assert (cache.calls, cache.skipped) == (8, 4)


def test_a_new_shape_or_run_starts_over():
    cache = teacache.TeaCache(1e9, False)
    calls(cache, [0.01] * 3, total=10)
    assert cache.compute(0, 4, 10, torch.ones(2, 8), IDENTITY, (1, 2))          # another embedding shape
    assert cache.compute(0, 0, 10, torch.ones(2, 8), IDENTITY, (1, 2))          # call 0: a new run


@pytest.mark.parametrize("args,key", [
    ((False, 1536, 544 * 960, False), ("T2V", "1.3B", False)),
    ((False, 5120, 720 * 1280, True), ("T2V", "14B", True)),
    ((True, 5120, 544 * 960, False), ("I2V", "540P", False)),
    ((True, 5120, 720 * 1280, True), ("I2V", "720P", True)),
])
def test_coefficients_come_from_the_model_and_the_frame_size(args, key):
    assert teacache.coefficients(*args) == teacache.COEFFICIENTS[key]


def test_a_second_call_at_one_step_runs_and_changes_nothing():
    # a sampler's second evaluation, or a guidance pass on the same prompt, at the step just decided
    cache = teacache.TeaCache(1e9, False)
    calls(cache, [0.01] * 3, total=10)
    before = (cache.streams[0].distance, cache.streams[0].previous.clone(), cache.skipped)
    assert cache.compute(0, 3, 10, torch.ones(4, 8) * 7, IDENTITY, (1, 2)) is None
    s = cache.streams[0]
    assert (s.distance, cache.skipped) == (before[0], before[2]) and torch.equal(s.previous, before[1])


def test_release_drops_every_stream():
    cache = teacache.TeaCache(1e9, False)
    calls(cache, [0.01] * 3)
    cache.release()
    assert cache.streams == {}


def test_a_stream_missing_from_the_last_step_is_dropped():
    # a context window that moved: its full-size residual would wait for frames that may not come back
    cache = teacache.TeaCache(1e9, False)
    for i in range(3):
        for stream in ("a", "b") if i == 0 else ("a",):
            cache.compute(stream, i, 10, torch.ones(4, 8), IDENTITY, (1, 2))
        assert set(cache.streams) == ({"a", "b"} if i < 2 else {"a"}), i
    # a sampler that skips step indices (dpm_adaptive): the streams of the step before stay, whichever calls first
    for stream in ("a", "c"):
        cache.compute(stream, 3, 10, torch.ones(4, 8), IDENTITY, (1, 2))
    cache.compute("a", 5, 10, torch.ones(4, 8), IDENTITY, (1, 2))
    assert set(cache.streams) == {"a", "c"}


def test_a_computed_call_lets_go_of_the_old_residual():
    # it keeps a new one when its blocks are done: the old one, held meanwhile, was one more hidden state through
    # every block of the call (and a call that never finishes leaves none, so the next one runs)
    cache = teacache.TeaCache(0.1, False)
    calls(cache, [0.01], total=10)
    assert cache.residual(0) is not None
    assert cache.compute(0, 2, 10, torch.ones(4, 8) * 2, IDENTITY, (1, 2))    # a change of 1.0: runs
    assert cache.residual(0) is None
    assert cache.compute(0, 3, 10, torch.ones(4, 8) * 2, IDENTITY, (1, 2))    # no residual to reuse: runs


def test_rescale_is_skyreels_numpy_polynomial_to_the_bit():
    # SkyReels-V2 rescales with np.poly1d(coefficients)(change); the sums meet the threshold exactly as its do only
    # if every figure is the same float64 (exact equality, no tolerance). Changes: 0 to 0.5, its range in practice.
    changes = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5
    for coeffs in teacache.COEFFICIENTS.values():
        reference = np.poly1d(coeffs)
        assert [teacache.rescale(coeffs, x) for x in changes.tolist()] == [float(reference(x)) for x in
                                                                          changes.tolist()]


def test_the_change_is_measured_in_float32_from_a_bf16_embedding():
    # SkyReels-V2's embedding is float32 (its transformer asserts it); the host's is in the compute dtype, bf16 on a
    # GPU. Measured in bf16, the means and their ratio were rounded (relative error up to 1%): the sum must be the
    # float32 figure of the same values, exactly (IDENTITY coefficients: the sum is the change).
    g = torch.Generator().manual_seed(0)
    first, second = (torch.randn(2, 6, 64, generator=g).to(torch.bfloat16) for _ in range(2))
    cache = teacache.TeaCache(1e9, False)
    assert cache.compute(0, 0, 10, first, IDENTITY, (1, 2))
    cache.keep(0, torch.zeros(1, 2))
    assert cache.compute(0, 1, 10, second, IDENTITY, (1, 2)) is False
    a, b = first.float(), second.float()
    assert cache.streams[0].distance == ((b - a).abs().mean() / a.abs().mean()).item()


def test_a_change_that_is_not_a_number_runs_the_blocks():
    # two all-zero embeddings: 0 / 0. SkyReels-V2 skips only while its sum is below the threshold, so NaN computes
    cache = teacache.TeaCache(1e9, False)
    assert cache.compute(0, 0, 10, torch.zeros(2, 8), IDENTITY, (1, 2))
    cache.keep(0, torch.zeros(1, 2))
    assert cache.compute(0, 1, 10, torch.zeros(2, 8), IDENTITY, (1, 2)) is True


def test_a_residual_of_another_shape_is_not_reused():
    """The same embedding shape but another hidden-state shape (another window of tokens on one stream): the blocks
    run, as the kept residual cannot be added to it."""
    tc, coeffs, e = teacache.TeaCache(1.0, False), (0.0, 0.0, 0.0, 0.0, 0.0), torch.ones(1, 4)
    assert tc.compute("c", 0, 10, e, coeffs, (1, 8, 4)) is True
    tc.keep("c", torch.zeros(1, 8, 4))
    assert tc.compute("c", 1, 10, e, coeffs, (1, 8, 4)) is False     # would skip: nothing changed
    assert tc.compute("c", 2, 10, e, coeffs, (1, 6, 4)) is True
