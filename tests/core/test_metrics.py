"""AUROC, pixel AUROC and AU-PRO against hand-computed values, scikit-learn and slow
references."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference_metrics import reference_au_pro, reference_auroc, reference_pro_curve
from sklearn.metrics import roc_auc_score

from zal3d_core import metrics
from zal3d_core.metrics import (
    UndefinedMetricWarning,
    au_pro,
    auroc,
    pixel_auroc,
    pro_curve,
)


def two_image_case():
    """Image 0 has a 2x2 defect scored 0.9, and image 1 has 20 normal pixels at 0.95."""
    masks = np.zeros((2, 10, 10), bool)
    masks[0, 2:4, 2:4] = True
    maps = np.full((2, 10, 10), 0.5)
    maps[0, 2:4, 2:4] = 0.9
    maps[1, 0:2] = 0.95
    return masks, maps


def random_case():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 32, 32), bool)
    masks[0, 5:12, 5:9] = True
    masks[1, 20:23, 3:30] = True
    maps = rng.random((3, 32, 32)) + 0.8 * masks
    return masks, maps


def random_images(rng, n_images, shape, *, levels=None, nan_share=0.0):
    """Masks with a few rectangles and scores, optionally quantized to force ties."""
    masks = np.zeros((n_images, *shape), bool)
    for i in range(n_images):
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            h, w = rng.integers(1, 5, size=2)
            masks[i, y : y + h, x : x + w] = True
    maps = rng.random(masks.shape) + 0.5 * masks * rng.random()
    if levels is not None:
        maps = np.round(maps * levels) / levels
    maps[rng.random(masks.shape) < nan_share] = np.nan
    return masks, maps


# --------------------------------------------------------------------------- auroc


def test_auroc_reference_value():
    value = auroc([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert value == pytest.approx(8 / 9, abs=1e-12)
    assert round(value, 6) == 0.888889


def test_auroc_bool_labels_and_float32_scores():
    labels = np.array([False, False, True, True, False, True])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9], np.float32)
    assert auroc(labels, scores) == pytest.approx(8 / 9, abs=1e-12)


def test_auroc_all_tied_is_half():
    assert auroc([0, 1, 0, 1, 1], [0.3] * 5) == 0.5


def test_auroc_perfect_and_reversed():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1], [True, True, True]])
def test_auroc_one_class_is_nan(labels):
    with pytest.warns(UndefinedMetricWarning, match="both classes are needed"):
        value = auroc(labels, [0.1, 0.2, 0.3])
    assert np.isnan(value)


def test_auroc_all_nan_scores_raise():
    with pytest.raises(ValueError, match=r"scores contains 4 NaN and 0 infinite"):
        auroc([0, 0, 1, 1], [np.nan] * 4)


def test_auroc_one_inf_score_raises():
    with pytest.raises(ValueError, match=r"scores contains 0 NaN and 1 infinite"):
        auroc([0, 0, 1, 1], [0.1, np.inf, 0.3, 0.4])


def test_auroc_non_binary_labels_listed():
    with pytest.raises(ValueError, match=r"only 0 and 1.*contains 2, 3"):
        auroc([0, 1, 2, 3], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"contains nan"):
        auroc([0, 1, np.nan], [0.1, 0.2, 0.3])


def test_auroc_length_mismatch():
    with pytest.raises(ValueError, match=r"same length, but got 3 labels and 2 scores"):
        auroc([0, 1, 1], [0.1, 0.2])


def test_auroc_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        auroc([], [])


def test_auroc_rejects_2d_and_strings():
    with pytest.raises(ValueError, match=r"labels must be 1-D, but got shape \(2, 2\)"):
        auroc([[0, 1], [1, 0]], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"scores must be 1-D"):
        auroc([0, 1], [[0.1, 0.2]])
    with pytest.raises(TypeError, match="labels must be a bool array"):
        auroc(["a", "b"], [0.1, 0.2])
    with pytest.raises(TypeError, match="scores must be a numeric array"):
        auroc([0, 1], ["a", "b"])


def test_auroc_matches_pair_counting():
    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) * 20) / 20
    assert auroc(labels, scores) == pytest.approx(
        reference_auroc(labels, scores), abs=1e-12
    )


def test_auroc_chunked_walk_matches(monkeypatch):
    rng = np.random.default_rng(2)
    labels = rng.random(500) < 0.4
    scores = np.round(rng.random(500) * 30)
    expected = auroc(labels, scores)
    monkeypatch.setattr(metrics, "_CHUNK", 7)
    assert auroc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert auroc(labels, scores) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )


@settings(max_examples=40, deadline=None)
@given(
    labels=arrays(np.bool_, st.integers(2, 40)),
    data=st.data(),
)
def test_auroc_equals_sklearn(labels, data):
    scores = data.draw(
        arrays(np.float64, labels.shape, elements=st.integers(0, 5).map(float))
    )
    if labels.all() or not labels.any():
        with pytest.warns(UndefinedMetricWarning):
            assert np.isnan(auroc(labels, scores))
        return
    value = auroc(labels, scores)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


# --------------------------------------------------------------------- pixel_auroc


def test_pixel_auroc_matches_sklearn():
    masks, maps = random_case()
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_skips_nan_pixels():
    masks, maps = random_case()
    maps[:, ::3, ::2] = np.nan
    keep = ~np.isnan(maps)
    expected = roc_auc_score(masks[keep], maps[keep])
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_list_of_sizes():
    rng = np.random.default_rng(3)
    masks = [rng.random((5, 7)) < 0.3, rng.random((9, 4)) < 0.3]
    maps = [rng.random((5, 7)), rng.random((9, 4))]
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([m.ravel() for m in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )


def test_pixel_auroc_without_defect_is_nan():
    with pytest.warns(UndefinedMetricWarning, match="0 anomalous"):
        assert np.isnan(pixel_auroc(np.zeros((2, 4, 4)), np.ones((2, 4, 4))))


def test_pixel_auroc_rejects_inf():
    maps = np.ones((1, 4, 4))
    maps[0, 1, 1] = -np.inf
    with pytest.raises(ValueError, match=r"anomaly_maps\[0\] contains 1 infinite"):
        pixel_auroc(np.zeros((1, 4, 4), bool), maps)


# -------------------------------------------------------------------------- au_pro


def test_au_pro_two_image_case():
    masks, maps = two_image_case()
    value = au_pro(masks, maps)
    assert value == pytest.approx(1 - (20 / 196) / 0.3, abs=1e-12)
    assert round(value, 7) == 0.6598639


def test_au_pro_two_image_case_full_range():
    masks, maps = two_image_case()
    assert au_pro(masks, maps, fpr_limit=1.0) == pytest.approx(1 - 20 / 196, abs=1e-12)
    assert round(au_pro(masks, maps, 1.0), 7) == 0.8979592


def test_au_pro_divides_by_limit_not_reached_fpr():
    masks, maps = two_image_case()
    value = au_pro(masks, maps)
    # The area up to 0.3 divided by the FPR of the last curve point below the limit
    # (20/196) would be about 1.94.
    wrong = (0.3 - 20 / 196) / (20 / 196)
    assert wrong == pytest.approx(1.94, abs=0.01)
    assert value <= 1.0
    assert value != pytest.approx(wrong, abs=0.1)


def test_au_pro_perfect_separation_exact():
    rng = np.random.default_rng(4)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 3:6, 4:9] = True
    masks[2, 10:15, 1:3] = True
    maps = rng.random(masks.shape) + 2.0 * masks
    for limit in (0.3, 0.1, 1.0, 0.123):
        assert au_pro(masks, maps, fpr_limit=limit) == 1.0
    # Seven weights of 1/7 add up to 0.9999999999999998 in float64.
    masks = np.zeros((1, 16, 16), bool)
    masks[0, 2, 3:10] = True
    maps = rng.random(masks.shape) + 2.0 * masks
    assert au_pro(masks, maps) == 1.0


def test_au_pro_random_case():
    masks, maps = random_case()
    assert round(au_pro(masks, maps), 7) == 0.9660942
    assert round(au_pro(masks, maps, fpr_limit=1.0), 7) == 0.9898283
    assert au_pro(masks, maps) == pytest.approx(
        reference_au_pro(masks, maps), abs=1e-12
    )


def test_au_pro_good_images_add_false_positives():
    masks, maps = two_image_case()
    assert au_pro(masks[:1], maps[:1]) == 1.0
    assert round(au_pro(masks, maps), 7) == 0.6598639


def test_au_pro_only_good_images_is_nan():
    masks, maps = two_image_case()
    with pytest.warns(UndefinedMetricWarning, match="no defect region exists"):
        value = au_pro(masks[1:], maps[1:])
    assert np.isnan(value)


def test_au_pro_no_normal_pixel_is_nan():
    masks = np.ones((1, 3, 3), bool)
    maps = np.random.default_rng(5).random((1, 3, 3))
    with pytest.warns(UndefinedMetricWarning, match="no normal pixel"):
        assert np.isnan(au_pro(masks, maps))


def test_au_pro_defect_all_nan_is_nan():
    masks, maps = two_image_case()
    maps[masks] = np.nan
    with pytest.warns(UndefinedMetricWarning, match="no defect region"):
        assert np.isnan(au_pro(masks, maps))


def test_au_pro_nan_pixels_are_left_out():
    masks, maps = two_image_case()
    maps[1, 0:2] = np.nan
    assert au_pro(masks, maps) == 1.0


def test_au_pro_region_with_nan_pixels_shrinks():
    # Of a 4-pixel region 2 pixels are NaN and 1 scores high, so PRO at the top
    # threshold is 1/2, not 1/4.
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 1:3, 1:3] = True
    maps = np.full((1, 6, 6), 0.5)
    maps[0, 1, 1:3] = np.nan
    maps[0, 2, 1] = 0.9
    maps[0, 2, 2] = 0.1
    assert au_pro(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_au_pro_regions_are_8_connected():
    # The diagonal pair (1,1)-(2,2) is one region, half of it above 0.9, so PRO is
    # (1/2 + 1)/2 on [0, 1). Three 4-connected regions would give 2/3.
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True
    masks[0, 5, 5:7] = True
    maps = np.full((1, 8, 8), 0.5)
    maps[0, 1, 1] = 0.9
    maps[0, 5, 5:7] = 0.9
    maps[0, 2, 2] = 0.1
    assert au_pro(masks, maps) == pytest.approx(0.75, abs=1e-12)


def test_au_pro_each_region_weighs_the_same():
    # A 1-pixel region fully found and a 20-pixel region missed give PRO 1/2.
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 0, 0] = True
    masks[0, 5:7, 0:10] = True
    maps = np.full((1, 10, 10), 0.5)
    maps[0, 0, 0] = 0.9
    maps[0, 5:7] = 0.1
    assert au_pro(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_au_pro_return_curve():
    masks, maps = random_case()
    value, fpr, pro = au_pro(masks, maps, return_curve=True)
    assert value == au_pro(masks, maps)
    assert fpr[0] == 0.0
    assert pro[0] == 0.0
    assert fpr[-1] == pytest.approx(0.3, abs=1e-15)
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(pro) >= 0)
    assert np.trapezoid(pro, fpr) / 0.3 == pytest.approx(value, abs=1e-12)


def test_au_pro_return_curve_undefined():
    with pytest.warns(UndefinedMetricWarning):
        value, fpr, pro = au_pro(
            np.zeros((1, 3, 3)), np.ones((1, 3, 3)), return_curve=True
        )
    assert np.isnan(value)
    assert fpr.size == 0
    assert pro.size == 0


@pytest.mark.parametrize("limit", [0.02, 0.3, 0.77, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_au_pro_matches_reference(seed, limit):
    rng = np.random.default_rng(seed)
    levels = [None, 10, 40, 3][seed]
    masks, maps = random_images(rng, 3, (12, 11), levels=levels, nan_share=0.1 * seed)
    if not masks.any():
        masks[0, 0, 0] = True
    value = au_pro(masks, maps, fpr_limit=limit)
    assert value == pytest.approx(reference_au_pro(masks, maps, limit), abs=1e-10)


def test_au_pro_list_of_sizes_matches_reference():
    rng = np.random.default_rng(6)
    shapes = [(7, 9), (12, 5), (3, 3)]
    masks = [rng.random(s) < 0.2 for s in shapes]
    maps = [np.round(rng.random(s) * 8) / 8 + 0.3 * m for s, m in zip(shapes, masks)]
    for limit in (0.3, 1.0):
        expected = reference_au_pro(masks, maps, limit)
        assert au_pro(masks, maps, limit) == pytest.approx(expected, abs=1e-10)


def test_au_pro_float32_maps():
    masks, maps = random_case()
    maps32 = maps.astype(np.float32)
    expected = reference_au_pro(masks, maps32.astype(np.float64))
    assert au_pro(masks, maps32) == pytest.approx(expected, abs=1e-10)


def test_au_pro_chunked_walk_matches(monkeypatch):
    rng = np.random.default_rng(7)
    masks, maps = random_images(rng, 4, (16, 16), levels=12, nan_share=0.05)
    masks[0, 3:6, 3:6] = True
    expected_fpr, expected_pro = pro_curve(masks, maps)
    expected = {limit: au_pro(masks, maps, limit) for limit in (0.05, 0.3, 1.0)}
    for chunk in (1, 2, 7, 64):
        monkeypatch.setattr(metrics, "_CHUNK", chunk)
        fpr, pro = pro_curve(masks, maps)
        np.testing.assert_array_equal(fpr, expected_fpr)
        np.testing.assert_allclose(pro, expected_pro, rtol=0, atol=1e-13)
        for limit, value in expected.items():
            assert au_pro(masks, maps, limit) == pytest.approx(value, abs=1e-13)


@settings(max_examples=40, deadline=None)
@given(
    masks=arrays(
        np.bool_, st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))
    ),
    data=st.data(),
    limit=st.floats(0.01, 1.0),
)
def test_au_pro_in_unit_interval(masks, data, limit):
    maps = data.draw(
        arrays(
            np.float64, masks.shape, elements=st.sampled_from([0.0, 0.5, 1.0, np.nan])
        )
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = au_pro(masks, maps, fpr_limit=limit)
        pixel_value = pixel_auroc(masks, maps)
    undefined = [w for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    if np.isnan(value) or np.isnan(pixel_value):
        assert undefined
    if not np.isnan(value):
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(reference_au_pro(masks, maps, limit), abs=1e-10)
    if not np.isnan(pixel_value):
        assert 0.0 <= pixel_value <= 1.0


def test_au_pro_memory_linear_in_pixels():
    rng = np.random.default_rng(8)
    peaks = []
    sizes = []
    for n_images in (20, 80):
        maps = rng.random((n_images, 224, 224), dtype=np.float32)
        masks = np.zeros(maps.shape, bool)
        masks[::2, 50:80, 60:100] = True
        tracemalloc.start()
        au_pro(masks, maps)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        sizes.append(maps.size)
    # Per extra pixel: a float32 score, an int32 code, an intp sort index and a bool.
    slope = (peaks[1] - peaks[0]) / (sizes[1] - sizes[0])
    assert slope < 20.0


# ---------------------------------------------------------------------- pro_curve


def test_pro_curve_two_image_case():
    masks, maps = two_image_case()
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0.0, 20 / 196, 20 / 196, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(pro, [0.0, 0.0, 1.0, 1.0])


def test_pro_curve_matches_reference():
    rng = np.random.default_rng(9)
    masks, maps = random_images(rng, 3, (10, 13), levels=15, nan_share=0.1)
    masks[1, 2:5, 2:5] = True
    fpr, pro = pro_curve(masks, maps)
    ref_fpr, ref_pro = reference_pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, ref_fpr, rtol=0, atol=1e-14)
    np.testing.assert_allclose(pro, ref_pro, rtol=0, atol=1e-12)
    assert fpr[-1] == 1.0
    assert pro[-1] == 1.0


def test_pro_curve_undefined_is_empty():
    with pytest.warns(
        UndefinedMetricWarning, match="no defect.*Returning empty arrays"
    ):
        fpr, pro = pro_curve(np.zeros((1, 4, 4), bool), np.ones((1, 4, 4)))
    assert fpr.size == 0
    assert pro.size == 0


# ---------------------------------------------------------------- bad image inputs


@pytest.mark.parametrize("limit", [0, 0.0, -0.1, 1.5, np.nan, np.inf])
def test_au_pro_rejects_fpr_limit(limit):
    masks, maps = two_image_case()
    with pytest.raises(ValueError, match=r"fpr_limit must be in \(0, 1\]"):
        au_pro(masks, maps, fpr_limit=limit)


def test_au_pro_rejects_fpr_limit_type():
    masks, maps = two_image_case()
    with pytest.raises(TypeError, match="fpr_limit must be a real number"):
        au_pro(masks, maps, fpr_limit="0.3")
    with pytest.raises(TypeError, match="fpr_limit must be a real number"):
        au_pro(masks, maps, fpr_limit=True)


def test_au_pro_shape_mismatch_names_both():
    masks, maps = two_image_case()
    with pytest.raises(
        ValueError, match=r"masks \(2, 10, 10\) and anomaly_maps \(2, 10, 9\)"
    ):
        au_pro(masks, maps[:, :, :9])


def test_au_pro_list_shape_mismatch_names_image():
    masks, maps = two_image_case()
    with pytest.raises(
        ValueError, match=r"masks\[1\] \(10, 10\) and anomaly_maps\[1\] \(10, 8\)"
    ):
        au_pro(list(masks), [maps[0], maps[1][:, :8]])


def test_au_pro_image_count_mismatch():
    masks, maps = two_image_case()
    with pytest.raises(ValueError, match="got 2 masks and 1 anomaly maps"):
        au_pro(list(masks), [maps[0]])


def test_au_pro_rejects_inf():
    masks, maps = two_image_case()
    maps[1, 5, 5] = np.inf
    with pytest.raises(ValueError, match=r"anomaly_maps\[1\] contains 1 infinite"):
        au_pro(masks, maps)


def test_au_pro_rejects_2d_array():
    masks, maps = two_image_case()
    with pytest.raises(ValueError, match=r"single image, pass masks\[None\]"):
        au_pro(masks[0], maps[0])


def test_au_pro_rejects_non_binary_mask():
    masks, maps = two_image_case()
    with pytest.raises(
        ValueError, match=r"masks\[0\] must contain only 0 and 1.*255.*> 0"
    ):
        au_pro(masks.astype(np.uint8) * 255, maps)


def test_au_pro_accepts_01_masks():
    masks, maps = two_image_case()
    assert au_pro(masks.astype(np.uint8), maps) == au_pro(masks, maps)


def test_au_pro_rejects_empty_and_bad_types():
    with pytest.raises(ValueError, match="at least one image"):
        au_pro([], [])
    with pytest.raises(TypeError, match="masks must be an array of shape"):
        au_pro(5, np.ones((1, 2, 2)))
    with pytest.raises(TypeError, match=r"anomaly_maps\[0\] must be a numeric array"):
        au_pro([np.zeros((2, 2), bool)], [np.array([["a", "b"], ["c", "d"]])])


def test_auroc_large_integer_scores():
    # Both scores round to the same float64, but their order decides the AUROC.
    scores = np.array([2**62 + 1, 2**62], np.int64)
    assert auroc([0, 1], scores) == 0.0
    assert auroc([1, 0], scores) == 1.0
    big = np.array([2**63 - 1, 2**63 - 2, 5, 2**63 - 1], np.uint64)
    assert auroc([1, 0, 0, 1], big) == roc_auc_score([1, 0, 0, 1], [3, 2, 1, 3])
