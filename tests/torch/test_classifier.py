"""Normalcy classifier, its adversarial step, and the device helper."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zal3d_torch._device import resolve_device
from zal3d_torch.classifier import (
    NormalcyClassifier,
    adversarial_scores,
    adversarial_step,
    fit_classifier,
)


def blobs(n_normal: int, n_anomaly: int, dim: int = 6, seed: int = 0, gap: float = 3.0):
    """Two Gaussian blobs: normals around 0 and pseudo anomalies around gap * e_0."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal((n_normal, dim))
    anomaly = rng.standard_normal((n_anomaly, dim))
    anomaly[:, 0] += gap
    features = np.concatenate([normal, anomaly]).astype(np.float32)
    labels = np.concatenate([np.zeros(n_normal), np.ones(n_anomaly)]).astype(np.int64)
    return features, labels


def log_p(classifier, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.nn.functional.logsigmoid(classifier(x))


# --- adversarial step -----------------------------------------------------------


def test_adversarial_step_matches_finite_differences():
    classifier = NormalcyClassifier(4, hidden=(7, 5), seed=3).double().eval()
    with torch.no_grad():
        classifier.net[0].bias.add_(0.5)  # keep most ReLUs active
    classifier.set_standardization(torch.full((4,), 0.2), torch.full((4,), 1.5))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((6, 4)))
    eta = 0.05

    stepped = adversarial_step(classifier, x, eta)

    h = 1e-6
    numeric = torch.zeros_like(x)
    for j in range(4):
        offset = torch.zeros(4, dtype=torch.float64)
        offset[j] = h
        numeric[:, j] = (
            log_p(classifier, x + offset) - log_p(classifier, x - offset)
        ) / (2 * h)
    analytic = (x - stepped) / eta
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
    assert float(numeric.abs().max()) > 1e-3


def test_adversarial_scores_are_probabilities_after_the_step():
    features, labels = blobs(60, 60, seed=1)
    classifier = NormalcyClassifier(6, hidden=(16,), seed=0).double()
    fit_classifier(
        classifier, features, labels, epochs=15, lr=1e-2, batch_size=32, seed=0
    )
    x = torch.from_numpy(features).double()

    scores = adversarial_scores(classifier, x, eta=0.01)

    with torch.no_grad():
        expected = torch.sigmoid(classifier(adversarial_step(classifier, x, eta=0.01)))
        clean = torch.sigmoid(classifier(x))
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-15)
    assert torch.equal(adversarial_scores(classifier, x, eta=0.0), clean)
    assert bool((scores >= 0).all())
    assert bool((scores <= 1).all())


def test_adversarial_scores_do_not_increase_for_small_eta():
    features, labels = blobs(80, 80, seed=2)
    classifier = NormalcyClassifier(6, hidden=(32, 16), seed=1).double()
    fit_classifier(
        classifier, features, labels, epochs=10, lr=1e-2, batch_size=32, seed=0
    )
    x = torch.from_numpy(features).double()
    with torch.no_grad():
        clean = torch.sigmoid(classifier(x))
    for eta in (1e-4, 1e-3, 1e-2):
        stepped = adversarial_scores(classifier, x, eta=eta)
        assert bool((stepped <= clean + 1e-15).all()), eta
    assert bool((adversarial_scores(classifier, x, eta=1e-2) < clean).any())


def test_adversarial_step_spares_confident_anomalies():
    # Logistic regression with logit = 4 * x0: grad log p = 4 * (1 - p) along x0.
    classifier = NormalcyClassifier(2, hidden=(), seed=0).double()
    with torch.no_grad():
        classifier.net[0].weight.copy_(torch.tensor([[4.0, 0.0]]))
        classifier.net[0].bias.zero_()
    x = torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # sure, borderline
    before = torch.sigmoid(classifier(x)).detach()
    after = adversarial_scores(classifier, x, eta=0.1)
    drop = before - after
    assert float(drop[0]) < 1e-4 * float(drop[1])
    # The borderline patch: p = 0.5, step -0.1 * 4 * 0.5 = -0.2, p(x~) = sigmoid(-0.8).
    assert float(after[1]) == pytest.approx(1 / (1 + np.exp(0.8)), abs=1e-12)


def test_adversarial_output_types_and_state():
    classifier = NormalcyClassifier(3, hidden=(4,), dropout=0.5, seed=0).train()
    array = np.random.default_rng(0).standard_normal((10, 3))
    scores = adversarial_scores(classifier, array, batch_size=3)
    assert isinstance(scores, np.ndarray)
    assert scores.shape == (10,)
    assert scores.dtype == np.float32
    stepped = adversarial_step(classifier, torch.from_numpy(array), batch_size=4)
    assert isinstance(stepped, torch.Tensor)
    assert stepped.shape == (10, 3)
    # Eval mode was used (dropout off) and the training mode is restored.
    assert classifier.training
    assert all(p.grad is None for p in classifier.parameters())
    np.testing.assert_array_equal(
        adversarial_scores(classifier, array, batch_size=10), scores
    )
    empty = adversarial_scores(classifier, np.zeros((0, 3)))
    assert empty.shape == (0,)
    assert adversarial_step(classifier, np.zeros((0, 3))).shape == (0, 3)


def test_adversarial_runs_inside_no_grad():
    classifier = NormalcyClassifier(3, hidden=(4,), seed=0)
    x = torch.randn(5, 3)
    with torch.no_grad():
        inside = adversarial_scores(classifier, x, eta=0.5)
    torch.testing.assert_close(inside, adversarial_scores(classifier, x, eta=0.5))
    assert not torch.equal(inside, adversarial_scores(classifier, x, eta=0.0))


def test_adversarial_rejects_bad_input():
    classifier = NormalcyClassifier(5, hidden=(4,), seed=0)
    with pytest.raises(
        ValueError, match=r"in_dim = 5 columns.*but got 4 \(shape \(3, 4\)\)"
    ):
        adversarial_scores(classifier, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"in_dim = 5 columns.*but got 7"):
        adversarial_step(classifier, torch.zeros(2, 7))
    with pytest.raises(
        ValueError, match=r"eta must be a finite number >= 0, but got -0.1"
    ):
        adversarial_scores(classifier, np.zeros((3, 5)), eta=-0.1)
    with pytest.raises(ValueError, match=r"features must have shape \(N, D\)"):
        adversarial_scores(classifier, np.zeros(5))
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 2 rows"):
        adversarial_scores(
            classifier, np.array([[0, 0, 0, 0, np.nan], [0, 0, 0, 0, 0]])
        )
    with pytest.raises(TypeError, match="classifier must be a NormalcyClassifier"):
        adversarial_scores(torch.nn.Linear(5, 1), np.zeros((3, 5)))
    with pytest.raises(
        TypeError, match="features must be a torch.Tensor or a NumPy array"
    ):
        adversarial_scores(classifier, "features")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        adversarial_scores(classifier, np.zeros((3, 5)), batch_size=0)


# --- classifier and training ----------------------------------------------------


def test_classifier_forward_shape_and_dim_check():
    classifier = NormalcyClassifier(33, seed=0)
    assert classifier(torch.zeros(4, 33)).shape == (4,)
    assert [
        m.out_features for m in classifier.net if isinstance(m, torch.nn.Linear)
    ] == [128, 64, 1]
    with pytest.raises(
        ValueError, match=r"in_dim = 33 columns.*but got 64 \(shape \(4, 64\)\)"
    ):
        classifier(torch.zeros(4, 64))
    with pytest.raises(ValueError, match=r"in_dim = 33 columns.*but got shape \(33,\)"):
        classifier(torch.zeros(33))


def test_classifier_rejects_bad_arguments():
    with pytest.raises(ValueError, match="in_dim must be >= 1, but got 0"):
        NormalcyClassifier(0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), but got 1.0"):
        NormalcyClassifier(3, dropout=1.0)
    with pytest.raises(TypeError, match="hidden must be a sequence of layer widths"):
        NormalcyClassifier(3, hidden=64)
    with pytest.raises(ValueError, match="hidden widths must be >= 1"):
        NormalcyClassifier(3, hidden=(8, 0))


def test_fit_separates_two_blobs():
    # Blob means 5 apart along x0: the Bayes accuracy is Phi(2.5) = 0.994.
    features, labels = blobs(300, 300, seed=0, gap=5.0)
    test_features, test_labels = blobs(200, 200, seed=1, gap=5.0)
    classifier = NormalcyClassifier(6, seed=0)
    history = fit_classifier(
        classifier, features, labels, epochs=10, lr=3e-3, batch_size=64, seed=0
    )
    assert len(history) == 10
    assert history[-1] < history[0]
    assert not classifier.training
    with torch.no_grad():
        predicted = classifier(torch.from_numpy(test_features)).numpy() > 0
    assert np.mean(predicted == test_labels.astype(bool)) > 0.95


def test_fit_pos_weight_balances_rare_anomalies():
    # 40 pseudo anomalies against 400 normals, blobs that overlap. With the weight,
    # the decision point moves to where the two equal-prior densities cross (x0 = 1.25).
    features, labels = blobs(400, 40, dim=1, seed=4, gap=2.5)
    probe = torch.tensor([[1.25]])
    results = {}
    for balance in ("pos_weight", None):
        classifier = NormalcyClassifier(1, hidden=(), seed=0)
        fit_classifier(
            classifier,
            features,
            labels,
            epochs=150,
            lr=5e-2,
            batch_size=440,
            seed=0,
            balance=balance,
        )
        with torch.no_grad():
            results[balance] = float(torch.sigmoid(classifier(probe)))
    assert 0.3 < results["pos_weight"] < 0.7
    assert results[None] < 0.2


def test_fit_is_deterministic_for_a_seed():
    features, labels = blobs(50, 30, seed=3)

    def train(seed):
        classifier = NormalcyClassifier(6, hidden=(16, 8), dropout=0.3, seed=1)
        history = fit_classifier(
            classifier, features, labels, epochs=4, batch_size=16, seed=seed
        )
        return classifier.state_dict(), history

    torch.manual_seed(99)
    state = torch.get_rng_state()
    first, first_history = train(5)
    assert torch.equal(torch.get_rng_state(), state)
    second, second_history = train(5)
    other, _ = train(6)
    assert first_history == second_history
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_fit_standardizes_features():
    features, labels = blobs(40, 40, seed=5)
    features = features * np.float32(100) + np.float32(7)
    features[:, 2] = 5.0  # a constant column keeps scale 1
    classifier = NormalcyClassifier(6, hidden=(4,), seed=0)
    fit_classifier(classifier, features, labels, epochs=1, seed=0)
    expected_mean = features.astype(np.float64).mean(axis=0)
    expected_scale = features.astype(np.float64).std(axis=0)
    expected_scale[2] = 1.0
    np.testing.assert_allclose(
        classifier.feature_mean.numpy(), expected_mean, rtol=1e-6
    )
    np.testing.assert_allclose(
        classifier.feature_scale.numpy(), expected_scale, rtol=1e-6
    )

    unscaled = NormalcyClassifier(6, hidden=(4,), seed=0)
    fit_classifier(unscaled, features, labels, epochs=1, seed=0, standardize=False)
    assert torch.equal(unscaled.feature_mean, torch.zeros(6))
    assert torch.equal(unscaled.feature_scale, torch.ones(6))


def test_fit_with_progress_bar():
    features, labels = blobs(20, 20, seed=6)
    history = fit_classifier(
        NormalcyClassifier(6, hidden=(4,), seed=0),
        features,
        labels,
        epochs=2,
        progress=True,
    )
    assert len(history) == 2


def test_fit_rejects_bad_input():
    features, labels = blobs(10, 10)
    classifier = NormalcyClassifier(6, hidden=(4,), seed=0)
    with pytest.raises(
        ValueError, match=r"both normal \(0\) and pseudo-anomaly \(1\).*20 normal and 0"
    ):
        fit_classifier(classifier, features, np.zeros(20))
    with pytest.raises(ValueError, match=r"labels must have shape \(20,\).*\(19,\)"):
        fit_classifier(classifier, features, labels[:19])
    with pytest.raises(ValueError, match=r"in_dim = 6 columns.*but got 5"):
        fit_classifier(classifier, features[:, :5], labels)
    with pytest.raises(ValueError, match=r"labels must be 0 \(normal\) or 1"):
        fit_classifier(classifier, features, labels * 2)
    with pytest.raises(ValueError, match="epochs must be >= 1, but got 0"):
        fit_classifier(classifier, features, labels, epochs=0)
    with pytest.raises(
        ValueError, match=r"lr must be a finite number > 0, but got 0.0"
    ):
        fit_classifier(classifier, features, labels, lr=0.0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        fit_classifier(classifier, features, labels, batch_size=None)
    with pytest.raises(ValueError, match="balance must be one of"):
        fit_classifier(classifier, features, labels, balance="sampler")
    with pytest.raises(ValueError, match="seed must be in"):
        fit_classifier(classifier, features, labels, seed=-1)
    with pytest.raises(TypeError, match="classifier must be a NormalcyClassifier"):
        fit_classifier(torch.nn.Linear(6, 1), features, labels)


@pytest.mark.cuda
def test_classifier_on_cuda():
    features, labels = blobs(100, 100, seed=7)
    classifier = NormalcyClassifier(6, hidden=(16,), seed=0).to("cuda")
    fit_classifier(classifier, features, labels, epochs=5, lr=1e-2, seed=0)
    scores = adversarial_scores(classifier, torch.from_numpy(features).cuda())
    assert scores.device.type == "cuda"
    assert scores.shape == (200,)
    assert isinstance(adversarial_scores(classifier, features), np.ndarray)


# --- resolve_device -------------------------------------------------------------


def test_resolve_device_choices():
    expected_default = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected_default
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_resolve_device_rejects_missing_cuda():
    with pytest.raises(
        ValueError,
        match=r"'cuda:0' requests CUDA, but no CUDA device is available.*devices: cpu",
    ):
        resolve_device("cuda:0")


@pytest.mark.cuda
def test_resolve_device_rejects_missing_cuda_index():
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"has {count} CUDA devices"):
        resolve_device(f"cuda:{count}")


def test_resolve_device_rejects_bad_names():
    with pytest.raises(
        ValueError,
        match=r"device 'gpu' is not a valid torch device name\. Available devices: cpu",
    ):
        resolve_device("gpu")
    with pytest.raises(
        ValueError, match="type 'meta', which zal3d_torch does not support"
    ):
        resolve_device("meta")
    with pytest.raises(TypeError, match="device must be None, a string"):
        resolve_device(0)
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        with pytest.raises(ValueError, match="requests MPS, but MPS is not available"):
            resolve_device("mps")
