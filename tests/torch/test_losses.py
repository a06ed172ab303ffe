"""Contrastive and disentanglement losses against hand-computed values."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zal3d_torch.losses import (
    contrastive_loss,
    contrastive_loss_batch,
    disentanglement_loss,
    fpfh_projection,
    total_loss,
)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def contrastive_reference(anchor, positives, negatives, temperature):
    """Plain NumPy loss of one anchor, written straight from the definition."""

    def cos(u, v):
        return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

    pos = sum(math.exp(cos(anchor, p) / temperature) for p in positives)
    neg = sum(math.exp(cos(anchor, n) / temperature) for n in negatives)
    return -math.log(pos / (pos + neg))


# --- contrastive_loss -----------------------------------------------------------


def test_contrastive_hand_value():
    # s(a, p) = 1 and 0, s(a, n) = -1 at T = 1:
    # -log((e + 1) / (e + 1 + e^-1)) = 0.0943442769...
    loss = contrastive_loss(
        t([1.0, 0.0]), t([[1.0, 0.0], [0.0, 1.0]]), t([[-1.0, 0.0]]), 1.0
    )
    assert float(loss) == pytest.approx(0.09434427692615745, abs=1e-12)
    expected = -math.log((math.e + 1) / (math.e + 1 + math.exp(-1)))
    assert float(loss) == pytest.approx(expected, abs=1e-12)
    # A float32 anchor with float64 sets is computed in the anchor's dtype.
    mixed = contrastive_loss(
        torch.tensor([1.0, 0.0]), t([[1.0, 0.0], [0.0, 1.0]]), t([[-1.0, 0.0]]), 1.0
    )
    assert mixed.dtype == torch.float32
    assert float(mixed) == pytest.approx(expected, abs=1e-6)


def test_contrastive_uses_cosine_similarity():
    scaled = contrastive_loss(
        t([5.0, 0.0]), t([[0.3, 0.0], [0.0, 2.0]]), t([[-7.0, 0.0]]), 1.0
    )
    assert float(scaled) == pytest.approx(0.09434427692615745, abs=1e-12)


def test_contrastive_per_anchor_sets_match_reference():
    rng = np.random.default_rng(0)
    anchors = rng.standard_normal((4, 5))
    positives = rng.standard_normal((4, 3, 5))
    negatives = rng.standard_normal((4, 2, 5))
    loss = contrastive_loss(t(anchors), t(positives), t(negatives), 0.3)
    expected = np.mean(
        [
            contrastive_reference(anchors[i], positives[i], negatives[i], 0.3)
            for i in range(4)
        ]
    )
    assert float(loss) == pytest.approx(expected, abs=1e-12)

    shared = contrastive_loss(t(anchors), t(positives[0]), t(negatives[0]), 0.3)
    expected_shared = np.mean(
        [contrastive_reference(a, positives[0], negatives[0], 0.3) for a in anchors]
    )
    assert float(shared) == pytest.approx(expected_shared, abs=1e-12)


def test_contrastive_temperature_behaviour():
    anchor = t([1.0, 0.0])
    positives = t([[0.8, 0.6]])  # s = 0.8
    easy = t([[0.0, 1.0]])  # s = 0.0, less similar than the positive
    hard = t([[1.0, 0.1]])  # s = 0.995, more similar than the positive
    temperatures = [2.0, 1.0, 0.5, 0.1, 0.02]

    easy_losses = [
        float(contrastive_loss(anchor, positives, easy, T)) for T in temperatures
    ]
    hard_losses = [
        float(contrastive_loss(anchor, positives, hard, T)) for T in temperatures
    ]

    # Lower temperature sharpens the softmax: an easy negative stops counting and a
    # hard negative dominates, with a loss of about (s_n - s_p) / T.
    assert all(b < a for a, b in pairwise(easy_losses))
    assert all(b > a for a, b in pairwise(hard_losses))
    s_hard = 1.0 / math.sqrt(1.01)
    assert hard_losses[-1] == pytest.approx((s_hard - 0.8) / 0.02, rel=1e-3)
    # A very high temperature makes all similarities alike: log((P + M) / P).
    flat = contrastive_loss(anchor, t([[0.8, 0.6], [0.0, 1.0]]), hard, 1e8)
    assert float(flat) == pytest.approx(math.log(3 / 2), abs=1e-7)


def test_contrastive_low_temperature_is_stable():
    loss = contrastive_loss(t([1.0, 0.0]), t([[0.0, 1.0]]), t([[1.0, 0.0]]), 1e-4)
    # exp(1 / 1e-4) overflows float64; logsumexp gives log(1 + e^10000) - 0 = 10000.
    assert float(loss) == pytest.approx(1e4, rel=1e-12)
    single = contrastive_loss(
        torch.tensor([1.0, 0.0]),
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[1.0, 0.0]]),
        1e-3,
    )
    assert torch.isfinite(single)


def test_contrastive_without_negatives_is_zero():
    anchor = t([[1.0, 2.0]]).requires_grad_(True)
    loss = contrastive_loss(
        anchor, t([[0.5, -1.0]]), torch.zeros(0, 2, dtype=torch.float64)
    )
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(anchor.grad, torch.zeros_like(anchor))


def cosine(u, v) -> float:
    return float(torch.nn.functional.cosine_similarity(u, v))


@pytest.mark.parametrize("moved, direction", [(1, "closer"), (2, "away")])
def test_contrastive_gradient_moves_sets(moved, direction):
    # One gradient step on the positive pulls it toward the anchor; one step on the
    # negative pushes it away. Both lower the loss.
    tensors = [t([[1.0, 0.2, 0.0]]), t([[0.1, 1.0, 0.3]]), t([[0.9, 0.5, -0.2]])]
    tensors[moved].requires_grad_(True)
    loss = contrastive_loss(*tensors, 0.5)
    loss.backward()
    stepped = list(tensors)
    stepped[moved] = (tensors[moved] - 0.05 * tensors[moved].grad).detach()
    after = contrastive_loss(*stepped, 0.5)

    assert float(after) < float(loss.detach())
    before_cos = cosine(tensors[0], tensors[moved].detach())
    after_cos = cosine(stepped[0], stepped[moved])
    if direction == "closer":
        assert after_cos > before_cos
    else:
        assert after_cos < before_cos


def test_contrastive_rejects_bad_input():
    a, p, n = t([[1.0, 0.0]]), t([[1.0, 0.0]]), t([[0.0, 1.0]])
    with pytest.raises(
        ValueError, match="positives must contain at least one embedding"
    ):
        contrastive_loss(a, torch.zeros(0, 2, dtype=torch.float64), n)
    with pytest.raises(
        ValueError, match=r"temperature must be a finite number > 0, but got 0.0"
    ):
        contrastive_loss(a, p, n, 0.0)
    with pytest.raises(
        ValueError, match=r"negatives must have shape \(K, 2\) or \(1, K, 2\)"
    ):
        contrastive_loss(a, p, t([[0.0, 1.0, 2.0]]))
    with pytest.raises(
        ValueError, match=r"positives must have shape .*one set per anchor"
    ):
        contrastive_loss(a, t([[[1.0, 0.0]], [[1.0, 0.0]]]), n)
    with pytest.raises(TypeError, match="anchor must be a torch.Tensor"):
        contrastive_loss([1.0, 0.0], p, n)
    with pytest.raises(TypeError, match="negatives must be a torch.Tensor"):
        contrastive_loss(a, p, None)
    with pytest.raises(ValueError, match="anchor must contain at least one embedding"):
        contrastive_loss(torch.zeros(0, 2, dtype=torch.float64), p, n)
    with pytest.raises(ValueError, match="positives contains 1 NaN"):
        contrastive_loss(a, t([[float("nan"), 0.0]]), n)


# --- contrastive_loss_batch -----------------------------------------------------


def test_batch_hand_value():
    embeddings = t([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    # Anchor 0: s(0, 1) = 0.6; negatives s = 0 and -1. Anchor 1: s(1, 0) = 0.6;
    # negatives s = 0.8 and -0.6. With T = 0.5:
    # l0 = -log(e^1.2 / (e^1.2 + e^0 + e^-2)) = 0.29412856...
    # l1 = -log(e^1.2 / (e^1.2 + e^1.6 + e^-1.2)) = 0.94877443...
    loss = contrastive_loss_batch(embeddings, [0, 0, 1, 1], 0.5)
    assert float(loss) == pytest.approx(
        (0.2941285610404087 + 0.9487744372405004) / 2, abs=1e-12
    )


def test_batch_matches_per_anchor_definition():
    rng = np.random.default_rng(3)
    embeddings = rng.standard_normal((9, 6))
    labels = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0])
    loss = contrastive_loss_batch(t(embeddings), torch.from_numpy(labels), 0.2)
    normal = np.flatnonzero(labels == 0)
    expected = np.mean(
        [
            contrastive_reference(
                embeddings[i],
                embeddings[normal[normal != i]],
                embeddings[labels == 1],
                0.2,
            )
            for i in normal
        ]
    )
    assert float(loss) == pytest.approx(expected, abs=1e-12)
    as_bool = contrastive_loss_batch(t(embeddings), labels.astype(bool), 0.2)
    assert float(as_bool) == float(loss)


def test_batch_without_pseudo_anomalies_is_zero():
    embeddings = t([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]]).requires_grad_(True)
    loss = contrastive_loss_batch(embeddings, [0, 0, 0])
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()


def test_batch_gradients_are_finite():
    embeddings = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    embeddings.data[3] = 0.0  # a zero embedding has cosine 0 with everything
    loss = contrastive_loss_batch(embeddings, [0, 1] * 6, 0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(embeddings.grad).all()


def test_batch_rejects_degenerate_input():
    embeddings = t([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="at least 2 normal patches .* but got 1 of 3"):
        contrastive_loss_batch(embeddings, [0, 1, 1])
    with pytest.raises(ValueError, match="but got 0 of 3"):
        contrastive_loss_batch(embeddings, [1, 1, 1])
    with pytest.raises(
        ValueError, match=r"labels must be 0 \(normal\) or 1 \(pseudo anomaly\).*\[2\]"
    ):
        contrastive_loss_batch(embeddings, [0, 2, 1])
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\).*\(2,\)"):
        contrastive_loss_batch(embeddings, [0, 1])
    with pytest.raises(
        TypeError, match="labels must be a torch.Tensor or a NumPy array"
    ):
        contrastive_loss_batch(embeddings, "001")
    with pytest.raises(ValueError, match=r"embeddings must have shape \(B, D\)"):
        contrastive_loss_batch(embeddings[0], [0, 0])


# --- fpfh_projection ------------------------------------------------------------


def test_projection_is_orthonormal_and_seeded():
    wide = fpfh_projection(33, 64, seed=0, dtype=torch.float64)
    assert wide.shape == (33, 64)
    assert not wide.requires_grad
    torch.testing.assert_close(
        wide @ wide.T, torch.eye(33, dtype=torch.float64), rtol=0, atol=1e-12
    )
    narrow = fpfh_projection(33, 16, seed=0, dtype=torch.float64)
    assert narrow.shape == (33, 16)
    torch.testing.assert_close(
        narrow.T @ narrow, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-12
    )

    assert torch.equal(fpfh_projection(33, 64, seed=5), fpfh_projection(33, 64, seed=5))
    assert not torch.allclose(
        fpfh_projection(33, 64, seed=5), fpfh_projection(33, 64, seed=6)
    )
    assert fpfh_projection(33, 64).dtype == torch.float32
    # Lengths of (non-negative) FPFH histograms survive the map into 64 dimensions.
    fpfh = torch.rand(10, 33, dtype=torch.float64) * 200
    torch.testing.assert_close(
        (fpfh @ wide).norm(dim=1), fpfh.norm(dim=1), rtol=1e-12, atol=0
    )


def test_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="d_fpfh must be >= 1, but got 0"):
        fpfh_projection(0, 64)
    with pytest.raises(TypeError, match="d must be an int"):
        fpfh_projection(33, 6.4)
    with pytest.raises(ValueError, match="seed must be in"):
        fpfh_projection(33, 64, seed=-3)


# --- disentanglement_loss -------------------------------------------------------


def test_disentanglement_hand_values():
    identity = torch.eye(2, dtype=torch.float64)
    fpfh = t([[1.0, 0.0], [0.0, 1.0]])
    embedding = t([[1.0, 1.0], [0.0, 3.0]])
    # cos = 1/sqrt(2) and 1: squared mean (0.5 + 1) / 2, absolute (0.7071 + 1) / 2.
    assert float(disentanglement_loss(fpfh, embedding, identity)) == pytest.approx(
        0.75, abs=1e-12
    )
    absolute = disentanglement_loss(fpfh, embedding, identity, mode="absolute")
    assert float(absolute) == pytest.approx(0.8535533905932737, abs=1e-12)
    # Anti-aligned is as bad as aligned: the loss rewards decorrelation.
    assert float(disentanglement_loss(fpfh, -embedding, identity)) == pytest.approx(
        0.75, abs=1e-12
    )


def test_disentanglement_center_and_zero_rows():
    identity = torch.eye(2, dtype=torch.float64)
    # Batch mean [2, 1]; centred rows [1, 0] and [-1, 0]; cos = 1/sqrt(2) and -1.
    fpfh = t([[3.0, 1.0], [1.0, 1.0]])
    embedding = t([[1.0, 1.0], [1.0, 0.0]])
    centred = disentanglement_loss(fpfh, embedding, identity, center=True)
    assert float(centred) == pytest.approx(0.75, abs=1e-12)
    # Raw rows: cos([3, 1], [1, 1]) = 4 / sqrt(20), cos([1, 1], [1, 0]) = 1 / sqrt(2).
    raw = disentanglement_loss(fpfh, embedding, identity)
    assert float(raw) == pytest.approx((16 / 20 + 0.5) / 2, abs=1e-12)
    # A zero FPFH (an isolated point) and a zero embedding both count as cos = 0.
    zeros = disentanglement_loss(
        t([[0.0, 0.0], [1.0, 0.0]]), t([[1.0, 0.0], [0.0, 0.0]]), identity
    )
    assert float(zeros) == 0.0


def test_disentanglement_through_projection():
    rng = np.random.default_rng(1)
    fpfh = rng.random((6, 33)) * 100
    embedding = rng.standard_normal((6, 8))
    projection = fpfh_projection(33, 8, seed=2, dtype=torch.float64)
    loss = disentanglement_loss(t(fpfh), t(embedding), projection)
    projected = fpfh @ projection.numpy()
    cos = (projected * embedding).sum(1) / (
        np.linalg.norm(projected, axis=1) * np.linalg.norm(embedding, axis=1)
    )
    assert float(loss) == pytest.approx(np.mean(cos**2), abs=1e-12)
    as_float32 = disentanglement_loss(
        t(fpfh).float(), t(embedding).float(), projection.float()
    )
    assert float(as_float32) == pytest.approx(np.mean(cos**2), abs=1e-5)


@pytest.mark.parametrize("mode", ["squared", "absolute"])
def test_disentanglement_gradient_step_decorrelates(mode):
    fpfh = t([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    projection = torch.eye(3, dtype=torch.float64).requires_grad_(True)
    embedding = t([[0.9, 0.3, 0.1], [-0.2, 0.5, 0.7]]).requires_grad_(True)
    loss = disentanglement_loss(fpfh, embedding, projection, mode=mode)
    loss.backward()
    assert projection.grad is None
    with torch.no_grad():
        after = disentanglement_loss(
            fpfh, embedding - 0.05 * embedding.grad, projection, mode=mode
        )
    assert float(after) < float(loss.detach())


def test_disentanglement_zero_gradient_when_orthogonal():
    embedding = t([[0.0, 2.0]]).requires_grad_(True)
    loss = disentanglement_loss(
        t([[1.0, 0.0]]), embedding, torch.eye(2, dtype=torch.float64)
    )
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(embedding.grad, torch.zeros_like(embedding))


def test_disentanglement_rejects_bad_input():
    fpfh, embedding = torch.rand(4, 33), torch.rand(4, 64)
    projection = fpfh_projection(33, 64)
    with pytest.raises(
        ValueError,
        match=r"projection must have shape \(d_fpfh, D\) = \(33, 64\).*\(33, 32\)",
    ):
        disentanglement_loss(fpfh, embedding, fpfh_projection(33, 32))
    with pytest.raises(
        ValueError, match=r"fpfh with 30 columns onto embedding with 64 columns"
    ):
        disentanglement_loss(fpfh[:, :30], embedding, projection)
    with pytest.raises(ValueError, match="one row per patch, but got 4 and 3 rows"):
        disentanglement_loss(fpfh, embedding[:3], projection)
    with pytest.raises(ValueError, match="mode must be one of"):
        disentanglement_loss(fpfh, embedding, projection, mode="cos")
    with pytest.raises(
        ValueError, match="center=True .* at least 2 patches, but got 1"
    ):
        disentanglement_loss(fpfh[:1], embedding[:1], projection, center=True)
    with pytest.raises(ValueError, match="at least one patch, but got 0"):
        disentanglement_loss(fpfh[:0], embedding[:0], projection)
    with pytest.raises(TypeError, match="fpfh must be a torch.Tensor"):
        disentanglement_loss(fpfh.numpy(), embedding, projection)


# --- total_loss -----------------------------------------------------------------


def test_total_loss_weights_the_terms():
    rng = np.random.default_rng(4)
    embeddings = t(rng.standard_normal((8, 4)))
    labels = [0, 0, 1, 0, 1, 0, 0, 1]
    fpfh = t(rng.random((8, 33)))
    projection = fpfh_projection(33, 4, seed=1, dtype=torch.float64)
    con = float(contrastive_loss_batch(embeddings, labels, 0.2))
    rd = float(disentanglement_loss(fpfh, embeddings, projection))

    total, parts = total_loss(
        embeddings,
        labels,
        fpfh,
        projection,
        w_con=0.7,
        w_rd=2.5,
        temperature=0.2,
        return_parts=True,
    )
    assert float(total) == pytest.approx(0.7 * con + 2.5 * rd, abs=1e-12)
    assert float(parts["contrastive"]) == pytest.approx(con, abs=1e-12)
    assert float(parts["disentanglement"]) == pytest.approx(rd, abs=1e-12)
    alone = total_loss(embeddings, labels, w_rd=0.0, temperature=0.2)
    assert float(alone) == pytest.approx(con, abs=1e-12)


def test_total_loss_rejects_bad_input():
    embeddings = torch.rand(4, 4)
    with pytest.raises(
        ValueError, match="fpfh and projection are required when w_rd > 0"
    ):
        total_loss(embeddings, [0, 0, 1, 1])
    with pytest.raises(
        ValueError, match=r"w_con must be a finite number >= 0, but got -1.0"
    ):
        total_loss(embeddings, [0, 0, 1, 1], w_con=-1.0, w_rd=0.0)
    with pytest.raises(TypeError, match="w_rd must be a real number"):
        total_loss(embeddings, [0, 0, 1, 1], w_rd="1")
