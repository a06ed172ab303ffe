"""PointNet++ in plain torch: farthest point sampling, ball query and a patch encoder.

Every operation here is written with ordinary tensor operations, so the module needs
no compiled CUDA or C++ extension and runs on any device torch supports. Tensors are
channels-last, as in the rest of zal3d: points ``(B, N, 3)``, features ``(B, N, C)``.

The encoder follows PointNet++ (Qi et al., "PointNet++: Deep Hierarchical Feature
Learning on Point Sets in a Metric Space", NeurIPS 2017) with single-scale grouping:
two set-abstraction levels, one level that groups all points, and a linear head.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._device import check_float_tensor, check_seed, seeded

__all__ = [
    "PointNet2Encoder",
    "SetAbstraction",
    "ball_query",
    "farthest_point_sample",
    "group",
]

logger = logging.getLogger(__name__)

# Number of (centre, point) pairs whose distances ball_query computes in one block.
# A block then needs a few tens of MiB of temporary memory. When B * N alone exceeds
# this number, each block takes one centre per cloud and needs more.
_BALL_QUERY_PAIRS = 1 << 20

_NORMS = ("layer", "batch", "none")


def _check_count(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an int, but got {type(value).__name__} {value!r}."
        )
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, but got {value}.")
    return value


def _check_radius(radius: Any, name: str = "radius") -> float:
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real):
        raise TypeError(
            f"{name} must be a real number, but got {type(radius).__name__} {radius!r}."
        )
    radius = float(radius)
    if not (radius > 0 and radius < float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, but got {radius!r}.")
    return radius


def _check_start(
    start: Any, batch: int, n_points: int, device: torch.device
) -> torch.Tensor:
    if start is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    if isinstance(start, numbers.Integral) and not isinstance(start, bool):
        index = int(start)
        if not 0 <= index < n_points:
            raise ValueError(
                f"start must be in [0, {n_points}) for clouds of {n_points} points, "
                f"but got {index}."
            )
        return torch.full((batch,), index, dtype=torch.long, device=device)
    if (
        not isinstance(start, torch.Tensor)
        or start.is_floating_point()
        or start.is_complex()
    ):
        raise TypeError(
            "start must be None, an int or an integer tensor of shape (B,), but got "
            f"{type(start).__name__}."
        )
    if start.shape != (batch,):
        raise ValueError(
            f"start must have shape ({batch},), one index per cloud, but got "
            f"{tuple(start.shape)}."
        )
    start = start.to(device=device, dtype=torch.long)
    if batch and (int(start.min()) < 0 or int(start.max()) >= n_points):
        raise ValueError(
            f"start must contain indices in [0, {n_points}), but got values from "
            f"{int(start.min())} to {int(start.max())}."
        )
    return start


def farthest_point_sample(
    xyz: torch.Tensor, n_samples: int, start: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Pick ``n_samples`` points of each cloud by farthest point sampling.

    The first pick is ``start``. Each next pick is the point whose squared distance to
    the nearest point already picked is the largest. The procedure is deterministic:
    ties go to the lowest index, the rule of ``torch.argmax``.

    Parameters
    ----------
    xyz : Tensor of shape (B, N, 3), floating point
        Finite coordinates.
    n_samples : int
        Number of points to pick per cloud, in ``[1, N]``.
    start : int or Tensor of shape (B,), optional
        Index of the first pick, the same for every cloud (int) or one per cloud.
        Defaults to 0.

    Returns
    -------
    Tensor of shape (B, n_samples), int64
        Indices into ``N``, in the order picked.

    Raises
    ------
    TypeError
        If ``xyz`` is not a floating-point tensor or ``start`` is not an index.
    ValueError
        If ``xyz`` is not ``(B, N, 3)`` or not finite, ``n_samples`` is outside
        ``[1, N]``, or ``start`` is outside ``[0, N)``.

    Notes
    -----
    The loop runs ``n_samples`` steps over all clouds at once and keeps one
    ``(B, N)`` tensor of distances, so the extra memory is O(B N).

    Duplicated points, such as the copies that pad a short patch to a fixed size, are
    handled without special cases. A copy of a picked point has distance 0 and is
    never picked while a point at a new location remains. Once every distinct location
    is picked, all distances are 0 and each further pick is index 0, so the output then
    repeats indices.

    Examples
    --------
    >>> xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [4, 0, 0]]])
    >>> farthest_point_sample(xyz, 3).tolist()
    [[0, 3, 1]]
    """
    xyz = check_float_tensor(xyz, "xyz", ndim=3, last=3, shape_text="(B, N, 3)")
    n_points = xyz.shape[1]
    n_samples = _check_count(n_samples, "n_samples")
    if n_samples > n_points:
        raise ValueError(
            "n_samples must be <= the number of points per cloud "
            f"({n_points}), but got {n_samples}. Pad the clouds or request fewer "
            "samples."
        )
    start = _check_start(start, xyz.shape[0], n_points, xyz.device)
    return _farthest_point_sample(xyz, n_samples, start)


def _farthest_point_sample(
    xyz: torch.Tensor, n_samples: int, start: torch.Tensor
) -> torch.Tensor:
    batch, n_points, _ = xyz.shape
    with torch.no_grad():
        rows = torch.arange(batch, device=xyz.device)
        picked = torch.empty(batch, n_samples, dtype=torch.long, device=xyz.device)
        nearest_d2 = torch.full(
            (batch, n_points), float("inf"), dtype=xyz.dtype, device=xyz.device
        )
        current = start
        for step in range(n_samples):
            picked[:, step] = current
            centre = xyz[rows, current]
            d2 = ((xyz - centre[:, None, :]) ** 2).sum(dim=-1)
            nearest_d2 = torch.minimum(nearest_d2, d2)
            current = nearest_d2.argmax(dim=1)
    return picked


def ball_query(
    xyz: torch.Tensor, centres: torch.Tensor, radius: float, n_sample: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Find up to ``n_sample`` points within ``radius`` of each centre, nearest first.

    A point belongs to the ball when its squared distance ``d2`` to the centre satisfies
    ``d2 <= radius**2``, with both sides in the dtype of ``xyz``. The ball is closed,
    so a point at exactly ``radius`` is inside, as in
    ``scipy.spatial.cKDTree.query_ball_point`` (SciPy 1.17) and
    ``zal3d_core.neighbors.KDTree.query_radius``. The widely copied PointNet++ CUDA
    ball-query kernels differ: they test ``d2 < radius**2`` and keep the first points
    in index order, not the nearest.

    Parameters
    ----------
    xyz : Tensor of shape (B, N, 3), floating point
        Finite coordinates of the points.
    centres : Tensor of shape (B, S, 3), same dtype and device as ``xyz``
        Ball centres. They need not be points of ``xyz``.
    radius : float
        Ball radius, > 0, in the units of ``xyz``.
    n_sample : int
        Number of indices returned per ball, >= 1. It may exceed ``N``.

    Returns
    -------
    idx : Tensor of shape (B, S, n_sample), int64
        Indices into ``N``, sorted by distance to the centre and then by index. When
        the ball contains fewer than ``n_sample`` points, the remaining slots repeat the
        nearest point's index. When it contains none, every slot is the index of the
        nearest point of the cloud, which lies outside the ball. Every index is in
        ``[0, N)``, so ``idx`` can always be used to index the points.
    count : Tensor of shape (B, S), int64
        Number of points in the ball, before the cut to ``n_sample``: slots
        ``j < min(count, n_sample)`` are distinct points inside the ball. A count of 0
        marks an empty ball.

    Raises
    ------
    TypeError
        If ``xyz`` or ``centres`` is not a floating-point tensor.
    ValueError
        If the shapes are not ``(B, N, 3)`` and ``(B, S, 3)`` with the same ``B``, the
        dtypes or devices differ, a value is not finite, ``N`` is 0, ``radius`` is not
        positive or ``n_sample < 1``.

    Notes
    -----
    Sorting by distance keeps the nearest points when the ball contains more than
    ``n_sample`` of them. Padding with an index inside the ball keeps a max pool over
    the group unchanged. The distances are computed for blocks of centres, so the
    temporary memory stays bounded for large clouds, but the time is O(B S N log N).

    Examples
    --------
    >>> xyz = torch.arange(6.0)[None, :, None] * torch.tensor([1.0, 0, 0])
    >>> centres = torch.tensor([[[0.1, 0, 0], [2.5, 0, 0], [100, 0, 0]]])
    >>> idx, count = ball_query(xyz, centres, 1.5, 4)
    >>> idx.tolist()
    [[[0, 1, 0, 0], [2, 3, 1, 4], [5, 5, 5, 5]]]
    >>> count.tolist()
    [[2, 4, 0]]
    """
    xyz = check_float_tensor(xyz, "xyz", ndim=3, last=3, shape_text="(B, N, 3)")
    centres = check_float_tensor(
        centres, "centres", ndim=3, last=3, shape_text="(B, S, 3)"
    )
    if centres.shape[0] != xyz.shape[0]:
        raise ValueError(
            f"centres must have the batch size of xyz ({xyz.shape[0]}), but got "
            f"shape {tuple(centres.shape)}."
        )
    if centres.dtype != xyz.dtype or centres.device != xyz.device:
        raise ValueError(
            f"centres must have the dtype and device of xyz ({xyz.dtype} on "
            f"{xyz.device}), but got {centres.dtype} on {centres.device}. Convert with "
            "centres.to(xyz)."
        )
    if xyz.shape[1] == 0:
        raise ValueError("xyz must contain at least one point per cloud, but N is 0.")
    radius = _check_radius(radius)
    n_sample = _check_count(n_sample, "n_sample")
    return _ball_query(xyz, centres, radius, n_sample)


def _ball_query(
    xyz: torch.Tensor, centres: torch.Tensor, radius: float, n_sample: int
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, n_centres, _ = centres.shape
    n_points = xyz.shape[1]
    n_nearest = min(n_sample, n_points)
    block = max(1, _BALL_QUERY_PAIRS // max(1, batch * n_points))
    slots = torch.arange(n_sample, device=xyz.device)
    idx_blocks = []
    count_blocks = []
    with torch.no_grad():
        for first in range(0, n_centres, block):
            part = centres[:, first : first + block]
            d2 = ((part[:, :, None, :] - xyz[:, None, :, :]) ** 2).sum(dim=-1)
            count = (d2 <= radius * radius).sum(dim=-1)
            # A stable sort orders equal distances by index, so the result does not
            # depend on the sort algorithm of the device.
            order = torch.sort(d2, dim=-1, stable=True).indices[..., :n_nearest]
            nearest = order[..., :1]
            if n_nearest < n_sample:
                order = torch.cat(
                    [order, nearest.expand(-1, -1, n_sample - n_nearest)], -1
                )
            idx_blocks.append(torch.where(slots < count[..., None], order, nearest))
            count_blocks.append(count)
    if not idx_blocks:
        empty = torch.empty(batch, 0, n_sample, dtype=torch.long, device=xyz.device)
        return empty, torch.empty(batch, 0, dtype=torch.long, device=xyz.device)
    return torch.cat(idx_blocks, dim=1), torch.cat(count_blocks, dim=1)


def group(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather rows of ``values`` per cloud: ``out[b, ...] = values[b, idx[b, ...]]``.

    Parameters
    ----------
    values : Tensor of shape (B, N, C)
        Points or features, any dtype.
    idx : integer Tensor of shape (B, ...)
        Indices into ``N``, on the device of ``values``; for example ``(B, S)`` from
        :func:`farthest_point_sample` or ``(B, S, K)`` from :func:`ball_query`.

    Returns
    -------
    Tensor of shape (B, ..., C)
        The gathered rows. Gradients flow back to ``values``.

    Raises
    ------
    TypeError
        If ``values`` is not a tensor or ``idx`` is not an integer tensor.
    ValueError
        If the shapes or devices do not match, or an index is outside ``[0, N)``.

    Examples
    --------
    >>> values = torch.tensor([[[0.0], [10.0], [20.0]]])
    >>> group(values, torch.tensor([[[2, 0], [1, 1]]])).squeeze(-1).tolist()
    [[[20.0, 0.0], [10.0, 10.0]]]
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(
            f"values must be a torch.Tensor of shape (B, N, C), but got "
            f"{type(values).__name__}."
        )
    if values.ndim != 3:
        raise ValueError(
            f"values must have shape (B, N, C), but got {tuple(values.shape)}. Add a "
            "channel axis with values[..., None]."
        )
    if not isinstance(idx, torch.Tensor) or idx.is_floating_point() or idx.is_complex():
        raise TypeError(
            f"idx must be an integer torch.Tensor, but got "
            f"{getattr(idx, 'dtype', type(idx).__name__)}."
        )
    if idx.ndim < 2 or idx.shape[0] != values.shape[0]:
        raise ValueError(
            f"idx must have shape (B, ...) with B = {values.shape[0]} and at least two "
            f"dimensions, but got {tuple(idx.shape)}."
        )
    if idx.device != values.device:
        raise ValueError(
            f"idx must be on the device of values ({values.device}), but is on "
            f"{idx.device}."
        )
    n_points = values.shape[1]
    if idx.numel():
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= n_points:
            raise ValueError(
                f"idx must contain indices in [0, {n_points}), but got values from "
                f"{low} to {high}."
            )
    return _group(values, idx.long())


def _group(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    batch, channels = values.shape[0], values.shape[-1]
    flat = idx.reshape(batch, -1, 1).expand(-1, -1, channels)
    return values.gather(1, flat).reshape(*idx.shape, channels)


def _farthest_from_centroid(xyz: torch.Tensor) -> torch.Tensor:
    """Return the index of each cloud's point farthest from its centroid, shape (B,)."""
    with torch.no_grad():
        centred = xyz - xyz.mean(dim=1, keepdim=True)
        return (centred**2).sum(dim=-1).argmax(dim=1)


class _SharedMLP(nn.Module):
    """Linear, norm and ReLU layers applied to the last axis of a (..., C) input."""

    def __init__(self, in_channels: int, channels: Sequence[int], norm: str):
        super().__init__()
        self.norm = norm
        layers = []
        previous = in_channels
        for width in channels:
            # BatchNorm subtracts each channel's batch mean, which would cancel a
            # bias. LayerNorm normalises across channels and does not.
            layers.append(nn.Linear(previous, width, bias=norm != "batch"))
            if norm == "layer":
                layers.append(nn.LayerNorm(width))
            elif norm == "batch":
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            previous = width
        self.layers = nn.ModuleList(layers)
        self.out_channels = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        for layer in self.layers:
            if isinstance(layer, nn.BatchNorm1d):
                x = layer(x.reshape(-1, x.shape[-1])).reshape(*shape, -1)
            else:
                x = layer(x)
        return x


def _check_channels(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise TypeError(
            f"{name} must be a non-empty sequence of layer widths, such as (32, 64), "
            f"but got {value!r}."
        )
    return tuple(_check_count(width, f"{name} entries") for width in value)


def _check_norm(norm: Any) -> str:
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, but got {norm!r}.")
    return norm


class SetAbstraction(nn.Module):
    """PointNet++ set-abstraction level: sample centres, group, shared MLP, max pool.

    Each group contains the coordinates of its points relative to the centre, divided by
    ``radius``, concatenated with the points' input features. Dividing by the radius
    puts the relative coordinates of every level in ``[-1, 1]``. A shared MLP maps each
    point of a group, and a max pool over the group gives the centre's feature.

    Parameters
    ----------
    n_centres : int or None
        Number of centres picked by farthest point sampling. Ignored with
        ``group_all``.
    radius : float or None
        Ball-query radius in the units of the input coordinates. Ignored with
        ``group_all``.
    n_sample : int or None
        Points per group. Ignored with ``group_all``.
    in_channels : int
        Number of input feature channels, 0 when the level gets coordinates only.
    mlp_channels : sequence of int
        Widths of the shared MLP's layers.
    group_all : bool, default False
        Group every point around the cloud's centroid into one group, in place of
        sampling and ball query. The relative coordinates are then not divided.
    norm : {"layer", "batch", "none"}, default "layer"
        Normalisation after each linear layer. See :class:`PointNet2Encoder`.

    Notes
    -----
    Farthest point sampling starts at the point farthest from the centroid of the
    input points, in place of index 0. The picked centres then depend on the geometry
    alone and not on the order of the points, so the level is invariant to permuting
    its input points, up to exact ties in distance.
    """

    def __init__(
        self,
        n_centres: int | None,
        radius: float | None,
        n_sample: int | None,
        in_channels: int,
        mlp_channels: Sequence[int],
        group_all: bool = False,
        *,
        norm: str = "layer",
    ):
        super().__init__()
        self.group_all = bool(group_all)
        if self.group_all:
            self.n_centres = self.radius = self.n_sample = None
        else:
            self.n_centres = _check_count(n_centres, "n_centres")
            self.radius = _check_radius(radius)
            self.n_sample = _check_count(n_sample, "n_sample")
        self.in_channels = _check_count(in_channels, "in_channels", minimum=0)
        channels = _check_channels(mlp_channels, "mlp_channels")
        self.mlp = _SharedMLP(3 + self.in_channels, channels, _check_norm(norm))
        self.out_channels = self.mlp.out_channels

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Abstract ``(B, N, 3)`` points with ``(B, N, C)`` features into centres.

        Returns
        -------
        centres : Tensor of shape (B, S, 3)
            Picked centres, or ``(B, 1, 3)`` centroids with ``group_all``.
        features : Tensor of shape (B, S, out_channels)
            Max-pooled group features.
        """
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            raise ValueError(
                f"xyz must have shape (B, N, 3), but got {tuple(xyz.shape)}."
            )
        channels = 0 if features is None else features.shape[-1]
        if channels != self.in_channels or (
            features is not None and features.shape[:2] != xyz.shape[:2]
        ):
            got = None if features is None else tuple(features.shape)
            raise ValueError(
                f"features must have shape ({xyz.shape[0]}, {xyz.shape[1]}, "
                f"{self.in_channels}) to match xyz and in_channels, but got {got}."
            )
        if not self.group_all and self.n_centres > xyz.shape[1]:
            raise ValueError(
                f"this level picks {self.n_centres} centres, but the input has only "
                f"{xyz.shape[1]} points per cloud."
            )

        if self.group_all:
            centres = xyz.mean(dim=1, keepdim=True)
            grouped = (xyz - centres)[:, None]
            grouped_features = None if features is None else features[:, None]
        else:
            start = _farthest_from_centroid(xyz)
            centre_idx = _farthest_point_sample(xyz, self.n_centres, start)
            centres = _group(xyz, centre_idx)
            idx, _ = _ball_query(xyz, centres, self.radius, self.n_sample)
            grouped = (_group(xyz, idx) - centres[:, :, None]) / self.radius
            grouped_features = None if features is None else _group(features, idx)

        if grouped_features is not None:
            grouped = torch.cat([grouped, grouped_features], dim=-1)
        return centres, self.mlp(grouped).amax(dim=2)


class PointNet2Encoder(nn.Module):
    """PointNet++ encoder that embeds point patches into feature vectors.

    The network has two set-abstraction levels, a level that groups all points and a
    linear head. With the defaults it has 88,032 parameters. On 2 cores of an AMD
    EPYC CPU (torch 2.14.1, float32, batches of 1000 patches of 64 points), the best
    of several runs took 0.55 s per 1000 patches forward and 1.7 s forward and
    backward. Other jobs shared those cores and median runs were 2 to 5 times slower,
    so treat the numbers as estimates.

    Parameters
    ----------
    out_dim : int, default 64
        Size of the embedding.
    n_points : int, default 64
        Number of points per patch. ``forward`` rejects patches of another size.
    n_centres : (int, int), default (32, 8)
        Centres picked by the first and second set-abstraction levels, with
        ``n_centres[1] <= n_centres[0] <= n_points``.
    radii : (float, float), default (0.4, 0.8)
        Ball-query radii of the two levels. With ``normalize_scale`` they are in units
        of the patch radius, because each patch is scaled to fit the unit ball.
        Otherwise they are in the input units.
    n_sample : (int, int), default (16, 16)
        Points per group in the two levels.
    mlp_channels : three sequences of int
        Layer widths of the shared MLPs of the three levels. The default is
        ``((32, 32, 64), (64, 64, 128), (128, 256))``.
    norm : {"layer", "batch", "none"}, default "layer"
        Normalisation after each linear layer of the shared MLPs. LayerNorm is the
        default because it normalises each point's features on its own. A patch's
        embedding then depends on neither the other patches in the batch nor on
        train or eval mode. A batch-dependent embedding could let the contrastive
        loss be lowered through batch statistics. "batch" gives the BatchNorm of the
        original PointNet++.
    normalize_scale : bool, default True
        Divide each centred patch by its largest distance from the centroid, so it
        fits the unit ball. The embedding is then unit-free: the same surface scanned
        in metres or millimetres gives the same features, and the radii do not depend
        on the units of the scan. The absolute size of a patch is lost. For patches of a
        fixed point count, that size reflects the sampling density of the scan more
        than the shape of the surface.
    min_scale : float, default 1e-9
        Smallest patch radius, in input units, that the scale normalisation divides
        by. A patch whose points all coincide has radius 0 and maps to the origin,
        without NaN.
    seed : int, optional
        Seed for the initial weights. ``None`` draws them from torch's global
        generator. A seed leaves the global generator's state as it was.

    Notes
    -----
    ``forward`` always subtracts each patch's centroid, so the embedding does not
    depend on where the patch sits in the scan. The centroid is computed in the dtype
    of the encoder (float32 by default). Centre patches far from the origin in float64
    before calling it.

    The embedding is invariant to the order of a patch's points: sampling starts at
    the point farthest from the centroid, ball queries sort by distance and every
    group is max-pooled. Exact ties in distance, such as those of duplicated points,
    are broken by index, so there the invariance can fail.

    Examples
    --------
    >>> encoder = PointNet2Encoder(out_dim=16, seed=0).eval()
    >>> encoder(torch.rand(5, 64, 3)).shape
    torch.Size([5, 16])
    """

    def __init__(
        self,
        out_dim: int = 64,
        n_points: int = 64,
        *,
        n_centres: Sequence[int] = (32, 8),
        radii: Sequence[float] = (0.4, 0.8),
        n_sample: Sequence[int] = (16, 16),
        mlp_channels: Sequence[Sequence[int]] = (
            (32, 32, 64),
            (64, 64, 128),
            (128, 256),
        ),
        norm: str = "layer",
        normalize_scale: bool = True,
        min_scale: float = 1e-9,
        seed: int | None = None,
    ):
        super().__init__()
        self.out_dim = _check_count(out_dim, "out_dim")
        self.n_points = _check_count(n_points, "n_points")
        n_centres = self._check_pair(n_centres, "n_centres")
        n_sample = self._check_pair(n_sample, "n_sample")
        if not isinstance(radii, Sequence) or len(radii) != 2:
            raise ValueError(f"radii must contain 2 values, but got {radii!r}.")
        radii = tuple(_check_radius(r, "radii") for r in radii)
        if not n_centres[1] <= n_centres[0] <= self.n_points:
            raise ValueError(
                f"n_centres must satisfy n_centres[1] <= n_centres[0] <= n_points "
                f"({self.n_points}), but got {n_centres}."
            )
        if isinstance(mlp_channels, (str, bytes)) or len(mlp_channels) != 3:
            raise ValueError(
                "mlp_channels must contain 3 sequences of layer widths, one per level, "
                f"but got {mlp_channels!r}."
            )
        self.normalize_scale = bool(normalize_scale)
        self.min_scale = _check_radius(min_scale, "min_scale")
        seed = check_seed(seed)

        with seeded(seed):
            self.sa1 = SetAbstraction(
                n_centres[0], radii[0], n_sample[0], 0, mlp_channels[0], norm=norm
            )
            self.sa2 = SetAbstraction(
                n_centres[1],
                radii[1],
                n_sample[1],
                self.sa1.out_channels,
                mlp_channels[1],
                norm=norm,
            )
            self.sa3 = SetAbstraction(
                None,
                None,
                None,
                self.sa2.out_channels,
                mlp_channels[2],
                True,
                norm=norm,
            )
            self.head = nn.Linear(self.sa3.out_channels, self.out_dim)

    @staticmethod
    def _check_pair(value: Any, name: str) -> tuple[int, int]:
        if (
            isinstance(value, (str, bytes))
            or not isinstance(value, Sequence)
            or len(value) != 2
        ):
            raise ValueError(
                f"{name} must contain 2 ints, one per level, but got {value!r}."
            )
        return (_check_count(value[0], name), _check_count(value[1], name))

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """Embed patches of shape ``(B, n_points, 3)`` into ``(B, out_dim)`` features.

        Raises
        ------
        TypeError
            If ``xyz`` is not a floating-point tensor.
        ValueError
            If ``xyz`` is not ``(B, n_points, 3)``, is not finite, or is on another
            device than the encoder.
        """
        shape_text = f"(B, {self.n_points}, 3)"
        xyz = check_float_tensor(xyz, "xyz", ndim=3, last=3, shape_text=shape_text)
        if xyz.shape[1] != self.n_points:
            raise ValueError(
                f"xyz must have shape {shape_text}: this encoder was built for "
                f"n_points={self.n_points}, but got {xyz.shape[1]} points per patch. "
                "Resample the patches to that size."
            )
        weight = self.head.weight
        if xyz.device != weight.device:
            raise ValueError(
                f"xyz is on {xyz.device} but the encoder is on {weight.device}. Move "
                f"one of them, e.g. xyz.to({str(weight.device)!r})."
            )
        xyz = xyz.to(weight.dtype)

        centred = xyz - xyz.mean(dim=1, keepdim=True)
        if self.normalize_scale:
            radius2 = (centred**2).sum(dim=-1).amax(dim=1)
            # Clamping the squared radius keeps sqrt and its gradient finite at 0.
            radius = radius2.clamp_min(self.min_scale**2).sqrt()
            centred = centred / radius[:, None, None]

        centres, features = self.sa1(centred)
        centres, features = self.sa2(centres, features)
        _, features = self.sa3(centres, features)
        return self.head(features[:, 0])
