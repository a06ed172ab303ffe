"""Training losses of the 3DzAL patch encoder: contrastive and disentanglement.

3DzAL (Wang, Peng and Fu, "Towards Zero-shot 3D Anomaly Localization", WACV 2025)
trains a PointNet++ patch encoder E with two terms. A patch-level contrastive loss pulls
normal patches together and pushes pseudo-anomaly patches away from them. A
disentanglement loss lowers the cosine similarity between a patch's FPFH feature and
E(x), so the learned branch adds information that FPFH does not already give. The
paper publishes no code. The choices below that it leaves open are ours, and each one
is stated where it is made.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._device import (
    check_float_tensor,
    check_labels,
    check_positive_int,
    check_real,
    check_seed,
)

__all__ = [
    "contrastive_loss",
    "contrastive_loss_batch",
    "disentanglement_loss",
    "fpfh_projection",
    "total_loss",
]

# Norm below which F.normalize leaves a vector at zero, so a zero embedding has cosine
# similarity 0 with everything, in place of NaN.
_NORM_EPS = 1e-12

_MODES = ("squared", "absolute")


def contrastive_loss(
    anchor: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    r"""Compute the patch-level contrastive loss of normal anchors.

    With cosine similarity :math:`s` and temperature :math:`T`, the loss of an anchor
    :math:`a` with positive set :math:`P(a)` and negative set :math:`N(a)` is

    .. math::

        \ell(a) = -\log \frac{\sum_{p \in P(a)} e^{s(a, p) / T}}
            {\sum_{p \in P(a)} e^{s(a, p) / T} + \sum_{n \in N(a)} e^{s(a, n) / T}}

    and the result is the mean of :math:`\ell(a)` over the anchors. It is evaluated as
    ``logsumexp(all) - logsumexp(positives)``, which does not overflow for any
    temperature.

    Parameters
    ----------
    anchor : Tensor of shape (A, D) or (D,)
        Embeddings of normal patches.
    positives : Tensor of shape (P, D) or (A, P, D)
        Embeddings of other normal patches: shared by all anchors (2-D) or one set per
        anchor (3-D). ``P >= 1``.
    negatives : Tensor of shape (M, D) or (A, M, D)
        Embeddings of pseudo-anomaly patches, shared or per anchor. ``M`` may be 0.
    temperature : float, default 0.1
        Temperature ``T`` > 0. A lower temperature weights the hardest negatives more.

    Returns
    -------
    Tensor of shape ()
        The loss, >= 0. With no negatives the fraction is 1 and the loss is exactly 0.

    Raises
    ------
    TypeError
        If an input is not a floating-point tensor.
    ValueError
        If shapes do not match, a set of positives is empty, a value is not finite or
        ``temperature`` is not positive.

    Notes
    -----
    An embedding of norm 0 has cosine similarity 0 with every other embedding.

    Examples
    --------
    >>> anchor = torch.tensor([1.0, 0.0])
    >>> positives = torch.tensor([[1.0, 0.0]])
    >>> negatives = torch.tensor([[0.0, 1.0]])
    >>> round(float(contrastive_loss(anchor, positives, negatives, 1.0)), 4)
    0.3133
    """
    temperature = check_real(temperature, "temperature", allow_zero=False)
    ndim = anchor.ndim if isinstance(anchor, torch.Tensor) and anchor.ndim == 1 else 2
    anchor = check_float_tensor(
        anchor, "anchor", ndim=ndim, shape_text="(A, D) or (D,)"
    )
    if anchor.ndim == 1:
        anchor = anchor[None]
    n_anchors, dim = anchor.shape
    positives = _check_set(positives, "positives", n_anchors, dim, anchor.dtype)
    negatives = _check_set(negatives, "negatives", n_anchors, dim, anchor.dtype)
    if positives.shape[-2] == 0:
        raise ValueError(
            "positives must contain at least one embedding per anchor, but got shape "
            f"{tuple(positives.shape)}. The loss is -log(0) without positives."
        )
    if n_anchors == 0:
        raise ValueError(
            "anchor must contain at least one embedding, but got shape (0, D)."
        )

    a = F.normalize(anchor, dim=-1, eps=_NORM_EPS)
    pos = _similarities(a, F.normalize(positives, dim=-1, eps=_NORM_EPS)) / temperature
    neg = _similarities(a, F.normalize(negatives, dim=-1, eps=_NORM_EPS)) / temperature
    every = torch.cat([pos, neg], dim=1)
    per_anchor = torch.logsumexp(every, dim=1) - torch.logsumexp(pos, dim=1)
    return per_anchor.mean()


def _check_set(
    value: Any, name: str, n_anchors: int, dim: int, dtype: torch.dtype
) -> torch.Tensor:
    shape_text = f"(K, {dim}) or ({n_anchors}, K, {dim})"
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {shape_text}, but got "
            f"{type(value).__name__}."
        )
    ndim = value.ndim if value.ndim in (2, 3) else 2
    value = check_float_tensor(value, name, ndim=ndim, last=dim, shape_text=shape_text)
    if value.ndim == 3 and value.shape[0] != n_anchors:
        raise ValueError(
            f"{name} must have shape {shape_text}, one set per anchor, but got "
            f"{tuple(value.shape)}."
        )
    return value.to(dtype)


def _similarities(anchor: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Return the (A, K) dot products of anchors with (K, D) or (A, K, D) sets."""
    if others.ndim == 2:
        return anchor @ others.T
    return torch.einsum("ad,akd->ak", anchor, others)


def contrastive_loss_batch(
    embeddings: torch.Tensor, labels: Any, temperature: float = 0.1
) -> torch.Tensor:
    """Compute the contrastive loss of a labelled batch of patch embeddings.

    Every normal patch (label 0) is an anchor. Its positives are the other normal
    patches of the batch and its negatives are all pseudo-anomaly patches (label 1).
    The value equals :func:`contrastive_loss` with those sets, averaged over the
    normal patches. Pseudo-anomaly patches are never anchors.

    Parameters
    ----------
    embeddings : Tensor of shape (B, D), floating point
    labels : Tensor or ndarray of shape (B,)
        0 for a normal patch, 1 for a pseudo anomaly (bool, int or float).
    temperature : float, default 0.1

    Returns
    -------
    Tensor of shape ()
        The loss. It is exactly 0 when the batch contains no pseudo anomaly, because
        each fraction is then 1.

    Raises
    ------
    ValueError
        If the batch contains fewer than 2 normal patches, since an anchor then has no
        positive and the loss is -log(0). Also for bad shapes, labels other than 0
        and 1, non-finite values or a temperature that is not positive.

    Examples
    --------
    >>> embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(float(contrastive_loss_batch(embeddings, [0, 0, 1], 1.0)), 4)
    0.3133
    """
    temperature = check_real(temperature, "temperature", allow_zero=False)
    embeddings = check_float_tensor(
        embeddings, "embeddings", ndim=2, shape_text="(B, D)"
    )
    anomalous = check_labels(labels, embeddings.shape[0], device=embeddings.device)
    normal = ~anomalous
    n_normal = int(normal.sum())
    if n_normal < 2:
        raise ValueError(
            "contrastive_loss_batch needs at least 2 normal patches (label 0) in the "
            f"batch, so that every anchor has a positive, but got {n_normal} of "
            f"{embeddings.shape[0]}. Use larger batches or sample normal patches in "
            "pairs."
        )

    z = F.normalize(embeddings, dim=-1, eps=_NORM_EPS)
    similarities = (z[normal] @ z.T) / temperature
    anchor_index = torch.nonzero(normal).squeeze(1)
    not_self = torch.ones_like(similarities, dtype=torch.bool)
    not_self[torch.arange(n_normal, device=z.device), anchor_index] = False
    positive = normal[None, :] & not_self
    candidate = positive | anomalous[None, :]

    # Entries outside a set become -inf, whose exp() is 0. Each row keeps at least one
    # finite entry (a positive), so logsumexp and its gradient stay finite.
    every = torch.logsumexp(similarities.masked_fill(~candidate, -torch.inf), dim=1)
    positives = torch.logsumexp(similarities.masked_fill(~positive, -torch.inf), dim=1)
    return (every - positives).mean()


def fpfh_projection(
    d_fpfh: int,
    d: int,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Build the fixed random projection that maps FPFH features into embedding space.

    The matrix comes from the QR decomposition of a standard normal matrix drawn by
    ``numpy.random.default_rng(seed)``, with the signs fixed so that it is uniformly
    distributed (Haar). For ``d >= d_fpfh`` its rows are orthonormal, so the
    projection keeps the lengths of FPFH vectors and the angles between them. For
    ``d < d_fpfh`` its columns are orthonormal and it projects onto a random
    ``d``-dimensional subspace.

    Parameters
    ----------
    d_fpfh : int
        Size of the FPFH feature, 33 for the standard FPFH.
    d : int
        Size of the encoder's embedding.
    seed : int, default 0
    dtype : torch.dtype, default torch.float32
    device : str or torch.device, optional
        Device of the result, the CPU by default.

    Returns
    -------
    Tensor of shape (d_fpfh, d)
        The projection, with ``requires_grad=False``. ``fpfh @ projection`` maps
        ``(B, d_fpfh)`` features to ``(B, d)``.

    Notes
    -----
    The projection is fixed and never learned. A learned projection would let the
    encoder lower the disentanglement loss by rotating the projection away from its
    embeddings, without changing the embeddings at all. The matrix is drawn with
    NumPy on the CPU, so a seed gives the same projection on every torch device.

    Examples
    --------
    >>> projection = fpfh_projection(33, 64, seed=0)
    >>> projection.shape
    torch.Size([33, 64])
    >>> torch.allclose(projection @ projection.T, torch.eye(33), atol=1e-5)
    True
    """
    d_fpfh = check_positive_int(d_fpfh, "d_fpfh")
    d = check_positive_int(d, "d")
    seed = check_seed(seed)
    rng = np.random.default_rng(0 if seed is None else seed)
    tall, wide = max(d, d_fpfh), min(d, d_fpfh)
    q, r = np.linalg.qr(rng.standard_normal((tall, wide)))
    # QR leaves the signs of the columns free. Making diag(r) positive gives the Haar
    # distribution and the same matrix for any LAPACK sign convention.
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q = q * signs
    matrix = q.T if d >= d_fpfh else q
    return torch.as_tensor(np.ascontiguousarray(matrix), dtype=dtype, device=device)


def disentanglement_loss(
    fpfh: torch.Tensor,
    embedding: torch.Tensor,
    projection: torch.Tensor,
    *,
    mode: str = "squared",
    center: bool = False,
) -> torch.Tensor:
    """Compute the mean squared (or absolute) cosine similarity of FPFH and embedding.

    Each FPFH feature is mapped into the embedding's space by the fixed ``projection``
    from :func:`fpfh_projection`, and the loss is the mean over the batch of
    ``cos(fpfh @ projection, embedding) ** 2``. Lowering it pushes every embedding
    toward the orthogonal complement of its projected FPFH.

    Parameters
    ----------
    fpfh : Tensor of shape (B, d_fpfh), floating point
        FPFH features of the patches.
    embedding : Tensor of shape (B, D), floating point
        Encoder outputs for the same patches.
    projection : Tensor of shape (d_fpfh, D)
        The fixed projection. It is detached, so no gradient reaches it.
    mode : {"squared", "absolute"}, default "squared"
        ``"squared"`` uses cos**2 and ``"absolute"`` uses |cos|. Both have their
        minimum at cos = 0, so "pushed down" means decorrelated. A plain cos would be
        minimised by the anti-aligned embedding -fpfh, which carries the same
        information as the FPFH feature. cos**2 is the default because it is smooth
        at 0, so its gradient vanishes at the goal. The gradient of |cos| keeps its
        magnitude there, and gradient descent oscillates around 0.
    center : bool, default False
        Subtract the batch mean of ``fpfh`` before the projection. FPFH histograms
        are non-negative and each one sums to the same total, so raw FPFH features
        share a large common component. Without centring, much of the loss pushes the
        embeddings away from that one common direction. With centring, it pushes them
        away from how each patch's FPFH differs from the batch. It needs ``B >= 2``.

    Returns
    -------
    Tensor of shape ()
        The loss, in ``[0, 1]``. A zero FPFH feature, which Open3D 0.20 gives an
        isolated point, or a zero embedding contributes 0.

    Raises
    ------
    TypeError
        If an input is not a floating-point tensor.
    ValueError
        If the dimensions do not meet (``fpfh`` has ``d_fpfh`` columns, ``embedding``
        has ``D`` columns, ``projection`` is ``(d_fpfh, D)``), the batch sizes differ,
        the batch is empty, a value is not finite, or ``mode`` is unknown.

    Examples
    --------
    >>> projection = torch.eye(2)
    >>> fpfh = torch.tensor([[1.0, 0.0]])
    >>> embedding = torch.tensor([[1.0, 1.0]])
    >>> round(float(disentanglement_loss(fpfh, embedding, projection)), 6)
    0.5
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, but got {mode!r}.")
    fpfh = check_float_tensor(fpfh, "fpfh", ndim=2, shape_text="(B, d_fpfh)")
    embedding = check_float_tensor(embedding, "embedding", ndim=2, shape_text="(B, D)")
    projection = check_float_tensor(
        projection, "projection", ndim=2, shape_text="(d_fpfh, D)"
    )
    if tuple(projection.shape) != (fpfh.shape[1], embedding.shape[1]):
        raise ValueError(
            f"projection must have shape (d_fpfh, D) = ({fpfh.shape[1]}, "
            f"{embedding.shape[1]}) to map fpfh with {fpfh.shape[1]} columns onto "
            f"embedding with {embedding.shape[1]} columns, but got "
            f"{tuple(projection.shape)}. Build it with "
            f"fpfh_projection({fpfh.shape[1]}, {embedding.shape[1]}, seed)."
        )
    if fpfh.shape[0] != embedding.shape[0]:
        raise ValueError(
            f"fpfh and embedding must have one row per patch, but got {fpfh.shape[0]} "
            f"and {embedding.shape[0]} rows."
        )
    if fpfh.shape[0] == 0:
        raise ValueError(
            "fpfh and embedding must contain at least one patch, but got 0."
        )
    if center and fpfh.shape[0] < 2:
        raise ValueError(
            "center=True subtracts the batch mean of fpfh, which needs at least 2 "
            f"patches, but got {fpfh.shape[0]}."
        )

    fpfh = fpfh.to(embedding.dtype)
    if center:
        fpfh = fpfh - fpfh.mean(dim=0, keepdim=True)
    projected = fpfh @ projection.detach().to(
        device=embedding.device, dtype=embedding.dtype
    )
    cosine = (
        F.normalize(projected, dim=1, eps=_NORM_EPS)
        * F.normalize(embedding, dim=1, eps=_NORM_EPS)
    ).sum(dim=1)
    if mode == "squared":
        return cosine.square().mean()
    return cosine.abs().mean()


def total_loss(
    embeddings: torch.Tensor,
    labels: Any,
    fpfh: torch.Tensor | None = None,
    projection: torch.Tensor | None = None,
    *,
    w_con: float = 1.0,
    w_rd: float = 1.0,
    temperature: float = 0.1,
    mode: str = "squared",
    center: bool = False,
    return_parts: bool = False,
):
    """Compute ``w_con * L_con + w_rd * L_rd`` for one batch of patches.

    ``L_con`` is :func:`contrastive_loss_batch` of the embeddings and labels. ``L_rd``
    is :func:`disentanglement_loss` over all patches of the batch, normal and pseudo
    anomaly alike, because the FPFH branch scores both kinds at test time.

    Parameters
    ----------
    embeddings : Tensor of shape (B, D)
    labels : Tensor or ndarray of shape (B,)
        0 normal, 1 pseudo anomaly.
    fpfh : Tensor of shape (B, d_fpfh), optional
        Needed unless ``w_rd`` is 0.
    projection : Tensor of shape (d_fpfh, D), optional
        From :func:`fpfh_projection`. Needed unless ``w_rd`` is 0.
    w_con, w_rd : float, default 1.0
        Weights, >= 0. Both terms lie on comparable scales (``L_rd`` in [0, 1],
        ``L_con`` of order log(1 + M / P)), so equal weights are the default.
    temperature : float, default 0.1
    mode : {"squared", "absolute"}, default "squared"
    center : bool, default False
        Passed to :func:`disentanglement_loss`.
    return_parts : bool, default False
        Also return the unweighted terms, for logging.

    Returns
    -------
    Tensor of shape (), or (Tensor, dict)
        The weighted sum, and with ``return_parts`` a dict with the tensors
        ``"contrastive"`` and ``"disentanglement"``.

    Raises
    ------
    ValueError
        If a weight is negative or not finite, ``fpfh`` or ``projection`` is missing
        while ``w_rd > 0``, or a term rejects its input.
    """
    w_con = check_real(w_con, "w_con", allow_zero=True)
    w_rd = check_real(w_rd, "w_rd", allow_zero=True)
    contrastive = contrastive_loss_batch(embeddings, labels, temperature)
    if w_rd > 0:
        if fpfh is None or projection is None:
            raise ValueError(
                f"fpfh and projection are required when w_rd > 0 (got w_rd={w_rd}). "
                "Pass both, or set w_rd=0 to train with the contrastive loss alone."
            )
        disentanglement = disentanglement_loss(
            fpfh, embeddings, projection, mode=mode, center=center
        )
    else:
        disentanglement = torch.zeros(
            (), dtype=embeddings.dtype, device=embeddings.device
        )
    total = w_con * contrastive + w_rd * disentanglement
    if return_parts:
        return total, {"contrastive": contrastive, "disentanglement": disentanglement}
    return total
