"""Normalcy classifier of 3DzAL and its adversarially perturbed anomaly probability.

The classifier is an MLP on patch features, trained with binary cross-entropy to tell
pseudo-anomaly patches (label 1) from normal patches (label 0). At test time a patch's
score is the probability of "anomalous" after one gradient step that pushes the
features toward "normal" (3DzAL: Wang, Peng and Fu, WACV 2025). The paper publishes
no code, so the training setup, the class balance and the reading of the step below
are our choices, each stated where it is made.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._device import (
    as_feature_tensor,
    check_labels,
    check_positive_int,
    check_real,
    check_seed,
    seeded,
)

__all__ = [
    "NormalcyClassifier",
    "adversarial_scores",
    "adversarial_step",
    "fit_classifier",
]

logger = logging.getLogger(__name__)

_BALANCES = ("pos_weight", None)

# A feature column whose standard deviation is below this fraction of its mean's
# magnitude is treated as constant and left unscaled, so that rounding noise in an
# all-equal column (common in FPFH bins) is not blown up to unit variance.
_CONSTANT_COLUMN = 1e-7


class NormalcyClassifier(nn.Module):
    """MLP that returns the logit of "pseudo anomaly" for each patch feature vector.

    The input is first standardised with the stored ``feature_mean`` and
    ``feature_scale`` buffers. They are the identity until :func:`fit_classifier` sets
    them from the training features. Standardising inside the module means that the
    adversarial step of :func:`adversarial_step` is taken on the raw features while
    the MLP gets inputs of unit scale, whatever the units of the features.

    Parameters
    ----------
    in_dim : int
        Size of a feature vector.
    hidden : sequence of int, default (128, 64)
        Widths of the hidden layers, each followed by ReLU and, with ``dropout > 0``,
        dropout. An empty sequence gives logistic regression.
    dropout : float, default 0.0
        Dropout probability in ``[0, 1)`` after each hidden layer, active in training
        mode only.
    seed : int, optional
        Seed for the initial weights. ``None`` draws them from torch's global
        generator. A seed leaves the global generator's state as it was.

    Examples
    --------
    >>> classifier = NormalcyClassifier(4, hidden=(8,), seed=0)
    >>> classifier(torch.zeros(3, 4)).shape
    torch.Size([3])
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        *,
        seed: int | None = None,
    ):
        super().__init__()
        self.in_dim = check_positive_int(in_dim, "in_dim")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(
                f"hidden must be a sequence of layer widths such as (128, 64), but got "
                f"{hidden!r}."
            )
        self.hidden = tuple(
            check_positive_int(width, "hidden widths") for width in hidden
        )
        dropout = check_real(dropout, "dropout", allow_zero=True)
        if dropout >= 1:
            raise ValueError(f"dropout must be in [0, 1), but got {dropout!r}.")
        self.dropout = dropout
        seed = check_seed(seed)

        with seeded(seed):
            layers: list[nn.Module] = []
            previous = self.in_dim
            for width in self.hidden:
                layers += [nn.Linear(previous, width), nn.ReLU()]
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
                previous = width
            layers.append(nn.Linear(previous, 1))
            self.net = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(self.in_dim))
        self.register_buffer("feature_scale", torch.ones(self.in_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N,)`` of ``(N, in_dim)`` features.

        Raises
        ------
        ValueError
            If ``features`` is not 2-D with ``in_dim`` columns.
        """
        self.check_dim(features)
        standardised = (features - self.feature_mean) / self.feature_scale
        return self.net(standardised).squeeze(-1)

    def check_dim(self, features: Any) -> None:
        """Raise ValueError unless ``features`` has shape ``(N, in_dim)``."""
        shape = tuple(getattr(features, "shape", ()))
        if len(shape) != 2 or shape[1] != self.in_dim:
            got = shape[1] if len(shape) == 2 else f"shape {shape}"
            raise ValueError(
                f"features must have in_dim = {self.in_dim} columns, the size this "
                f"classifier was built for, but got {got} (shape {shape})."
            )

    def set_standardization(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Store the per-column ``mean`` and ``scale`` used to standardise inputs."""
        with torch.no_grad():
            self.feature_mean.copy_(mean)
            self.feature_scale.copy_(scale)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}, dropout={self.dropout}"


def _parameter(classifier: nn.Module) -> torch.Tensor:
    if not isinstance(classifier, NormalcyClassifier):
        raise TypeError(
            "classifier must be a NormalcyClassifier, but got "
            f"{type(classifier).__name__}."
        )
    return next(classifier.parameters())


def _progress(iterable, enabled: bool, description: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.info("progress=True needs tqdm, which is not installed; no bar is shown")
        return iterable
    return tqdm(iterable, desc=description)


def fit_classifier(
    classifier: NormalcyClassifier,
    features: Any,
    labels: Any,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int | None = 0,
    progress: bool = False,
    *,
    balance: str | None = "pos_weight",
    weight_decay: float = 0.0,
    standardize: bool = True,
) -> list[float]:
    """Train the classifier with BCE-with-logits to tell pseudo anomalies from normals.

    Parameters
    ----------
    classifier : NormalcyClassifier
        Trained in place, on the device it is on. It is left in eval mode.
    features : Tensor or ndarray of shape (N, in_dim)
        Finite patch features. They are moved to the classifier's device and dtype.
    labels : Tensor or ndarray of shape (N,)
        0 for normal, 1 for pseudo anomaly. Both classes must occur.
    epochs : int, default 20
    lr : float, default 1e-3
        Learning rate of Adam.
    batch_size : int, default 256
    seed : int or None, default 0
        Seed of the shuffling and of dropout. On the CPU a seed gives bit-identical
        weights run after run. On CUDA some kernels are not deterministic, so results
        may differ in the last bits. ``None`` draws from torch's global generators.
        A seed leaves those generators' state as it was.
    progress : bool, default False
        Show a tqdm bar over the epochs, when tqdm is installed.
    balance : {"pos_weight", None}, default "pos_weight"
        With "pos_weight" the loss of each pseudo-anomaly patch is weighted by
        ``n_normal / n_anomaly``, so both classes weigh the same in total. Every patch
        is then seen once per epoch, with no duplicates from resampling. The
        probabilities are calibrated to equal priors, so the fused score does not
        depend on how many pseudo anomalies were synthesised. ``None`` uses the
        plain mean BCE.
    weight_decay : float, default 0.0
        L2 penalty of Adam.
    standardize : bool, default True
        Set the classifier's standardisation to the mean and standard deviation of
        ``features``, computed in float64. Constant columns keep scale 1. With False,
        the stored standardisation is left as it is.

    Returns
    -------
    list of float
        Mean training loss of each epoch.

    Raises
    ------
    TypeError
        If ``classifier`` is not a NormalcyClassifier, or an argument has a wrong type.
    ValueError
        If ``features`` is not ``(N, in_dim)`` or not finite, ``labels`` are not 0/1
        of length N, only one class occurs, or a number is out of range.
    """
    weight = _parameter(classifier)
    epochs = check_positive_int(epochs, "epochs")
    lr = check_real(lr, "lr", allow_zero=False)
    batch_size = check_positive_int(batch_size, "batch_size")
    weight_decay = check_real(weight_decay, "weight_decay", allow_zero=True)
    seed = check_seed(seed)
    if balance not in _BALANCES:
        raise ValueError(f"balance must be one of {_BALANCES}, but got {balance!r}.")

    x = as_feature_tensor(
        features, "features", dtype=weight.dtype, device=weight.device
    )
    classifier.check_dim(x)
    anomalous = check_labels(labels, x.shape[0], device=weight.device)
    n_anomaly = int(anomalous.sum())
    n_normal = x.shape[0] - n_anomaly
    if n_anomaly == 0 or n_normal == 0:
        raise ValueError(
            "labels must contain both normal (0) and pseudo-anomaly (1) patches, but "
            f"got {n_normal} normal and {n_anomaly} pseudo-anomaly patches."
        )
    y = anomalous.to(weight.dtype)

    if standardize:
        mean = x.double().mean(dim=0)
        std = x.double().std(dim=0, correction=0)
        scale = torch.where(
            std > _CONSTANT_COLUMN * mean.abs(), std, torch.ones_like(std)
        )
        classifier.set_standardization(mean, scale)
    pos_weight = None
    if balance == "pos_weight":
        pos_weight = torch.tensor(
            n_normal / n_anomaly, dtype=weight.dtype, device=weight.device
        )

    logger.info(
        "training the normalcy classifier on %d normal and %d pseudo-anomaly patches "
        "of dimension %d for %d epochs",
        n_normal,
        n_anomaly,
        x.shape[1],
        epochs,
    )
    optimizer = torch.optim.Adam(
        classifier.parameters(), lr=lr, weight_decay=weight_decay
    )
    shuffle = torch.Generator()
    if seed is not None:
        shuffle.manual_seed(seed)
    else:
        shuffle.seed()
    history: list[float] = []
    classifier.train()
    with seeded(seed, weight.device):
        for epoch in _progress(range(epochs), progress, "classifier epochs"):
            order = torch.randperm(x.shape[0], generator=shuffle).to(weight.device)
            total = 0.0
            for first in range(0, x.shape[0], batch_size):
                batch = order[first : first + batch_size]
                loss = F.binary_cross_entropy_with_logits(
                    classifier(x[batch]), y[batch], pos_weight=pos_weight
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            history.append(total / x.shape[0])
            logger.debug("classifier epoch %d: mean loss %.6f", epoch, history[-1])
    classifier.eval()
    return history


def _as_input(classifier: NormalcyClassifier, features: Any):
    weight = _parameter(classifier)
    x = as_feature_tensor(
        features, "features", dtype=weight.dtype, device=weight.device
    )
    classifier.check_dim(x)
    return x


def _as_output(values: torch.Tensor, like: Any):
    if isinstance(like, torch.Tensor):
        return values.to(like.device)
    return values.cpu().numpy()


def _step_batch(
    classifier: NormalcyClassifier, x: torch.Tensor, eta: float
) -> torch.Tensor:
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        log_p = F.logsigmoid(classifier(leaf))
        # Rows do not interact in eval mode, so the gradient of the sum is the
        # gradient of each row's own log p.
        (gradient,) = torch.autograd.grad(log_p.sum(), leaf)
    return (x - eta * gradient).detach()


def _batched(classifier, features, eta, batch_size, score: bool):
    eta = check_real(eta, "eta", allow_zero=True)
    batch_size = check_positive_int(batch_size, "batch_size")
    x = _as_input(classifier, features)
    was_training = classifier.training
    classifier.eval()
    outputs = []
    try:
        for first in range(0, x.shape[0], batch_size):
            stepped = _step_batch(classifier, x[first : first + batch_size], eta)
            if score:
                with torch.no_grad():
                    stepped = torch.sigmoid(classifier(stepped))
            outputs.append(stepped)
    finally:
        classifier.train(was_training)
    if outputs:
        result = torch.cat(outputs)
    elif score:
        result = x.new_empty(0)
    else:
        result = x.new_empty(0, x.shape[1])
    return _as_output(result, features)


def adversarial_step(
    classifier: NormalcyClassifier,
    features: Any,
    eta: float = 0.01,
    *,
    batch_size: int = 4096,
):
    """Move each feature vector one gradient step toward "normal".

    With ``p(x) = sigmoid(classifier(x))`` the probability that ``x`` is anomalous,
    the step is ``x~ = x + eta * (-grad_x log p(x))``, which lowers ``p`` to first
    order. Because ``grad_x log p = (1 - p) grad_x logit``, the step nearly vanishes
    for a patch the classifier is sure is anomalous, and is largest for patches near
    or below the decision boundary.

    Parameters
    ----------
    classifier : NormalcyClassifier
        Evaluated in eval mode. Its previous mode is restored afterwards, and no
        gradient is stored on its parameters.
    features : Tensor or ndarray of shape (N, in_dim)
    eta : float, default 0.01
        Step size, >= 0, in units of the raw features per unit of gradient.
    batch_size : int, default 4096
        Rows per forward and backward pass.

    Returns
    -------
    Tensor or ndarray of shape (N, in_dim)
        The stepped features in the classifier's dtype: a NumPy array for array
        input, or a tensor on the input's device for tensor input.

    Raises
    ------
    ValueError
        If ``features`` is not ``(N, in_dim)`` (the message names both sizes) or not
        finite, or ``eta`` is negative.
    """
    return _batched(classifier, features, eta, batch_size, score=False)


def adversarial_scores(
    classifier: NormalcyClassifier,
    features: Any,
    eta: float = 0.01,
    *,
    batch_size: int = 4096,
):
    """Return ``p(x~)``, the anomaly probability after one step toward "normal".

    ``x~`` is :func:`adversarial_step` of ``x``. The reading: a real anomaly stays
    anomalous after a small push toward normal, but a borderline normal patch does
    not. The score therefore separates the two more clearly than ``p(x)``. With
    ``eta=0`` it is ``p(x)`` itself. The gradient is computed with autograd enabled
    for the step only; the final forward pass runs under ``torch.no_grad``.

    Parameters
    ----------
    classifier : NormalcyClassifier
    features : Tensor or ndarray of shape (N, in_dim)
    eta : float, default 0.01
    batch_size : int, default 4096

    Returns
    -------
    Tensor or ndarray of shape (N,)
        Probabilities in ``[0, 1]``, in the classifier's dtype: a NumPy array for array
        input, or a tensor on the input's device for tensor input.

    Raises
    ------
    ValueError
        If ``features`` is not ``(N, in_dim)`` (the message names both sizes) or not
        finite, or ``eta`` is negative.

    Examples
    --------
    >>> classifier = NormalcyClassifier(2, hidden=(), seed=0)
    >>> adversarial_scores(classifier, np.zeros((3, 2))).shape
    (3,)
    """
    return _batched(classifier, features, eta, batch_size, score=True)
