"""Training of the 3DzAL point branch: pseudo anomalies, contrastive training, checkpoints.

The training set is built from the normal scans of the training class only:

1. the untrained, randomly initialised ResNet-50 of :func:`inductive_bias_map` scores
   each scan's pixels, and its top pixels (spread by a minimum distance) are anchors;
2. :func:`zal3d_core.synthesis.synthesize_organized` removes the KD-tree neighbourhood
   of each anchor ("removing") or attaches a patch cut from a procedural shape
   ("adding"), directly in the organized cloud;
3. the changed cloud goes through the same patch extraction as a test scan, and its
   patches that the change covers by at least ``min_overlap`` of their receptive field
   are pseudo-anomaly patches; the patches of the unchanged scan are normal patches.

Because pseudo anomalies pass through the same extraction as test scans, the encoder
and the classifier never see a feature that test data could not produce.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zal3d_core._progress import iterate_with_progress
from zal3d_core.patches import organized_patch_points, patch_boxes
from zal3d_core.shapes import sample_random_shape
from zal3d_core.synthesis import random_anchors, select_anchors, synthesize_organized

from ._device import seeded
from .losses import contrastive_loss_batch, disentanglement_loss

logger = logging.getLogger(__name__)

__all__ = [
    "TrainingData",
    "build_training_data",
    "load_checkpoint",
    "save_checkpoint",
    "train_encoder",
]

CHECKPOINT_FORMAT = "zal3d-torch-checkpoint"
CHECKPOINT_VERSION = 1
ANOMALY_TYPES = ("both", "adding", "removing")


@dataclasses.dataclass
class TrainingData:
    """Patches of the training scans: normal ones and pseudo anomalies.

    Attributes
    ----------
    normal_points, pseudo_points : ndarray of shape (n, n_points, 3), float32
        Centred point sets of normal and pseudo-anomaly patches.
    normal_fpfh, pseudo_fpfh : ndarray of shape (n, 33), float32
        Pooled FPFH features of the same patches.
    normal_scan, pseudo_scan : ndarray of shape (n,), int64
        Index of the normal scan each patch comes from; a pseudo-anomaly patch gets
        the index of the scan its synthesised variant was made from.
    n_samples : int
        Number of normal scans used.
    n_variants : int
        Number of synthesised scans.
    """

    normal_points: np.ndarray
    normal_fpfh: np.ndarray
    pseudo_points: np.ndarray
    pseudo_fpfh: np.ndarray
    n_samples: int
    n_variants: int
    normal_scan: np.ndarray
    pseudo_scan: np.ndarray


def _variant_kinds(anomaly_types: str, count: int, rng: np.random.Generator) -> list[str]:
    if anomaly_types == "both":
        # Alternate from a random first kind, so both kinds are equally frequent.
        first = int(rng.integers(2))
        return [("adding", "removing")[(first + i) % 2] for i in range(count)]
    return [anomaly_types] * count


def _overlap(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of each patch's receptive field covered by ``mask``."""
    integral = np.pad(np.cumsum(np.cumsum(mask, axis=0), axis=1), ((1, 0), (1, 0)))
    y0, y1, x0, x1 = boxes.T
    covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return covered / ((y1 - y0) * (x1 - x0))


def build_training_data(
    samples: Sequence[Any],
    fpfh_backend: Any,
    *,
    anomaly_types: str = "both",
    bias_cnn: str = "random",
    n_anchors: int = 4,
    variants_per_sample: int = 2,
    k: int = 128,
    n_points: int = 64,
    min_overlap: float = 0.2,
    max_normal_per_sample: int = 256,
    seed: int = 0,
    device: Any = None,
    progress: bool = False,
) -> TrainingData:
    """Synthesise pseudo anomalies on normal scans and collect their patches.

    Parameters
    ----------
    samples : sequence of Sample
        Preprocessed normal scans (organized ``xyz``).
    fpfh_backend : zal3d_core.backend.FPFHBackend
        Gives the pooled FPFH features and the patch grid.
    anomaly_types : {"both", "adding", "removing"}, default "both"
        Kinds of pseudo anomaly; "both" alternates them over the synthesised scans.
    bias_cnn : {"random", "pretrained", "none"}, default "random"
        Anchor source: the untrained ResNet-50 bias map (the method's choice), the
        ImageNet-pretrained ResNet-50 (ablation; needs the weights in the torch hub
        cache), or uniformly random valid pixels (ablation without a bias map).
    n_anchors : int, default 4
        Anchors per synthesised scan.
    variants_per_sample : int, default 2
        Synthesised scans per normal scan.
    k : int, default 128
        Points per removed or covered neighbourhood (about 128 pixels of a 224 x 224
        scan, the size of typical MVTec 3D-AD defects).
    n_points : int, default 64
        Points per patch point set.
    min_overlap : float, default 0.2
        A patch of a synthesised scan is a pseudo anomaly when the change covers at
        least this share of its receptive field; patches touched less are left out.
    max_normal_per_sample : int, default 256
        Normal patches kept per scan (a seeded random subset), which bounds the
        training set on CPU.
    seed : int, default 0
    device : str or torch.device, optional
        Device of the bias-map network.
    progress : bool, default False

    Returns
    -------
    TrainingData
    """
    from .resnet import inductive_bias_map

    if anomaly_types not in ANOMALY_TYPES:
        raise ValueError(
            f"anomaly_types must be one of {', '.join(ANOMALY_TYPES)}, but got "
            f"{anomaly_types!r}."
        )
    if bias_cnn not in ("random", "pretrained", "none"):
        raise ValueError(
            f"bias_cnn must be 'random', 'pretrained' or 'none', but got {bias_cnn!r}."
        )
    if len(samples) == 0:
        raise ValueError("build_training_data needs at least one normal scan, but got none.")
    rng = np.random.default_rng(seed)
    normal_points, normal_fpfh, pseudo_points, pseudo_fpfh = [], [], [], []
    normal_scan, pseudo_scan = [], []
    n_variants = 0
    started = time.perf_counter()
    steps = iterate_with_progress(samples, desc="pseudo anomalies", enabled=progress)
    for index, sample in enumerate(steps):
        xyz = sample.xyz
        base = fpfh_backend.extract(sample)
        points, _ = organized_patch_points(xyz, fpfh_backend.grid, fpfh_backend.pool_kernel,
                                           n_points)
        rows = np.flatnonzero(base.patch_valid)
        if rows.size > max_normal_per_sample:
            rows = np.sort(rng.choice(rows, max_normal_per_sample, replace=False))
        normal_points.append(points[rows])
        normal_fpfh.append(base.features[rows])
        normal_scan.append(np.full(rows.size, index, np.int64))

        valid = base.valid
        if bias_cnn == "none":
            score_map = None
        else:
            weights = "random" if bias_cnn == "random" else "imagenet"
            score_map = inductive_bias_map(xyz, weights=weights, seed=seed, device=device)
        boxes = patch_boxes(valid.shape, fpfh_backend.grid, fpfh_backend.pool_kernel)
        kinds = _variant_kinds(anomaly_types, variants_per_sample, rng)
        # Each variant takes a different slice of the ranked anchors, so the variants of
        # one scan change different places.
        if score_map is None:
            anchors = random_anchors(valid, n_anchors * variants_per_sample,
                                     seed=int(rng.integers(2**31)))
        else:
            anchors = select_anchors(score_map, valid, n_anchors * variants_per_sample,
                                     seed=int(rng.integers(2**31)))
        n_valid = int(valid.sum())
        for v, kind in enumerate(kinds):
            chosen = anchors[v * n_anchors:(v + 1) * n_anchors]
            if chosen.size == 0 or n_valid <= k:
                continue
            source = None
            if kind == "adding":
                source = [sample_random_shape(2048, seed=int(rng.integers(2**31)))
                          for _ in range(chosen.size)]
            new_xyz, mask = synthesize_organized(
                xyz, chosen, kind=kind, k=k, source=source, seed=int(rng.integers(2**31))
            )
            overlap = _overlap(mask, boxes)
            changed = dataclasses.replace(sample, xyz=new_xyz)
            variant = fpfh_backend.extract(changed)
            hit = np.flatnonzero((overlap >= min_overlap) & variant.patch_valid)
            if hit.size == 0:
                continue
            variant_points, _ = organized_patch_points(
                new_xyz, fpfh_backend.grid, fpfh_backend.pool_kernel, n_points
            )
            pseudo_points.append(variant_points[hit])
            pseudo_fpfh.append(variant.features[hit])
            pseudo_scan.append(np.full(hit.size, index, np.int64))
            n_variants += 1
        logger.debug("scan %d: %d normal patches, %d variants so far", index, rows.size,
                     n_variants)
    if not pseudo_points:
        raise ValueError(
            "no pseudo-anomaly patch could be synthesised on the training scans (too "
            f"few valid points for k={k}, or min_overlap={min_overlap} too high)."
        )
    data = TrainingData(
        normal_points=np.concatenate(normal_points),
        normal_fpfh=np.concatenate(normal_fpfh),
        pseudo_points=np.concatenate(pseudo_points),
        pseudo_fpfh=np.concatenate(pseudo_fpfh),
        n_samples=len(samples),
        n_variants=n_variants,
        normal_scan=np.concatenate(normal_scan),
        pseudo_scan=np.concatenate(pseudo_scan),
    )
    logger.info(
        "training data: %d normal and %d pseudo-anomaly patches from %d scans and %d "
        "synthesised variants in %.1f s", len(data.normal_points), len(data.pseudo_points),
        data.n_samples, data.n_variants, time.perf_counter() - started,
    )
    return data


def train_encoder(
    encoder: torch.nn.Module,
    data: TrainingData,
    projection: torch.Tensor,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_normal: int = 192,
    batch_pseudo: int = 64,
    temperature: float = 0.1,
    w_con: float = 1.0,
    w_rd: float = 0.5,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train the point encoder with ``w_con * L_con + w_rd * L_rd``.

    Each step draws ``batch_pseudo`` pseudo-anomaly patches and ``batch_normal``
    normal patches from per-epoch shuffles; an epoch is one pass over the
    pseudo-anomaly patches, which are the scarce class. ``L_con`` is the batch
    contrastive loss (every normal patch an anchor, the other normal patches its
    positives, the pseudo anomalies its negatives); ``L_rd`` is the squared cosine
    similarity between the embedding and the FPFH feature through the fixed
    ``projection``.

    Returns
    -------
    list of float
        Mean loss of each epoch.
    """
    device = next(encoder.parameters()).device
    normal_points = torch.as_tensor(data.normal_points, device=device)
    pseudo_points = torch.as_tensor(data.pseudo_points, device=device)
    normal_fpfh = torch.as_tensor(data.normal_fpfh, device=device)
    pseudo_fpfh = torch.as_tensor(data.pseudo_fpfh, device=device)
    n_normal, n_pseudo = len(normal_points), len(pseudo_points)
    if n_normal < 2:
        raise ValueError(f"training needs at least 2 normal patches, but got {n_normal}.")
    batch_pseudo = min(batch_pseudo, n_pseudo)
    batch_normal = min(batch_normal, n_normal)
    steps = max(1, -(-n_pseudo // batch_pseudo))
    history: list[float] = []
    with seeded(seed, device):
        optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        encoder.train()
        epoch_steps = iterate_with_progress(range(epochs), desc="encoder epochs",
                                            enabled=progress)
        for _ in epoch_steps:
            pseudo_order = torch.randperm(n_pseudo, generator=generator)
            normal_order = torch.randperm(n_normal, generator=generator)
            total = 0.0
            for step in range(steps):
                p_idx = pseudo_order[step * batch_pseudo:(step + 1) * batch_pseudo]
                # Normal patches are read cyclically, so every step has a full batch.
                cyclic = (step * batch_normal + torch.arange(batch_normal)) % n_normal
                n_idx = normal_order[cyclic]
                points = torch.cat([normal_points[n_idx], pseudo_points[p_idx]])
                fpfh = torch.cat([normal_fpfh[n_idx], pseudo_fpfh[p_idx]])
                labels = torch.cat([torch.zeros(len(n_idx), dtype=torch.long),
                                    torch.ones(len(p_idx), dtype=torch.long)]).to(device)
                embedding = encoder(points)
                loss = w_con * contrastive_loss_batch(embedding, labels, temperature)
                if w_rd > 0:
                    loss = loss + w_rd * disentanglement_loss(fpfh, embedding, projection)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
            history.append(total / steps)
            logger.debug("encoder epoch %d: loss %.4f", len(history), history[-1])
        encoder.eval()
    return history


def save_checkpoint(path: str | Path, state: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write tensors and JSON metadata so that ``torch.load(weights_only=True)`` reads them.

    The file is written under a temporary name and renamed, so an interrupted save
    leaves an existing checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "meta": json.dumps(meta, sort_keys=True),
        "state": {key: value.detach().cpu() for key, value in state.items()},
    }
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint of :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a zal3d checkpoint, is corrupted, or has an unknown version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated, corrupted or of another "
            f"format): {error}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a zal3d checkpoint.")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')!r}; this release "
            f"reads version {CHECKPOINT_VERSION}."
        )
    return payload["state"], json.loads(payload["meta"])
