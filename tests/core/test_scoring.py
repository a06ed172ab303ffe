"""nearest_neighbor_scores against brute-force cdist, anomaly maps against a loop."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference_bank import reference_bilinear, reference_scores
from scipy import ndimage

from zal3d_core import scoring
from zal3d_core.scoring import anomaly_map, image_score, nearest_neighbor_scores

TRIANGLE_BANK = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
TRIANGLE_QUERIES = np.array([[0.1, 0.0], [2.0, 1.5]])


def test_support_larger_than_bank_is_clamped():
    scores, distances, nearest, support = nearest_neighbor_scores(
        TRIANGLE_QUERIES, TRIANGLE_BANK, n_reweight=9, return_details=True
    )
    assert support.shape == (2, 3)
    assert distances[1] == pytest.approx(1.8027756, abs=1e-7)
    assert nearest[1] == 1
    assert support[1].tolist() == [1, 0, 2]
    assert scores[1] / distances[1] == pytest.approx(0.7676319, abs=1e-6)
    assert scores[1] == pytest.approx(1.3838680, rel=1e-6)
    assert scores.max() == pytest.approx(1.3838680, rel=1e-6)
    assert scores.dtype == np.float32


def test_no_reweighting_scores_nearest_distance():
    scores, distances, _, support = nearest_neighbor_scores(
        TRIANGLE_QUERIES, TRIANGLE_BANK, n_reweight=1, return_details=True
    )
    assert support.shape == (2, 1)
    np.testing.assert_array_equal(scores, distances.astype(np.float32))
    one_row = nearest_neighbor_scores(
        TRIANGLE_QUERIES, TRIANGLE_BANK[1:2], n_reweight=3
    )
    expected = np.sqrt(((TRIANGLE_QUERIES - TRIANGLE_BANK[1]) ** 2).sum(axis=1))
    np.testing.assert_allclose(one_row, expected, rtol=1e-7)


@pytest.mark.parametrize(
    "n_bank, n_queries, n_dims, n_reweight, block_size, dtype",
    [
        (1, 5, 3, 3, None, np.float64),
        (2, 5, 3, 3, None, np.float64),
        (50, 40, 8, 3, 7, np.float64),
        (300, 120, 33, 9, 64, np.float32),
        (1000, 257, 64, 3, None, np.float32),
        (700, 300, 16, 1, 100, np.float32),
    ],
)
def test_matches_brute_force(n_bank, n_queries, n_dims, n_reweight, block_size, dtype):
    rng = np.random.default_rng(n_bank + n_queries)
    bank = rng.standard_normal((n_bank, n_dims)).astype(dtype)
    queries = rng.standard_normal((n_queries, n_dims)).astype(dtype)
    scores, distances, nearest, support = nearest_neighbor_scores(
        queries, bank, n_reweight, return_details=True, block_size=block_size
    )
    ref_scores, ref_distances, ref_nearest, ref_support = reference_scores(
        queries, bank, n_reweight
    )
    np.testing.assert_array_equal(nearest, ref_nearest)
    np.testing.assert_array_equal(support, ref_support)
    np.testing.assert_allclose(distances, ref_distances, rtol=1e-12)
    np.testing.assert_allclose(scores, ref_scores, rtol=2e-7)


small_integer_rows = arrays(
    np.float64,
    st.tuples(st.integers(1, 30), st.just(3)),
    elements=st.integers(-3, 3).map(float),
)


@settings(max_examples=40, deadline=None)
@given(
    bank=small_integer_rows, queries=small_integer_rows, n_reweight=st.integers(1, 5)
)
def test_ties_match_brute_force(bank, queries, n_reweight):
    # Integer coordinates make distances exact, so ties are real and go to the
    # lowest index, duplicate bank rows included.
    scores, distances, nearest, support = nearest_neighbor_scores(
        queries.astype(np.float32), bank, n_reweight, return_details=True, block_size=4
    )
    ref_scores, ref_distances, ref_nearest, ref_support = reference_scores(
        queries, bank, n_reweight
    )
    np.testing.assert_array_equal(nearest, ref_nearest)
    np.testing.assert_array_equal(support, ref_support)
    np.testing.assert_allclose(distances, ref_distances, rtol=1e-12)
    np.testing.assert_allclose(scores, ref_scores, rtol=2e-7, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(
    bank=arrays(
        st.sampled_from([np.float32, np.float64]),
        st.tuples(st.integers(1, 80), st.integers(1, 12)),
        elements=st.floats(-1e3, 1e3, allow_nan=False, width=32),
    ),
    n_reweight=st.integers(1, 4),
)
def test_bank_against_itself_scores_zero(bank, n_reweight):
    scores, distances, _, _ = nearest_neighbor_scores(
        bank, bank, n_reweight, return_details=True, block_size=16
    )
    assert (distances == 0).all()
    assert (scores == 0).all()


def test_tiny_values_find_self_match():
    # The float32 product 1.2e-38 * 1.2e-38 underflows to 0, so four zero rows rank
    # ahead of row 0 in the float32 pass, and four candidates leave row 0 out.
    bank = np.array([[1.1754944e-38], [0.0], [0.0], [0.0], [0.0]], np.float32)
    _, distances, nearest, _ = nearest_neighbor_scores(
        bank, bank, 1, return_details=True
    )
    assert nearest.tolist() == [0, 1, 1, 1, 1]
    assert (distances == 0).all()


def near_duplicate_bank():
    rng = np.random.default_rng(3)
    base = 10 * rng.standard_normal(256)
    cluster = base + 1e-5 * rng.standard_normal((60, 256))
    others = 10 * rng.standard_normal((100, 256))
    return np.vstack([others, cluster]).astype(np.float32)


def test_near_duplicates_match_brute_force(caplog):
    # 60 rows closer to each other than float32 rounding of their dot products.
    bank = near_duplicate_bank()
    caplog.set_level("DEBUG", logger="zal3d_core.scoring")
    scores, distances, nearest, support = nearest_neighbor_scores(
        bank, bank, 3, return_details=True
    )
    ref_scores, _, ref_nearest, ref_support = reference_scores(bank, bank, 3)
    assert "searching again with 64" in caplog.text
    np.testing.assert_array_equal(nearest, np.arange(len(bank)))
    np.testing.assert_array_equal(nearest, ref_nearest)
    np.testing.assert_array_equal(support, ref_support)
    assert (distances == 0).all()
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


def test_float64_scan_beyond_max_candidates(monkeypatch, caplog):
    bank = near_duplicate_bank()
    queries = bank[95:120] + np.float32(1e-6)
    monkeypatch.setattr(scoring, "MAX_CANDIDATES", 8)
    caplog.set_level("INFO", logger="zal3d_core.scoring")
    scores, distances, nearest, support = nearest_neighbor_scores(
        queries, bank, 4, return_details=True
    )
    ref_scores, ref_distances, ref_nearest, ref_support = reference_scores(
        queries, bank, 4
    )
    assert "scanning the bank in float64" in caplog.text
    np.testing.assert_array_equal(nearest, ref_nearest)
    np.testing.assert_array_equal(support, ref_support)
    np.testing.assert_allclose(distances, ref_distances, rtol=1e-12)
    np.testing.assert_allclose(scores, ref_scores, rtol=2e-7)


def test_float64_bank_distances_use_float64_values():
    # 1 + 1e-12 is 1.0 in float32, so only the float64 values separate these rows.
    bank = np.array([[1.0, 0.0], [1.0 + 1e-12, 0.0], [5.0, 5.0]])
    distances = nearest_neighbor_scores(bank, bank, return_details=True)[1]
    np.testing.assert_array_equal(distances, [0.0, 0.0, 0.0])
    query = np.array([[1.0 + 1e-12, 0.0]])
    _, distances, nearest, _ = nearest_neighbor_scores(query, bank, return_details=True)
    assert nearest.tolist() == [1]
    assert distances[0] == 0.0


def test_scores_independent_of_threads_and_blocks():
    rng = np.random.default_rng(12)
    bank = rng.standard_normal((3000, 48)).astype(np.float32)
    queries = rng.standard_normal((500, 48)).astype(np.float32)
    baseline = nearest_neighbor_scores(queries, bank, 3, return_details=True, n_jobs=1)
    variants = [
        nearest_neighbor_scores(queries, bank, 3, return_details=True, n_jobs=2),
        nearest_neighbor_scores(queries, bank, 3, return_details=True, block_size=97),
        nearest_neighbor_scores(queries, bank, 3, return_details=True, block_size=333),
    ]
    for variant in variants:
        for expected, actual in zip(baseline, variant, strict=True):
            np.testing.assert_array_equal(actual, expected)


def test_memory_stays_bounded_for_large_bank():
    rng = np.random.default_rng(13)
    bank = rng.standard_normal((30000, 32)).astype(np.float32)
    queries = rng.standard_normal((2000, 32)).astype(np.float32)
    nearest_neighbor_scores(queries[:5], bank[:50])  # compile before measuring

    tracemalloc.start()
    try:
        scores = nearest_neighbor_scores(queries, bank, 3, block_size=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The full float32 distance matrix would take 229 MiB.
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    ref_scores = reference_scores(queries[:200], bank, 3)[0]
    np.testing.assert_allclose(scores[:200], ref_scores, rtol=2e-7)


def test_empty_queries_give_empty_results():
    scores, distances, nearest, support = nearest_neighbor_scores(
        np.empty((0, 2)), TRIANGLE_BANK, n_reweight=2, return_details=True
    )
    assert scores.shape == (0,)
    assert scores.dtype == np.float32
    assert distances.shape == (0,)
    assert nearest.shape == (0,)
    assert support.shape == (0, 2)


def test_invalid_scoring_arguments_raise():
    with pytest.raises(
        ValueError, match=r"queries must have as many columns as bank \(2\)"
    ):
        nearest_neighbor_scores(np.zeros((4, 3)), TRIANGLE_BANK)
    with pytest.raises(ValueError, match="bank must have at least 1 row"):
        nearest_neighbor_scores(TRIANGLE_QUERIES, np.empty((0, 2)))
    with pytest.raises(
        ValueError, match="bank contains NaN or infinite values in 1 of 3"
    ):
        nearest_neighbor_scores(TRIANGLE_QUERIES, [[0, 0], [np.nan, 1], [2, 2]])
    with pytest.raises(
        ValueError, match="queries contains NaN or infinite values in 1 of 2"
    ):
        nearest_neighbor_scores([[0, 0], [np.inf, 1]], TRIANGLE_BANK)
    with pytest.raises(ValueError, match=r"queries must have shape \(N, D\)"):
        nearest_neighbor_scores([0.0, 1.0], TRIANGLE_BANK)
    with pytest.raises(ValueError, match="n_reweight must be >= 1, but got 0"):
        nearest_neighbor_scores(TRIANGLE_QUERIES, TRIANGLE_BANK, n_reweight=0)
    with pytest.raises(ValueError, match="block_size must be >= 1, but got 0"):
        nearest_neighbor_scores(TRIANGLE_QUERIES, TRIANGLE_BANK, block_size=0)
    with pytest.raises(TypeError, match="n_reweight must be an int"):
        nearest_neighbor_scores(TRIANGLE_QUERIES, TRIANGLE_BANK, n_reweight="3")
    with pytest.raises(TypeError, match="return_details must be a bool"):
        nearest_neighbor_scores(TRIANGLE_QUERIES, TRIANGLE_BANK, return_details=1)
    with pytest.raises(TypeError, match="bank must be a numeric array"):
        nearest_neighbor_scores(TRIANGLE_QUERIES, None)


def test_map_bilinear_hand_computed():
    result = anomaly_map([[0.0, 1.0], [2.0, 3.0]], (2, 2), (4, 4), sigma=0)
    expected = [
        [0.0, 0.25, 0.75, 1.0],
        [0.5, 0.75, 1.25, 1.5],
        [1.5, 1.75, 2.25, 2.5],
        [2.0, 2.25, 2.75, 3.0],
    ]
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == np.float32


@pytest.mark.parametrize(
    "grid, shape",
    [((1, 1), (3, 5)), ((3, 4), (7, 9)), ((28, 28), (224, 224)), ((5, 3), (4, 2))],
)
def test_map_matches_reference_bilinear(grid, shape):
    scores = np.random.default_rng(sum(grid)).random(grid)
    result = anomaly_map(scores.ravel(), grid, shape, sigma=0)
    np.testing.assert_allclose(
        result, reference_bilinear(scores, shape), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("grid, shape", [((28, 28), (224, 224)), ((3, 5), (10, 7))])
def test_map_matches_torch_interpolate(grid, shape):
    torch = pytest.importorskip("torch")
    scores = np.random.default_rng(1).random(grid).astype(np.float32)
    tensor = torch.from_numpy(scores)[None, None]
    expected = torch.nn.functional.interpolate(
        tensor, size=shape, mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(
        anomaly_map(scores, grid, shape, sigma=0), expected, atol=1e-6
    )


def test_map_blur_is_scipy_gaussian():
    scores = np.random.default_rng(2).random((28, 28))
    expected = ndimage.gaussian_filter(
        reference_bilinear(scores, (224, 224)), 4.0, mode="reflect", truncate=4.0
    )
    result = anomaly_map(scores, (28, 28), (224, 224))
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-7)
    constant = anomaly_map(np.full(16, 0.7), (4, 4), (32, 32), sigma=2.5)
    np.testing.assert_allclose(constant, 0.7, rtol=1e-6)


def test_map_fills_empty_patches_with_minimum():
    scores = np.array([[0.5, np.nan], [0.2, 0.9]])
    filled = np.array([[0.5, 0.2], [0.2, 0.9]])
    np.testing.assert_array_equal(
        anomaly_map(scores, (2, 2), (8, 8), sigma=1.0),
        anomaly_map(filled, (2, 2), (8, 8), sigma=1.0),
    )
    assert not np.isnan(anomaly_map(scores, (2, 2), (8, 8))).any()


@settings(max_examples=25, deadline=None)
@given(valid=arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_map_nan_exactly_off_valid(valid):
    scores = np.arange(6, dtype=float)
    result = anomaly_map(scores, (2, 3), valid.shape, valid)
    np.testing.assert_array_equal(np.isnan(result), ~valid)
    expected = np.nan if not valid.any() else float(result[valid].max())
    assert image_score(result) == pytest.approx(expected, nan_ok=True)


def test_map_all_empty_patches_give_nan():
    result = anomaly_map(np.full((2, 2), np.nan), (2, 2), (5, 6))
    assert result.shape == (5, 6)
    assert np.isnan(result).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(image_score(result))


def test_image_score_is_nanmax():
    assert image_score([[0.1, np.nan], [0.7, 0.3]]) == pytest.approx(0.7)
    assert isinstance(image_score(np.zeros((2, 2), np.float32)), float)


def test_invalid_map_arguments_raise():
    scores = np.zeros(6)
    with pytest.raises(
        ValueError, match=r"patch_scores must have shape \(6,\) or \(2, 3\)"
    ):
        anomaly_map(np.zeros(5), (2, 3), (8, 8))
    with pytest.raises(ValueError, match="patch_scores contains infinite values"):
        anomaly_map([0.0, np.inf, 0, 0, 0, 0], (2, 3), (8, 8))
    with pytest.raises(ValueError, match=r"valid must have shape \(8, 8\)"):
        anomaly_map(scores, (2, 3), (8, 8), np.ones((8, 7), bool))
    with pytest.raises(
        TypeError, match="valid must be a boolean array, but got dtype float64"
    ):
        anomaly_map(scores, (2, 3), (8, 8), np.ones((8, 8)))
    with pytest.raises(
        ValueError, match="sigma must be a finite number >= 0, but got -1.0"
    ):
        anomaly_map(scores, (2, 3), (8, 8), sigma=-1.0)
    with pytest.raises(ValueError, match="image_shape must be >= 1, but got 0"):
        anomaly_map(scores, (2, 3), (0, 8))
    with pytest.raises(TypeError, match="patch_grid must be a pair of ints"):
        anomaly_map(scores, 6, (8, 8))
    with pytest.raises(TypeError, match="patch_scores must be a numeric array"):
        anomaly_map("scores", (2, 3), (8, 8))


@pytest.mark.parametrize(
    ("exponent", "dtype"),
    [(-100, np.float32), (-100, np.float64), (-480, np.float64)],
)
def test_small_values_give_scaled_results(exponent, dtype):
    # Float32 products of such values underflow. The search scales its float32
    # copies by a power of two, so nearest rows and supports equal those of the
    # unscaled inputs and the distances scale exactly.
    rng = np.random.default_rng(31)
    bank = rng.standard_normal((3000, 32)).astype(dtype)
    queries = rng.standard_normal((300, 32)).astype(dtype)
    scores, distances, nearest, support = nearest_neighbor_scores(
        queries, bank, 3, return_details=True
    )
    small = nearest_neighbor_scores(
        np.ldexp(queries, exponent), np.ldexp(bank, exponent), 3, return_details=True
    )
    np.testing.assert_array_equal(small[2], nearest)
    np.testing.assert_array_equal(small[3], support)
    np.testing.assert_array_equal(small[1], np.ldexp(distances, exponent))


def test_underflow_bound_covers_subnormal_inputs():
    # Values near the smallest float32 subnormal: the float32 copies keep few bits,
    # so the bound must send the queries on to exact re-ranking.
    rng = np.random.default_rng(32)
    bank = rng.standard_normal((500, 8)) * 1e-44
    queries = rng.standard_normal((50, 8)) * 1e-44
    _, distances, nearest, _ = nearest_neighbor_scores(queries, bank, 1, return_details=True)
    d2 = ((queries[:, None, :] - bank[None, :, :]) ** 2).sum(axis=-1)
    np.testing.assert_array_equal(nearest, d2.argmin(axis=1))
    np.testing.assert_allclose(distances, np.sqrt(d2.min(axis=1)), rtol=1e-12)


def test_tiny_features_raise():
    bank = np.full((4, 3), 1e-160)
    with pytest.raises(ValueError, match=r"no value above 1e-150 in magnitude \(the largest is 1e-160\)"):
        nearest_neighbor_scores(bank[:2], bank)
    zeros = np.zeros((4, 3))
    np.testing.assert_array_equal(nearest_neighbor_scores(zeros[:2], zeros), [0.0, 0.0])
