"""greedy_coreset against a float64 NumPy greedy, on hand-built and random banks."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference_bank import covering_radius, reference_greedy_coreset

from zal3d_core._kernels import _coreset
from zal3d_core._numba import num_threads
from zal3d_core.coreset import _run_steps, build_panels, greedy_coreset


def three_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    return centres.repeat(20, axis=0) + 0.1 * rng.standard_normal((60, 2))


def unpack_panels(panels, n_rows):
    """Return the (n_rows, n_dims) features stored in greedy panels."""
    n_blocks, n_dims, block = panels.shape
    return panels.transpose(0, 2, 1).reshape(n_blocks * block, n_dims)[:n_rows]


def run_schedule(
    features, n, blocks_per_round, n_parts=1, start=0, projection_dim=128, seed=0
):
    """Return picks, squared radius and computed (pick, block) pairs of one schedule.

    ``blocks_per_round=1`` updates one block at a time, as lazily as possible. A value
    of at least the block count updates every block at every step, which is the plain
    algorithm: one pass over all rows per pick. ``n_parts > 1`` splits the blocks
    into lane ranges that run in parallel.
    """
    features = np.ascontiguousarray(features)
    panels, _ = build_panels(features, projection_dim, seed)
    selected = np.empty(n, np.intp)
    radius2, pairs = _run_steps(
        panels, len(features), selected, start, False, blocks_per_round, n_parts
    )
    return selected, radius2, pairs


# (blocks per round, lane ranges per block) of the lazy schedules under test.
LAZY_SCHEDULES = [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (2, 3), (3, 4)]


def assert_schedules_agree(features, n, start=0, projection_dim=128):
    """Check that lazy and plain schedules give the same picks and radius bits."""
    n_blocks = -(-len(features) // _coreset.ROW_BLOCK)
    plain, plain_radius2, plain_pairs = run_schedule(
        features, n, n_blocks, 1, start, projection_dim
    )
    assert plain_pairs == n * n_blocks
    for blocks_per_round, n_parts in LAZY_SCHEDULES:
        picks, radius2, pairs = run_schedule(
            features, n, blocks_per_round, n_parts, start, projection_dim
        )
        np.testing.assert_array_equal(picks, plain)
        assert radius2 == plain_radius2
        assert pairs <= plain_pairs
    return plain


def test_three_clusters_one_pick_each():
    features = three_clusters()
    picks = greedy_coreset(features, n=3, start=0)
    assert picks.tolist() == [0, 44, 37]
    assert sorted((picks // 20).tolist()) == [0, 1, 2]
    assert covering_radius(features, picks) == pytest.approx(0.4186, abs=5e-5)
    assert picks.tolist() == reference_greedy_coreset(features, 3).tolist()


def test_ratio_rounding_to_zero_gives_empty():
    bank = np.random.default_rng(0).standard_normal((10, 4))
    picks = greedy_coreset(bank, ratio=0.01)
    assert picks.shape == (0,)
    assert picks.dtype == np.intp
    assert greedy_coreset(bank, n=0).shape == (0,)


def test_ratio_count_rounds_down():
    bank = np.random.default_rng(0).standard_normal((10, 4))
    assert len(greedy_coreset(bank, ratio=0.59)) == 5
    assert len(greedy_coreset(bank, ratio=1.0)) == 10


def test_request_above_bank_size_raises():
    bank = np.random.default_rng(0).standard_normal((10, 4))
    with pytest.raises(
        ValueError, match=r"n=15 requests more rows than features has \(10\)"
    ):
        greedy_coreset(bank, n=15)
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\].*15 rows of 10"):
        greedy_coreset(bank, ratio=1.5)


def test_large_bank_first_picks_and_memory():
    bank = np.random.default_rng(0).standard_normal((20000, 128)).astype(np.float32)
    greedy_coreset(bank[:100], n=3)  # compile before measuring

    tracemalloc.start()
    try:
        picks = greedy_coreset(bank, n=50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert picks[:5].tolist() == [0, 18300, 10504, 17773, 3301]
    # A full float32 distance matrix would take 1.49 GiB; the panels take one bank.
    assert peak < 3 * bank.nbytes, f"peak {peak / 2**20:.1f} MiB"
    assert picks.tolist() == reference_greedy_coreset(bank, 50).tolist()


@pytest.mark.parametrize(
    "n_rows, n_dims, dtype, start",
    [
        (1, 3, np.float64, 0),
        (7, 2, np.float64, 3),
        (1023, 5, np.float32, 0),
        (1025, 5, np.float32, 1024),
        (2500, 16, np.float32, 17),
        (2500, 16, np.float64, 2499),
    ],
)
def test_matches_reference_without_projection(n_rows, n_dims, dtype, start):
    features = np.random.default_rng(n_rows).standard_normal((n_rows, n_dims))
    features = features.astype(dtype)
    n = min(n_rows, 60)
    picks = greedy_coreset(features, n=n, start=start)
    expected = reference_greedy_coreset(features, n, start=start)
    np.testing.assert_array_equal(picks, expected)


small_integer_banks = arrays(
    np.float64,
    st.tuples(st.integers(1, 40), st.integers(1, 4)),
    elements=st.integers(-4, 4).map(float),
)


@settings(max_examples=40, deadline=None)
@given(features=small_integer_banks, data=st.data())
def test_matches_reference_with_ties(features, data):
    # Small integers make every squared distance exact, so ties are real ties and
    # must go to the lowest index, duplicate rows included.
    n = data.draw(st.integers(0, len(features)))
    start = data.draw(st.integers(0, len(features) - 1))
    picks = greedy_coreset(features.astype(np.float32), n=n, start=start)
    if n:
        expected = reference_greedy_coreset(features, n, start=start)
        np.testing.assert_array_equal(picks, expected)
    assert len(set(picks.tolist())) == n


@settings(max_examples=25, deadline=None)
@given(
    features=arrays(
        np.float64,
        st.tuples(st.integers(2, 60), st.integers(1, 5)),
        elements=st.floats(-100, 100, allow_nan=False, width=32),
    )
)
def test_covering_radius_never_grows(features):
    picks = greedy_coreset(features, n=len(features))
    radii = [covering_radius(features, picks[:k]) for k in range(1, len(picks) + 1)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(radii))
    assert radii[-1] == 0.0
    shorter = greedy_coreset(features, n=len(features) // 2)
    np.testing.assert_array_equal(shorter, picks[: len(shorter)])


def test_duplicate_rows_give_distinct_picks():
    features = np.ones((6, 3), np.float32)
    assert greedy_coreset(features, n=6).tolist() == [0, 1, 2, 3, 4, 5]
    assert greedy_coreset(features, n=3, start=4).tolist() == [4, 0, 1]


def test_projection_matches_float64_product():
    features = np.random.default_rng(5).standard_normal((1500, 40)).astype(np.float32)
    panels, projected = build_panels(features, 8, seed=3)
    assert projected
    assert panels.shape == (2, 8, _coreset.ROW_BLOCK)
    assert panels.dtype == np.float32
    matrix = np.random.default_rng(3).standard_normal((40, 8)) / np.sqrt(8)
    expected = features.astype(np.float64) @ matrix.astype(np.float32)
    np.testing.assert_allclose(
        unpack_panels(panels, 1500), expected, rtol=1e-5, atol=1e-5
    )
    assert not panels[1, :, 1500 - _coreset.ROW_BLOCK :].any()


def test_projection_over_several_blas_calls():
    # 9000 rows take three BLAS calls of up to 4096 rows and fill 9 panels.
    features = np.random.default_rng(15).standard_normal((9000, 20)).astype(np.float32)
    panels, projected = build_panels(features, 6, seed=2)
    assert projected
    assert panels.shape == (9, 6, _coreset.ROW_BLOCK)
    matrix = np.random.default_rng(2).standard_normal((20, 6)) / np.sqrt(6)
    expected = features.astype(np.float64) @ matrix.astype(np.float32)
    np.testing.assert_allclose(
        unpack_panels(panels, 9000), expected, rtol=1e-5, atol=1e-5
    )
    assert not panels[8, :, 9000 - 8 * _coreset.ROW_BLOCK :].any()


def test_projected_picks_match_reference():
    features = np.random.default_rng(6).standard_normal((3000, 300)).astype(np.float32)
    picks = greedy_coreset(features, n=40, projection_dim=32, seed=9)
    panels, _ = build_panels(features, 32, seed=9)
    expected = reference_greedy_coreset(unpack_panels(panels, 3000), 40)
    np.testing.assert_array_equal(picks, expected)


def test_no_projection_at_projection_dim():
    features = np.random.default_rng(7).standard_normal((200, 16))
    panels, projected = build_panels(features, 16, seed=0)
    assert not projected
    assert panels.dtype == np.float64
    np.testing.assert_array_equal(unpack_panels(panels, 200), features)


def test_seed_reproducible_and_generator_accepted():
    features = np.random.default_rng(8).standard_normal((2000, 64)).astype(np.float32)
    first = greedy_coreset(features, ratio=0.05, projection_dim=8, seed=4)
    again = greedy_coreset(features, ratio=0.05, projection_dim=8, seed=4)
    other = greedy_coreset(features, ratio=0.05, projection_dim=8, seed=5)
    generator = greedy_coreset(
        features, ratio=0.05, projection_dim=8, seed=np.random.default_rng(4)
    )
    np.testing.assert_array_equal(first, again)
    assert first.tolist() != other.tolist()
    assert len(generator) == 100


def test_thread_count_does_not_change_picks():
    features = np.random.default_rng(9).standard_normal((5000, 200)).astype(np.float32)
    one = greedy_coreset(features, n=300, projection_dim=64, n_jobs=1)
    two = greedy_coreset(features, n=300, projection_dim=64, n_jobs=2)
    np.testing.assert_array_equal(one, two)


def clustered_bank(n_rows, n_dims, n_clusters, seed):
    """Return float32 rows scattered tightly around random centres, in random order."""
    rng = np.random.default_rng(seed)
    centres = 10.0 * rng.standard_normal((n_clusters, n_dims))
    labels = rng.integers(0, n_clusters, n_rows)
    noise = 0.05 * rng.standard_normal((n_rows, n_dims))
    return (centres[labels] + noise).astype(np.float32)


@pytest.mark.parametrize(
    "name, n",
    [
        ("normal float32, 16 dims", 150),
        ("normal float64, 7 dims", 120),
        ("projected 200 to 32 dims", 100),
        ("40 clusters, 12 dims", 200),
        ("integers in [-2, 2], 3 dims", 140),
        ("7 distinct rows repeated", 60),
    ],
)
def test_lazy_schedule_matches_plain(name, n):
    rng = np.random.default_rng(12)
    banks = {
        "normal float32, 16 dims": lambda: rng.standard_normal((3000, 16)).astype(
            np.float32
        ),
        "normal float64, 7 dims": lambda: rng.standard_normal((2500, 7)),
        "projected 200 to 32 dims": lambda: rng.standard_normal((2200, 200)).astype(
            np.float32
        ),
        "40 clusters, 12 dims": lambda: clustered_bank(4100, 12, 40, seed=13),
        "integers in [-2, 2], 3 dims": lambda: rng.integers(-2, 3, (3000, 3)).astype(
            np.float32
        ),
        "7 distinct rows repeated": lambda: np.tile(
            rng.standard_normal((7, 5)).astype(np.float32), (300, 1)
        ),
    }
    features = banks[name]()
    picks = assert_schedules_agree(features, n, start=5, projection_dim=32)
    assert len(set(picks.tolist())) == n
    if name.startswith("integers"):
        # Integer coordinates make every distance exact, so ties are real ties.
        expected = reference_greedy_coreset(features, n, start=5)
        np.testing.assert_array_equal(picks, expected)
    if name.startswith("7 distinct"):
        # After the 7 distinct rows, every row is at distance 0: index order.
        rest = [i for i in range(len(features)) if i not in set(picks[:7].tolist())]
        assert sorted((picks[:7] % 7).tolist()) == list(range(7))
        assert picks[7:].tolist() == rest[: n - 7]


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_rows=st.integers(1025, 3300),
    n_dims=st.integers(1, 9),
    levels=st.integers(1, 4),
    fraction=st.floats(0.0, 1.0),
)
def test_lazy_schedule_matches_plain_property(seed, n_rows, n_dims, levels, fraction):
    # Few integer levels give exact ties across blocks and many duplicate rows.
    rng = np.random.default_rng(seed)
    features = rng.integers(-levels, levels + 1, (n_rows, n_dims)).astype(np.float32)
    n = max(1, int(fraction * min(n_rows, 120)))
    start = int(rng.integers(0, n_rows))
    picks = assert_schedules_agree(features, n, start=start)
    expected = reference_greedy_coreset(features, n, start=start)
    np.testing.assert_array_equal(picks, expected)


def test_lazy_schedule_skips_settled_blocks():
    # Block 0 is spread out, and blocks 1 to 3 are tight clusters far away. After one
    # pick each, the clusters' distances are tiny, so later picks, all in block 0,
    # never need their rows.
    rng = np.random.default_rng(14)
    block = _coreset.ROW_BLOCK
    features = np.empty((4 * block, 4), np.float32)
    features[:block] = 10.0 * rng.standard_normal((block, 4))
    for b in range(1, 4):
        centre = np.array([1000.0 * b, 0.0, 0.0, 0.0])
        features[b * block : (b + 1) * block] = centre + 1e-3 * rng.standard_normal(
            (block, 4)
        )
    n = 200
    lazy, _, pairs = run_schedule(features, n, 1)
    plain = assert_schedules_agree(features, n)
    np.testing.assert_array_equal(lazy, plain)
    assert sorted((lazy[:4] // block).tolist()) == [0, 1, 2, 3]
    assert (lazy[4:] < block).all()
    # Block 0 needs every pick; each cluster needs at most the first few.
    assert pairs <= n + 3 * 8, f"{pairs} of {4 * n} pairs computed"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_dims", [1, 3, 4, 5, 8, 33, 128])
def test_distance_helpers_agree_bitwise(dtype, n_dims):
    rng = np.random.default_rng(n_dims)
    panel = (100.0 * rng.standard_normal((n_dims, 64))).astype(dtype)
    centres = (100.0 * rng.standard_normal((3, n_dims))).astype(dtype)
    exact = ((panel.T[None].astype(np.float64) - centres[:, None]) ** 2).sum(axis=-1)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for lo, hi in [(0, 64), (16, 48), (40, 41)]:
        one = np.empty((3, hi - lo), dtype)
        for j in range(3):
            _coreset._squared_distances_one(panel, lo, hi, centres[j], one[j])
        two = np.empty((2, hi - lo), dtype)
        _coreset._squared_distances_two(panel, lo, hi, centres[:2], two)
        three = np.empty((3, hi - lo), dtype)
        _coreset._squared_distances_three(panel, lo, hi, centres, three)
        np.testing.assert_array_equal(two, one[:2])
        np.testing.assert_array_equal(three, one)
        np.testing.assert_allclose(one, exact[:, lo:hi], rtol=rtol)


def test_thread_count_does_not_change_projection():
    # 4100 columns take 256 passes of 16 columns and 4 single columns. The 2500 rows
    # fill 3 blocks, which 2 threads share unevenly.
    features = np.random.default_rng(10).standard_normal((2500, 4100)).astype(np.float32)
    with num_threads(1):
        one_thread, _ = build_panels(features, 24, seed=0)
    with num_threads(2):
        two_threads, _ = build_panels(features, 24, seed=0)
    np.testing.assert_array_equal(one_thread, two_threads)
    matrix = np.random.default_rng(0).standard_normal((4100, 24)) / np.sqrt(24)
    expected = features.astype(np.float64) @ matrix.astype(np.float32)
    got = unpack_panels(one_thread, 2500)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)


def test_float64_projection_is_rounded_once():
    features = np.random.default_rng(12).standard_normal((300, 37))
    panels, projected = build_panels(features, 5, seed=1)
    assert projected
    assert panels.dtype == np.float32
    matrix = np.random.default_rng(1).standard_normal((37, 5)) / np.sqrt(5)
    expected = (features @ matrix).astype(np.float32)
    # The kernel's float64 sum and the float64 BLAS product differ by far less than
    # a float32 step, so after rounding to float32 they are equal or one step apart.
    got = unpack_panels(panels, 300)
    assert np.all(np.abs(got - expected) <= np.spacing(np.abs(expected)))
    assert np.mean(got == expected) > 0.99


@pytest.mark.parametrize(
    ("row", "column", "value"),
    [(0, 0, np.nan), (1500, 35, np.inf), (2047, 39, -np.inf), (7, 16, np.nan)],
)
def test_projected_features_with_nan_or_inf_raise(row, column, value):
    # Columns 0-31 go through the 16-column passes, 32-39 one at a time.
    features = np.random.default_rng(13).standard_normal((2048, 40)).astype(np.float32)
    features[row, column] = value
    with pytest.raises(
        ValueError, match="features contains NaN or infinite values in 1 of 2048 rows"
    ):
        greedy_coreset(features, n=10, projection_dim=8)


def test_projected_huge_values_raise():
    features = np.random.default_rng(14).standard_normal((50, 40))
    features[49, 3] = -3e20
    with pytest.raises(ValueError, match=r"features contains values up to 3e\+20"):
        greedy_coreset(features, n=5, projection_dim=8)
    features[49, 3] = 1e18
    assert len(greedy_coreset(features, n=5, projection_dim=8)) == 5


def test_large_values_give_scaled_picks_projected():
    # Values of 2**59 (5.8e17) are within the accepted magnitude, but the float32
    # squared distances of such rows, summed over 128 projected dimensions,
    # overflow unless the panels are scaled. A power of two scales them exactly.
    signs = np.random.default_rng(16).choice([-1.0, 1.0], (3000, 1152))
    expected = greedy_coreset(signs, n=20)
    picks = greedy_coreset(signs * 2.0**59, n=20)
    np.testing.assert_array_equal(picks, expected)
    assert expected[:4].tolist() != [0, 1, 2, 3]


def test_large_values_give_scaled_picks_float32():
    # Row 0 is +1 everywhere and row i differs from it in 100 to 128 of its 128
    # columns. At 1.5 * 2**59 (8.6e17) each differing column adds 3e36 to the
    # float32 squared distance, so differences above 113 columns overflow unless
    # the panels are scaled.
    flips = 100 + (np.arange(60) * 7) % 29
    signs = np.ones((60, 128), np.float32)
    for row, count in enumerate(flips[1:], start=1):
        signs[row, :count] = -1.0
    expected = greedy_coreset(signs, n=10)
    picks = greedy_coreset(signs * np.float32(1.5 * 2.0**59), n=10)
    np.testing.assert_array_equal(picks, expected)


def test_zero_picks_still_check_values():
    features = np.ones((30, 200), np.float32)
    features[4, 150] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 30"):
        greedy_coreset(features, n=0)


def test_progress_bar_gives_same_picks():
    pytest.importorskip("tqdm")
    # Three blocks and four kernel calls, so stale blocks carry over between calls.
    features = np.random.default_rng(11).standard_normal((2500, 6))
    plain = greedy_coreset(features, n=200)
    with_bar = greedy_coreset(features, n=200, progress=True)
    np.testing.assert_array_equal(plain, with_bar)


def test_integer_features_accepted():
    features = np.arange(12).reshape(6, 2)
    assert greedy_coreset(features, n=2).tolist() == [0, 5]


def test_invalid_arguments_raise():
    features = np.random.default_rng(0).standard_normal((10, 4))
    with pytest.raises(ValueError, match="exactly one of n .* but both was given"):
        greedy_coreset(features, n=2, ratio=0.5)
    with pytest.raises(ValueError, match="exactly one of n .* but neither was given"):
        greedy_coreset(features)
    with pytest.raises(
        ValueError, match=r"start must be a row index in \[0, 10\), but got 10"
    ):
        greedy_coreset(features, n=2, start=10)
    with pytest.raises(
        ValueError, match=r"start must be a row index in \[0, 10\), but got -1"
    ):
        greedy_coreset(features, n=2, start=-1)
    with pytest.raises(ValueError, match="projection_dim must be >= 1, but got 0"):
        greedy_coreset(features, n=2, projection_dim=0)
    with pytest.raises(ValueError, match="n must be >= 0, but got -1"):
        greedy_coreset(features, n=-1)
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\], but got -0.1"):
        greedy_coreset(features, ratio=-0.1)
    with pytest.raises(TypeError, match="n must be an int, but got float 2.5"):
        greedy_coreset(features, n=2.5)
    with pytest.raises(TypeError, match="ratio must be a real number, but got str"):
        greedy_coreset(features, ratio="0.1")
    with pytest.raises(TypeError, match="progress must be a bool"):
        greedy_coreset(features, n=2, progress=1)


def test_invalid_features_raise():
    features = np.random.default_rng(0).standard_normal((10, 4))
    with_nan = features.copy()
    with_nan[3, 1] = np.nan
    with_inf = features.copy()
    with_inf[[2, 5], 0] = np.inf
    with pytest.raises(
        ValueError, match="features contains NaN or infinite values in 1 of 10"
    ):
        greedy_coreset(with_nan, n=2)
    with pytest.raises(
        ValueError, match="features contains NaN or infinite values in 2 of 10"
    ):
        greedy_coreset(with_inf, n=2)
    with pytest.raises(
        ValueError, match=r"features must have shape \(N, D\), but got \(10,\)"
    ):
        greedy_coreset(features[:, 0], n=2)
    with pytest.raises(
        ValueError,
        match=r"features must have at least 1 row\(s\), but got shape \(0, 4\)",
    ):
        greedy_coreset(np.empty((0, 4)), n=0)
    with pytest.raises(TypeError, match="features must be a numeric array"):
        greedy_coreset("features", n=2)


def test_huge_feature_values_are_rejected():
    features = np.random.default_rng(0).standard_normal((20, 4)) * 1e154
    with pytest.raises(ValueError, match="features contains values up to .* at most 1e\\+18"):
        greedy_coreset(features, n=5)


@pytest.mark.parametrize(
    ("exponent", "dtype", "projection_dim"),
    [
        (-100, np.float32, 128),  # float32 squared differences underflow
        (-560, np.float64, 128),  # float64 squared differences underflow
        (-100, np.float64, 8),  # projected rows underflow when rounded to float32
        (-1000, np.float64, 8),
        (-100, np.float32, 8),  # float32 products lose bits in the projection
    ],
)
def test_small_values_give_scaled_picks(exponent, dtype, projection_dim):
    # A power of two scales every value exactly, so the picks equal those of the
    # unscaled rows instead of falling to index order.
    features = np.random.default_rng(17).standard_normal((3000, 20)).astype(dtype)
    expected = greedy_coreset(features, n=12, projection_dim=projection_dim)
    small = np.ldexp(features, exponent)
    assert np.all(small[np.abs(features) > 1e-3] != 0)
    picks = greedy_coreset(small, n=12, projection_dim=projection_dim)
    np.testing.assert_array_equal(picks, expected)
    assert expected[:4].tolist() != [0, 1, 2, 3]


def test_all_zero_rows_pick_in_index_order():
    picks = greedy_coreset(np.zeros((40, 300), np.float32), n=5)
    assert picks.tolist() == [0, 1, 2, 3, 4]


def test_ratio_above_one_names_unrounded_request():
    with pytest.raises(ValueError, match=r"got 1\.01, which requests 50\.5 rows of 50"):
        greedy_coreset(np.zeros((50, 3)), ratio=1.01)


def test_zero_picks_still_check_seed():
    with pytest.raises(TypeError, match="seed"):
        greedy_coreset(np.zeros((10, 3)), n=0, seed="abc")
