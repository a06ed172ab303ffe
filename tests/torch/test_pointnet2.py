"""Farthest point sampling, ball query and the PointNet++ encoder vs slow references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial import cKDTree

torch = pytest.importorskip("torch")

from zal3d_torch.pointnet2 import (
    PointNet2Encoder,
    SetAbstraction,
    ball_query,
    farthest_point_sample,
    group,
)


def fps_reference(points: np.ndarray, n_samples: int, start: int) -> list[int]:
    """Run farthest point sampling with plain loops; ties go to the lowest index."""
    picked = [start]
    while len(picked) < n_samples:
        best_index, best_d2 = -1, -1.0
        for i, point in enumerate(points):
            d2 = min(float(((point - points[j]) ** 2).sum()) for j in picked)
            if d2 > best_d2:
                best_index, best_d2 = i, d2
        picked.append(best_index)
    return picked


def ball_reference(
    points: np.ndarray, centre: np.ndarray, radius: float, n_sample: int
):
    """Return (indices, count) of one ball, sorted by (distance, index) and padded."""
    d2 = [float(((point - centre) ** 2).sum()) for point in points]
    inside = sorted((d, i) for i, d in enumerate(d2) if d <= radius * radius)
    if not inside:
        nearest = min((d, i) for i, d in enumerate(d2))[1]
        return [nearest] * n_sample, 0
    indices = [i for _, i in inside][:n_sample]
    indices += [indices[0]] * (n_sample - len(indices))
    return indices, len(inside)


# Coordinates on a grid of step 0.5 make every squared distance exact in float64, so
# ties in distance and points exactly on the ball's boundary are common and exact.
grid_clouds = st.integers(1, 3).flatmap(
    lambda batch: st.integers(1, 10).flatmap(
        lambda n: arrays(np.int64, (batch, n, 3), elements=st.integers(-4, 4))
    )
)


# --- ball query -----------------------------------------------------------------


def test_ball_query_axis_reference_case():
    xyz = torch.zeros(1, 6, 3)
    xyz[0, :, 0] = torch.arange(6.0)
    centres = torch.tensor([[[0.1, 0.0, 0.0], [2.5, 0.0, 0.0], [100.0, 0.0, 0.0]]])

    idx, count = ball_query(xyz, centres, 1.5, 4)

    assert idx.dtype == torch.long
    assert idx.tolist() == [[[0, 1, 0, 0], [2, 3, 1, 4], [5, 5, 5, 5]]]
    assert count.tolist() == [[2, 4, 0]]
    # scipy includes the points at exactly 1.5 too: [0, 1], [1, 2, 3, 4] and [].
    scipy_balls = cKDTree(xyz[0].numpy()).query_ball_point(centres[0].numpy(), 1.5)
    assert [sorted(ball) for ball in scipy_balls] == [[0, 1], [1, 2, 3, 4], []]
    for s, ball in enumerate(scipy_balls):
        n_in = int(count[0, s])
        assert sorted(set(idx[0, s, :n_in].tolist())) == sorted(ball)


@settings(max_examples=40, deadline=None)
@given(
    cloud=grid_clouds,
    data=st.data(),
    radius=st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]),
    n_sample=st.integers(1, 12),
)
def test_ball_query_matches_reference(cloud, data, radius, n_sample):
    points = cloud * 0.5
    batch, n_points, _ = points.shape
    n_centres = data.draw(st.integers(1, 5))
    # Half the centres are points of the cloud, the others arbitrary grid positions.
    chosen = data.draw(
        arrays(np.int64, (batch, n_centres), elements=st.integers(0, n_points - 1))
    )
    free = (
        data.draw(arrays(np.int64, (batch, n_centres, 3), elements=st.integers(-6, 6)))
        * 0.5
    )
    use_point = np.arange(n_centres) % 2 == 0
    centres = np.where(
        use_point[None, :, None], np.take_along_axis(points, chosen[..., None], 1), free
    )

    idx, count = ball_query(
        torch.from_numpy(points), torch.from_numpy(centres), radius, n_sample
    )

    assert idx.shape == (batch, n_centres, n_sample)
    assert count.shape == (batch, n_centres)
    assert int(idx.min()) >= 0
    assert int(idx.max()) < n_points
    for b in range(batch):
        balls = cKDTree(points[b]).query_ball_point(centres[b], radius)
        for s in range(n_centres):
            expected_idx, expected_count = ball_reference(
                points[b], centres[b, s], radius, n_sample
            )
            assert idx[b, s].tolist() == expected_idx
            assert int(count[b, s]) == expected_count
            assert int(count[b, s]) == len(balls[s])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ball_query_random_floats(seed):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((2, 200, 3))
    centres = rng.standard_normal((2, 30, 3))
    idx, count = ball_query(torch.from_numpy(points), torch.from_numpy(centres), 0.7, 9)
    for b in range(2):
        for s in range(30):
            expected_idx, expected_count = ball_reference(
                points[b], centres[b, s], 0.7, 9
            )
            assert idx[b, s].tolist() == expected_idx
            assert int(count[b, s]) == expected_count


def test_ball_query_more_samples_than_points():
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [5, 0, 0]]])
    idx, count = ball_query(xyz, torch.tensor([[[0.2, 0.0, 0.0]]]), 2.0, 6)
    assert idx.tolist() == [[[0, 1, 0, 0, 0, 0]]]
    assert count.tolist() == [[2]]


def test_ball_query_blocks_match_one_block(monkeypatch):
    from zal3d_torch import pointnet2

    rng = np.random.default_rng(5)
    xyz = torch.from_numpy(rng.standard_normal((2, 50, 3)))
    centres = torch.from_numpy(rng.standard_normal((2, 23, 3)))
    whole = ball_query(xyz, centres, 0.8, 5)
    monkeypatch.setattr(pointnet2, "_BALL_QUERY_PAIRS", 7 * 2 * 50)
    blocks = ball_query(xyz, centres, 0.8, 5)
    assert torch.equal(whole[0], blocks[0])
    assert torch.equal(whole[1], blocks[1])


def test_ball_query_no_centres():
    idx, count = ball_query(torch.rand(2, 5, 3), torch.rand(2, 0, 3), 0.5, 3)
    assert idx.shape == (2, 0, 3)
    assert count.shape == (2, 0)


def test_ball_query_rejects_bad_input():
    xyz = torch.rand(2, 5, 3)
    with pytest.raises(
        ValueError, match=r"radius must be a finite number > 0, but got 0.0"
    ):
        ball_query(xyz, xyz, 0.0, 3)
    with pytest.raises(TypeError, match="radius must be a real number"):
        ball_query(xyz, xyz, "1", 3)
    with pytest.raises(ValueError, match="n_sample must be >= 1, but got 0"):
        ball_query(xyz, xyz, 1.0, 0)
    with pytest.raises(ValueError, match=r"batch size of xyz \(2\).*\(1, 5, 3\)"):
        ball_query(xyz, xyz[:1], 1.0, 3)
    with pytest.raises(ValueError, match=r"dtype and device of xyz \(torch.float32"):
        ball_query(xyz, xyz.double(), 1.0, 3)
    with pytest.raises(
        ValueError, match=r"centres must have shape \(B, S, 3\).*\(2, 5, 2\)"
    ):
        ball_query(xyz, xyz[..., :2], 1.0, 3)
    with pytest.raises(ValueError, match="N is 0"):
        ball_query(xyz[:, :0], xyz, 1.0, 3)
    bad = xyz.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="xyz contains 1 NaN or infinite values"):
        ball_query(bad, xyz, 1.0, 3)
    with pytest.raises(TypeError, match="xyz must be a torch.Tensor"):
        ball_query(xyz.numpy(), xyz, 1.0, 3)


# --- farthest point sampling ----------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(cloud=grid_clouds, data=st.data())
def test_fps_matches_reference(cloud, data):
    points = cloud * 0.5
    batch, n_points, _ = points.shape
    n_samples = data.draw(st.integers(1, n_points))
    starts = data.draw(
        arrays(np.int64, (batch,), elements=st.integers(0, n_points - 1))
    )

    picked = farthest_point_sample(
        torch.from_numpy(points), n_samples, torch.from_numpy(starts)
    )

    assert picked.shape == (batch, n_samples)
    assert picked.dtype == torch.long
    for b in range(batch):
        assert picked[b].tolist() == fps_reference(points[b], n_samples, int(starts[b]))


@pytest.mark.parametrize("seed", [0, 1])
def test_fps_random_floats_and_default_start(seed):
    points = np.random.default_rng(seed).standard_normal((3, 80, 3))
    picked = farthest_point_sample(torch.from_numpy(points), 20)
    for b in range(3):
        assert picked[b].tolist() == fps_reference(points[b], 20, 0)
    again = farthest_point_sample(torch.from_numpy(points), 20)
    assert torch.equal(picked, again)


def test_fps_int_start_and_float32():
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [4, 0, 0]]] * 2)
    assert farthest_point_sample(xyz, 3).tolist() == [[0, 3, 1]] * 2
    # After x=3 and x=0, points 1 and 3 tie at squared distance 1: the lower wins.
    assert farthest_point_sample(xyz, 3, start=2).tolist() == [[2, 0, 1]] * 2


def test_fps_duplicated_points():
    # Four distinct locations, each stored three times, as in a padded patch.
    distinct = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 3, 0], [0, 0, 7]])
    xyz = distinct.repeat(3, 1)[None]
    picked = farthest_point_sample(xyz, 7)[0].tolist()
    assert sorted(picked[:4]) == [0, 1, 2, 3]
    assert picked[4:] == [0, 0, 0]


def test_fps_rejects_bad_input():
    xyz = torch.rand(2, 5, 3)
    with pytest.raises(
        ValueError,
        match=r"n_samples must be <= the number of points per cloud \(5\), but got 6",
    ):
        farthest_point_sample(xyz, 6)
    with pytest.raises(ValueError, match="n_samples must be >= 1, but got 0"):
        farthest_point_sample(xyz, 0)
    with pytest.raises(TypeError, match="n_samples must be an int"):
        farthest_point_sample(xyz, 2.0)
    with pytest.raises(ValueError, match=r"start must be in \[0, 5\).*got 5"):
        farthest_point_sample(xyz, 2, start=5)
    with pytest.raises(ValueError, match=r"start must have shape \(2,\)"):
        farthest_point_sample(xyz, 2, start=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"start must contain indices in \[0, 5\)"):
        farthest_point_sample(xyz, 2, start=torch.tensor([0, -1]))
    with pytest.raises(
        TypeError, match="start must be None, an int or an integer tensor"
    ):
        farthest_point_sample(xyz, 2, start=torch.tensor([0.0, 1.0]))
    with pytest.raises(
        ValueError, match=r"xyz must have shape \(B, N, 3\), but got \(5, 3\)"
    ):
        farthest_point_sample(xyz[0], 2)
    with pytest.raises(TypeError, match="xyz must be a floating-point tensor"):
        farthest_point_sample(torch.zeros(1, 4, 3, dtype=torch.long), 2)
    infinite = xyz.clone()
    infinite[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        farthest_point_sample(infinite, 2)


# --- group ----------------------------------------------------------------------


def test_group_matches_fancy_indexing_and_passes_gradients():
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.standard_normal((2, 7, 4))).requires_grad_(True)
    idx = torch.from_numpy(rng.integers(0, 7, (2, 3, 5)))

    out = group(values, idx)

    expected = np.stack([values[b].detach().numpy()[idx[b].numpy()] for b in range(2)])
    np.testing.assert_array_equal(out.detach().numpy(), expected)
    out.sum().backward()
    counts = np.stack(
        [np.bincount(idx[b].ravel().numpy(), minlength=7) for b in range(2)]
    )
    np.testing.assert_array_equal(
        values.grad.numpy(), np.repeat(counts[..., None], 4, -1)
    )


def test_group_two_dimensional_index():
    values = torch.arange(12.0).reshape(2, 3, 2)
    out = group(values, torch.tensor([[2, 0], [1, 1]]))
    assert out.tolist() == [[[4.0, 5.0], [0.0, 1.0]], [[8.0, 9.0], [8.0, 9.0]]]


def test_group_rejects_bad_input():
    values = torch.rand(2, 4, 3)
    with pytest.raises(
        ValueError,
        match=r"idx must contain indices in \[0, 4\), but got values from 0 to 4",
    ):
        group(values, torch.tensor([[0, 4], [1, 2]]))
    with pytest.raises(TypeError, match="idx must be an integer torch.Tensor"):
        group(values, torch.zeros(2, 2))
    with pytest.raises(
        ValueError, match=r"idx must have shape \(B, \.\.\.\) with B = 2"
    ):
        group(values, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"values must have shape \(B, N, C\), but got \(2, 4\)"
    ):
        group(values[..., 0], torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        group(values.numpy(), torch.zeros(2, 2, dtype=torch.long))


# --- set abstraction ------------------------------------------------------------


def test_set_abstraction_shapes_and_pooling():
    torch.manual_seed(0)
    level = SetAbstraction(5, 0.5, 4, 2, (8, 6))
    xyz, features = torch.rand(3, 20, 3), torch.rand(3, 20, 2)
    centres, pooled = level(xyz, features)
    assert centres.shape == (3, 5, 3)
    assert pooled.shape == (3, 5, 6)
    # Every centre is a point of its cloud.
    for b in range(3):
        distances = torch.cdist(centres[b], xyz[b]).min(dim=1).values
        assert float(distances.max()) == 0.0

    everything = SetAbstraction(None, None, None, 2, (8, 6), group_all=True)
    centre, pooled_all = everything(xyz, features)
    assert centre.shape == (3, 1, 3)
    assert pooled_all.shape == (3, 1, 6)
    torch.testing.assert_close(centre[:, 0], xyz.mean(dim=1))
    # Group-all pooling equals the max over the shared MLP of each point.
    per_point = everything.mlp(torch.cat([xyz - centre, features], dim=-1))
    torch.testing.assert_close(pooled_all[:, 0], per_point.amax(dim=1))


def test_set_abstraction_rejects_bad_input():
    level = SetAbstraction(5, 0.5, 4, 2, (8,))
    with pytest.raises(
        ValueError, match=r"features must have shape \(1, 10, 2\).*got None"
    ):
        level(torch.rand(1, 10, 3))
    with pytest.raises(
        ValueError, match="picks 5 centres, but the input has only 4 points"
    ):
        level(torch.rand(1, 4, 3), torch.rand(1, 4, 2))
    with pytest.raises(ValueError, match="norm must be one of"):
        SetAbstraction(5, 0.5, 4, 0, (8,), norm="group")
    with pytest.raises(TypeError, match="mlp_channels must be a non-empty sequence"):
        SetAbstraction(5, 0.5, 4, 0, ())
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        SetAbstraction(5, -1.0, 4, 0, (8,))


# --- encoder --------------------------------------------------------------------


def test_encoder_shape_and_parameter_count():
    encoder = PointNet2Encoder(seed=0)
    out = encoder(torch.rand(6, 64, 3))
    assert out.shape == (6, 64)
    assert out.dtype == torch.float32
    assert sum(p.numel() for p in encoder.parameters()) == 88032
    small = PointNet2Encoder(
        out_dim=8, n_points=16, n_centres=(8, 2), n_sample=(4, 4), seed=0
    )
    assert small(torch.rand(3, 16, 3)).shape == (3, 8)


def test_encoder_seed_is_deterministic_and_local():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = PointNet2Encoder(seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    second = PointNet2Encoder(seed=7)
    other = PointNet2Encoder(seed=8)
    x = torch.rand(4, 64, 3)
    assert torch.equal(first(x), second(x))
    assert not torch.allclose(first(x), other(x))


def test_encoder_gradients_flow():
    encoder = PointNet2Encoder(seed=0)
    x = torch.rand(5, 64, 3)
    x[4] = 0.3  # a patch whose points all coincide
    x.requires_grad_(True)
    encoder(x).square().sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert torch.isfinite(x.grad).all()
    assert float(encoder.head.weight.grad.abs().sum()) > 0


def test_encoder_permutation_invariant():
    encoder = PointNet2Encoder(seed=1).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 64, 3, generator=generator)
    permuted = torch.stack([p[torch.randperm(64, generator=generator)] for p in x])
    with torch.no_grad():
        torch.testing.assert_close(encoder(permuted), encoder(x), rtol=0, atol=1e-5)


def test_encoder_scale_and_translation_invariant():
    encoder = PointNet2Encoder(seed=2).double().eval()
    x = torch.rand(
        3, 64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        reference = encoder(x)
        moved = encoder(
            x * 1000.0 + torch.tensor([5.0, -2.0, 30.0], dtype=torch.float64)
        )
    torch.testing.assert_close(moved, reference, rtol=0, atol=1e-9)

    unscaled = PointNet2Encoder(seed=2, normalize_scale=False).double().eval()
    with torch.no_grad():
        assert not torch.allclose(unscaled(x * 1000.0), unscaled(x))


def test_encoder_patch_of_equal_points():
    encoder = PointNet2Encoder(seed=0).eval()
    x = torch.zeros(2, 64, 3)
    x[0] = torch.tensor([1.0, 2.0, 3.0])
    x[1] = torch.tensor([-40.0, 0.5, 7.0])
    with torch.no_grad():
        out = encoder(x)
    assert torch.isfinite(out).all()
    # Both patches collapse to the origin after centring, so they embed alike.
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-6)


def test_encoder_layer_norm_ignores_batch_company():
    x = torch.rand(5, 64, 3, generator=torch.Generator().manual_seed(3))
    encoder = PointNet2Encoder(seed=0).train()
    torch.testing.assert_close(encoder(x)[:1], encoder(x[:1]), rtol=0, atol=1e-6)
    batch_norm = PointNet2Encoder(seed=0, norm="batch").train()
    assert not torch.allclose(batch_norm(x)[:2], batch_norm(x[:2]), atol=1e-4)
    assert PointNet2Encoder(seed=0, norm="none")(x).shape == (5, 64)


def test_encoder_rejects_bad_input():
    encoder = PointNet2Encoder(seed=0)
    with pytest.raises(
        ValueError, match=r"built for n_points=64, but got 32 points per patch"
    ):
        encoder(torch.rand(2, 32, 3))
    with pytest.raises(TypeError, match="xyz must be a torch.Tensor"):
        encoder(np.zeros((2, 64, 3), np.float32))
    with pytest.raises(TypeError, match="floating-point tensor"):
        encoder(torch.zeros(2, 64, 3, dtype=torch.int32))
    nan = torch.rand(2, 64, 3)
    nan[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="xyz contains 1 NaN"):
        encoder(nan)
    with pytest.raises(ValueError, match="xyz is on cpu but the encoder is on meta"):
        PointNet2Encoder(seed=0).to("meta")(torch.rand(2, 64, 3))
    with pytest.raises(
        ValueError, match=r"n_centres\[1\] <= n_centres\[0\] <= n_points \(64\)"
    ):
        PointNet2Encoder(n_centres=(80, 8))
    with pytest.raises(ValueError, match="n_sample must contain 2 ints"):
        PointNet2Encoder(n_sample=(16,))
    with pytest.raises(ValueError, match="mlp_channels must contain 3 sequences"):
        PointNet2Encoder(mlp_channels=((8,), (8,)))
    with pytest.raises(ValueError, match="radii must contain 2 values"):
        PointNet2Encoder(radii=(0.4, 0.8, 1.2))
    with pytest.raises(ValueError, match="seed must be in"):
        PointNet2Encoder(seed=-1)
    with pytest.raises(ValueError, match="min_scale must be a finite number > 0"):
        PointNet2Encoder(min_scale=0.0)
    with pytest.raises(ValueError, match="radii must be a finite number > 0"):
        PointNet2Encoder(radii=(0.4, -1.0))


@pytest.mark.cuda
def test_encoder_cuda_matches_cpu():
    x = torch.rand(8, 64, 3, generator=torch.Generator().manual_seed(0))
    encoder = PointNet2Encoder(seed=0).eval()
    with torch.no_grad():
        cpu = encoder(x)
        gpu = encoder.to("cuda")(x.to("cuda"))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
    xyz = x.double()
    centres = xyz[:, :10] + 0.05
    for device in ("cpu", "cuda"):
        picked = farthest_point_sample(xyz.to(device), 16)
        idx, count = ball_query(xyz.to(device), centres.to(device), 0.3, 8)
        if device == "cpu":
            expected = (picked, idx, count)
    assert torch.equal(picked.cpu(), expected[0])
    assert torch.equal(idx.cpu(), expected[1])
    assert torch.equal(count.cpu(), expected[2])
