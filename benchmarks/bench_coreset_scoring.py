"""Benchmark greedy_coreset and nearest_neighbor_scores beside torch, faiss, SciPy.

Every benchmark uses the same input: a 20,000 x 1152 float32 bank, about one MVTec 3D-AD
class of patches, and 784 queries (one 28 x 28 patch grid), both standard normal with
fixed seeds. Run with::

    python -m pytest benchmarks/bench_coreset_scoring.py --benchmark-only

Run the file as a script to measure the memory of scoring against a large bank::

    /usr/bin/time -v python benchmarks/bench_coreset_scoring.py --memory 400000
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
import pytest

from zal3d_core.coreset import greedy_coreset
from zal3d_core.scoring import nearest_neighbor_scores

N_BANK = 20_000
N_DIMS = 1152
N_QUERIES = 784
RATIO = 0.1
PROJECTION_DIM = 128
N_REWEIGHT = 3


@pytest.fixture(scope="module")
def bank() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N_BANK, N_DIMS)).astype(np.float32)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.standard_normal((N_QUERIES, N_DIMS)).astype(np.float32)


def torch_k_center_greedy(features, ratio: float, projection_dim: int, seed: int = 0):
    """Select a coreset in torch on the CPU with the steps of anomalib's KCenterGreedy.

    As in ``anomalib/models/components/sampling/k_center_greedy.py``, each step takes
    ``torch.linalg.norm`` of all projected features minus the newest centre, lowers
    the running minimum with ``torch.minimum``, picks its maximum and sets that
    row's distance to 0. The projection here is a dense Gaussian matrix to
    ``projection_dim`` columns, the same as in greedy_coreset, where anomalib fits a
    sparse random projection.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    rows = torch.from_numpy(features)
    matrix = torch.randn(rows.shape[1], projection_dim, generator=generator)
    projected = rows @ (matrix / projection_dim**0.5)
    count = int(rows.shape[0] * ratio)
    picks = torch.empty(count, dtype=torch.long)
    pick = torch.tensor(0)
    picks[0] = pick
    min_distances = None
    for step in range(1, count):
        distances = torch.linalg.norm(projected - projected[pick], dim=1, keepdim=True)
        if min_distances is None:
            min_distances = distances
        else:
            min_distances = torch.minimum(min_distances, distances)
        pick = torch.argmax(min_distances[:, 0])
        min_distances[pick] = 0.0
        picks[step] = pick
    return picks.tolist()


def faiss_scores(queries, bank, n_reweight: int):
    """Score queries like nearest_neighbor_scores with a faiss IndexFlatL2.

    A k=1 search finds the nearest bank rows, and a k=n_reweight search from those
    rows finds the supports. In a bank without duplicate rows each row comes first in
    its own results. NumPy then applies the re-weighting.
    """
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    _, nearest = index.search(queries, 1)
    centres, inverse = np.unique(nearest[:, 0], return_inverse=True)
    _, neighbours = index.search(bank[centres], n_reweight)
    support = neighbours[inverse]
    distances = np.sqrt(((queries[:, None, :] - bank[support]) ** 2).sum(axis=-1))
    total = np.exp(distances - distances[:, :1]).sum(axis=1)
    return (1.0 - 1.0 / total) * distances[:, 0]


@pytest.mark.benchmark(group="coreset")
def test_coreset_zal3d(benchmark, bank):
    greedy_coreset(bank[:2000], ratio=RATIO, projection_dim=PROJECTION_DIM)  # compile
    picks = benchmark.pedantic(
        greedy_coreset,
        args=(bank,),
        kwargs={"ratio": RATIO, "projection_dim": PROJECTION_DIM},
        rounds=7,
        warmup_rounds=1,
    )
    assert len(picks) == int(N_BANK * RATIO)


@pytest.mark.benchmark(group="coreset")
def test_coreset_zal3d_one_thread(benchmark, bank):
    # One Numba thread runs the projection and the steps with no barrier between
    # threads, so it shows what the kernel does when the other cores are busy.
    greedy_coreset(bank[:2000], ratio=RATIO, projection_dim=PROJECTION_DIM, n_jobs=1)
    picks = benchmark.pedantic(
        greedy_coreset,
        args=(bank,),
        kwargs={"ratio": RATIO, "projection_dim": PROJECTION_DIM, "n_jobs": 1},
        rounds=7,
        warmup_rounds=1,
    )
    assert len(picks) == int(N_BANK * RATIO)


@pytest.mark.benchmark(group="coreset")
def test_coreset_torch(benchmark, bank):
    pytest.importorskip("torch")
    picks = benchmark.pedantic(
        torch_k_center_greedy,
        args=(bank, RATIO, PROJECTION_DIM),
        rounds=7,
        warmup_rounds=1,
    )
    assert len(picks) == int(N_BANK * RATIO)


@pytest.mark.benchmark(group="scoring")
def test_scoring_zal3d(benchmark, bank, queries):
    nearest_neighbor_scores(queries[:10], bank[:100], N_REWEIGHT)  # compile
    scores = benchmark.pedantic(
        nearest_neighbor_scores,
        args=(queries, bank, N_REWEIGHT),
        rounds=7,
        warmup_rounds=1,
    )
    expected = faiss_scores(queries[:50], bank, N_REWEIGHT)
    np.testing.assert_allclose(scores[:50], expected, rtol=1e-4)


@pytest.mark.benchmark(group="scoring")
def test_scoring_faiss(benchmark, bank, queries):
    pytest.importorskip("faiss")
    scores = benchmark.pedantic(
        faiss_scores,
        args=(queries, bank, N_REWEIGHT),
        rounds=7,
        warmup_rounds=1,
    )
    assert scores.shape == (N_QUERIES,)


@pytest.mark.benchmark(group="scoring")
def test_scoring_ckdtree_nearest_only(benchmark, bank, queries):
    from scipy.spatial import cKDTree

    def nearest_distances():
        return cKDTree(bank).query(queries, k=1, workers=-1)[0]

    distances = benchmark.pedantic(nearest_distances, rounds=1)
    assert distances.shape == (N_QUERIES,)


def measure_memory(n_bank: int, n_queries: int, n_dims: int = N_DIMS) -> None:
    """Score queries against a large float32 bank and print time and peak memory."""
    rng = np.random.default_rng(0)
    bank = np.empty((n_bank, n_dims), np.float32)
    for start in range(0, n_bank, 10_000):
        stop = min(n_bank, start + 10_000)
        bank[start:stop] = rng.standard_normal((stop - start, n_dims))
    queries = rng.standard_normal((n_queries, n_dims)).astype(np.float32)
    nearest_neighbor_scores(queries[:10], bank[:100], N_REWEIGHT)  # compile
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    tracemalloc.start()
    started = time.perf_counter()
    scores = nearest_neighbor_scores(queries, bank, N_REWEIGHT)
    seconds = time.perf_counter() - started
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    mib = 2**20
    print(f"bank {n_bank} x {n_dims} float32: {bank.nbytes / mib:.0f} MiB")
    print(f"queries {n_queries} x {n_dims} float32: {queries.nbytes / mib:.1f} MiB")
    print(f"scoring time: {seconds:.1f} s, max score {scores.max():.4f}")
    print(f"tracemalloc peak during scoring: {traced_peak / mib:.1f} MiB")
    print(
        f"peak RSS before scoring: {before / mib:.0f} MiB, after: {after / mib:.0f} MiB"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--memory",
        type=int,
        metavar="N_BANK",
        required=True,
        help="number of bank rows (1152 float32 columns) to score against",
    )
    parser.add_argument("--queries", type=int, default=7840, help="number of queries")
    options = parser.parse_args()
    measure_memory(options.memory, options.queries)
