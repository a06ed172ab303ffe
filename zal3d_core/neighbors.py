"""Nearest-neighbour search: a Numba KD-tree with k-nearest, radius and hybrid queries."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ._kernels import _kdtree
from ._numba import num_threads
from ._validation import as_float_array, center_points, check_int, check_points, check_positive

__all__ = ["KDTree"]


class KDTree:
    """KD-tree over points of shape (N, D), built and queried with Numba kernels.

    Results equal those of :class:`scipy.spatial.cKDTree` up to the order of neighbours
    at exactly equal distance, which here come in index order. The tree subtracts the
    centre of the points (in float64) before building, so coordinates far from the
    origin keep their precision.

    Parameters
    ----------
    points : array-like of shape (n_points, n_dims)
        Finite coordinates. Rows containing NaN are rejected: drop missing points first.
    leaf_size : int, default 16
        Largest number of points in a leaf.

    Attributes
    ----------
    n : int
        Number of points.
    m : int
        Number of dimensions.
    tree : tuple of ndarray
        The arrays the kernels in ``zal3d_core._kernels._kdtree`` take, in centred
        coordinates (see :attr:`center`).
    center : ndarray of shape (n_dims,)
        Offset subtracted from points and queries.

    Examples
    --------
    >>> import numpy as np
    >>> from zal3d_core import KDTree
    >>> tree = KDTree(np.array([[0.0, 0, 0], [1, 0, 0], [0, 2, 0]]))
    >>> distances, indices = tree.query([[0.1, 0, 0]], k=2)
    >>> indices.tolist()
    [[0, 1]]
    >>> np.round(distances, 3).tolist()
    [[0.1, 0.9]]
    """

    def __init__(self, points: Any, leaf_size: int = 16):
        points = check_points(points, "points", dim=None, min_points=1)
        self.leaf_size = check_int(leaf_size, "leaf_size", minimum=1)
        centred, self.center = center_points(points)
        self.n, self.m = centred.shape
        self.tree = _kdtree.build_tree(np.ascontiguousarray(centred), self.leaf_size)

    def _prepare_queries(self, queries: Any) -> tuple[np.ndarray, bool]:
        array = as_float_array(queries, "queries")
        single = array.ndim == 1
        if single:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.m:
            raise ValueError(
                f"queries must have shape (M, {self.m}) or ({self.m},) to match the "
                f"tree's points, but got {np.shape(queries)}."
            )
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).any(axis=1).sum())
            raise ValueError(
                f"queries contains NaN or infinite values in {bad} rows. Drop missing "
                "points before querying."
            )
        centred = np.ascontiguousarray(np.asarray(array, np.float64) - self.center)
        return centred, single

    def query(
        self,
        queries: Any,
        k: int = 1,
        *,
        distance_upper_bound: float = np.inf,
        n_jobs: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Find the ``k`` nearest points of each query.

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_dims) or (n_dims,)
        k : int, default 1
            Number of neighbours, at most the number of points in the tree.
        distance_upper_bound : float, default inf
            Only neighbours at distance ``<= distance_upper_bound`` are returned.
        n_jobs : int, optional
            Threads to use; ``None`` keeps Numba's current setting, ``-1`` uses all.

        Returns
        -------
        distances : ndarray of shape (n_queries, k), float64
            Euclidean distances, ascending. Missing neighbours (fewer than ``k`` within
            ``distance_upper_bound``) have distance ``inf``.
        indices : ndarray of shape (n_queries, k), intp
            Indices into the tree's points. Missing neighbours have index ``n``, which
            raises IndexError if used to index the points.
            A 1-D query gives arrays of shape (k,).

        Raises
        ------
        ValueError
            If ``k`` exceeds the number of points, or the queries are not finite.
        """
        k = check_int(k, "k", minimum=1)
        if k > self.n:
            raise ValueError(
                f"k={k} is larger than the number of points in the tree ({self.n}). "
                f"Pass k <= {self.n}, or use query_radius to get every neighbour "
                "within a distance."
            )
        if isinstance(distance_upper_bound, bool) or not isinstance(
            distance_upper_bound, numbers.Real
        ):
            raise TypeError(
                "distance_upper_bound must be a real number, but got "
                f"{type(distance_upper_bound).__name__} {distance_upper_bound!r}."
            )
        bound = float(distance_upper_bound)
        if not bound > 0:
            raise ValueError(
                f"distance_upper_bound must be > 0, but got {distance_upper_bound!r}."
            )
        centred, single = self._prepare_queries(queries)
        with num_threads(n_jobs):
            d2, idx, _ = _kdtree.query_knn_batch(self.tree, centred, k, bound * bound)
        distances = np.sqrt(d2)
        if single:
            return distances[0], idx[0]
        return distances, idx

    def query_radius(
        self,
        queries: Any,
        radius: float,
        max_nn: int | None = None,
        *,
        n_jobs: int | None = None,
    ):
        """Find the points within ``radius`` of each query (``d <= radius``).

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_dims) or (n_dims,)
        radius : float
            Search radius, > 0.
        max_nn : int, optional
            Keep only the ``max_nn`` nearest points within the radius: the hybrid
            search of Open3D's ``KDTreeSearchParamHybrid``.
        n_jobs : int, optional
            Threads to use; ``None`` keeps Numba's current setting, ``-1`` uses all.

        Returns
        -------
        distances, indices
            With ``max_nn``: arrays of shape (n_queries, max_nn), sorted by distance,
            padded with distance ``inf`` and index ``n``. Without: lists of 1-D arrays,
            one per query, sorted by distance. A 1-D query gives one row.
        """
        radius = check_positive(radius, "radius")
        centred, single = self._prepare_queries(queries)
        max_d2 = radius * radius
        with num_threads(n_jobs):
            if max_nn is not None:
                max_nn = check_int(max_nn, "max_nn", minimum=1)
                k = min(max_nn, self.n)
                d2, idx, _ = _kdtree.query_knn_batch(self.tree, centred, k, max_d2)
                if k < max_nn:
                    pad = max_nn - k
                    d2 = np.pad(d2, ((0, 0), (0, pad)), constant_values=np.inf)
                    idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=self.n)
                distances = np.sqrt(d2)
                if single:
                    return distances[0], idx[0]
                return distances, idx
            counts = _kdtree.count_radius_batch(self.tree, centred, max_d2)
            indptr = np.zeros(len(counts) + 1, np.intp)
            np.cumsum(counts, out=indptr[1:])
            d2, idx = _kdtree.query_radius_batch(self.tree, centred, max_d2, indptr)
        distances = np.split(np.sqrt(d2), indptr[1:-1])
        indices = np.split(idx, indptr[1:-1])
        if single:
            return distances[0], indices[0]
        return distances, indices

    def __repr__(self) -> str:
        return f"KDTree(n={self.n}, m={self.m}, leaf_size={self.leaf_size})"
