"""Score real organized sensor scans with the BTF pipeline and draw their heatmaps.

The PCL sample data holds four organized 640 x 480 clouds from real sensors (Kinect and
stereo, NaN where no depth was measured). They carry no defect labels, so this script
runs a leave-one-out check: for each scan, a model is fitted on the other three as
"normal" and scores the held-out scan. The pictures show which parts of each scene
have no counterpart in the other scenes.

Usage::

    python examples/score_real_scans.py --data ../shared/data --out docs/images

Writes ``real_<name>.png`` (depth image | anomaly map over it) per scan into ``--out`` and
prints the image scores and timings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import zal3d_core as z
from zal3d_core.report import depth_image, heatmap_panel

SCANS = {
    "table_scene_mug": "pcl_data/tutorials/table_scene_mug_stereo_textured.pcd",
    "milk_cartoon": "pcl_data/tutorials/correspondence_grouping/milk_cartoon_all_small_clorox.pcd",
    "capture0001": "pcl_data/tutorials/pairwise/capture0001.pcd",
    "capture0002": "pcl_data/tutorials/pairwise/capture0002.pcd",
}


def load(data: Path) -> dict[str, z.Sample]:
    samples = {}
    for name, relative in SCANS.items():
        path = data / relative
        xyz = z.read_organized(path)
        samples[name] = z.Sample(xyz=xyz, rgb=None, gt=None, label=0, class_name="real",
                                 split="test", defect="good", name=name, path=path)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"),
                        help="folder holding pcl_data/ (default: ../shared/data)")
    parser.add_argument("--out", type=Path, default=Path("docs/images"),
                        help="folder for the heatmap PNGs (default: docs/images)")
    parser.add_argument("--search", choices=("window", "tree"), default="window")
    args = parser.parse_args()

    samples = load(args.data)
    # These are room and table scenes, not objects on a turntable plate: there is no
    # background plane to remove, so the clouds are only resized.
    preprocess = {"size": 224, "remove_plane": False}
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{'held-out scan':<18} {'valid px':>8} {'image score':>11} {'fit s':>6} {'score s':>7}")
    for name in samples:
        model = z.ZeroShotModel("fpfh", {"search": args.search}, preprocess=preprocess)
        started = time.perf_counter()
        model.fit(s for other, s in samples.items() if other != name)
        fitted = time.perf_counter() - started
        started = time.perf_counter()
        sample = model.preprocess(samples[name])
        prediction = model.predict(sample, preprocessed=True)
        scored = time.perf_counter() - started
        finite = prediction.anomaly_map[np.isfinite(prediction.anomaly_map)]
        panel = heatmap_panel(depth_image(sample.xyz), None, prediction.anomaly_map,
                              vmin=float(np.percentile(finite, 1)),
                              vmax=float(np.percentile(finite, 99.9)))
        z.write_png(args.out / f"real_{name}.png", panel)
        valid = int(np.isfinite(sample.xyz[..., 2]).sum())
        print(f"{name:<18} {valid:>8} {prediction.image_score:>11.4g} {fitted:>6.1f} {scored:>7.2f}")


if __name__ == "__main__":
    main()
