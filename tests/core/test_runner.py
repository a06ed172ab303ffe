"""The zero-shot job end to end on a tiny generated dataset, and the CLI around it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from zal3d_core.cli import main
from zal3d_core.io import read_organized
from zal3d_core.demo import DEMO_CLASSES, generate_demo_dataset
from zal3d_core.runner import RunConfig, parse_class_spec, run_zero_shot

CLASSES = DEMO_CLASSES[:3]
PREPROCESS = {"size": 64}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "data"
    return generate_demo_dataset(
        root, classes=CLASSES, n_train=3, n_validation=1, n_test_good=1,
        n_test_per_defect=1, defect_types=("dent", "hole"), size=128, seed=0,
    )


def run(dataset, out, cache, **kwargs):
    config = RunConfig(data_root=dataset, out_dir=out, cache_dir=cache,
                       preprocess=PREPROCESS, n_heatmaps=2, **kwargs)
    return run_zero_shot(config)


def test_full_matrix_writes_every_file(tiny_dataset, tmp_path):
    results = run(tiny_dataset, tmp_path / "out", tmp_path / "cache", train_class="all")
    rows = results["results"]
    assert len(rows) == len(CLASSES) * (len(CLASSES) - 1)
    assert {(r["train"], r["test"]) for r in rows} == {
        (a, b) for a in CLASSES for b in CLASSES if a != b
    }
    for row in rows:
        assert row["n_test"] == 3
        assert row["n_defective"] == 2
        for key in ("au_pro", "image_auroc", "pixel_auroc"):
            assert 0.0 <= row[key] <= 1.0
    out = tmp_path / "out"
    for name in ("results.json", "results.csv", "results.md", "timings.json"):
        assert (out / name).is_file()
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "method,train,test,n_test,n_defective,au_pro,image_auroc,pixel_auroc"
    assert len(csv_lines) == 1 + len(rows)
    table = (out / "results.md").read_text()
    assert "### btf: AU-PRO (FPR limit 0.3)" in table
    assert "| train \\ test | " + " | ".join(sorted(CLASSES)) + " | mean |" in table
    pictures = sorted((out / "heatmaps" / "btf").rglob("*.png"))
    assert len(pictures) == len(rows) * 2
    with Image.open(pictures[0]) as image:
        assert image.size == (3 * 64 + 8, 64)


def test_results_are_reproducible_and_cached(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    run(tiny_dataset, tmp_path / "a", cache, train_class=CLASSES[0])
    run(tiny_dataset, tmp_path / "b", cache, train_class=CLASSES[0])
    run(tiny_dataset, tmp_path / "c", None, train_class=CLASSES[0], use_cache=False)
    for name in ("results.json", "results.csv", "results.md"):
        first = (tmp_path / "a" / name).read_text()
        assert first == (tmp_path / "b" / name).read_text()
        assert first.replace(str(cache), "") == (tmp_path / "c" / name).read_text().replace(str(cache), "")
    timings = json.loads((tmp_path / "b" / "timings.json").read_text())
    assert timings["cache_misses"] == 0
    assert timings["cache_hits"] > 0
    entries = list((cache / "features").rglob("*.npz"))
    assert len(entries) == 3 * len(CLASSES)
    assert not list((cache / "features").rglob("*.tmp"))


def test_dataset_folder_is_never_written(tiny_dataset, tmp_path):
    before = sorted((p, p.stat().st_mtime_ns) for p in tiny_dataset.rglob("*"))
    run(tiny_dataset, tmp_path / "out", tmp_path / "cache", train_class=CLASSES[1])
    after = sorted((p, p.stat().st_mtime_ns) for p in tiny_dataset.rglob("*"))
    assert before == after


def test_damaged_cache_entry_is_recomputed(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    run(tiny_dataset, tmp_path / "a", cache, train_class=CLASSES[0])
    for entry in (cache / "features").rglob("*.npz"):
        entry.write_bytes(entry.read_bytes()[:100])
    run(tiny_dataset, tmp_path / "b", cache, train_class=CLASSES[0])
    assert (tmp_path / "a" / "results.md").read_text() == (tmp_path / "b" / "results.md").read_text()


def test_pooled_training_classes(tiny_dataset, tmp_path):
    pooled = f"{CLASSES[0]},{CLASSES[1]}"
    results = run(tiny_dataset, tmp_path / "out", tmp_path / "cache", train_class=pooled)
    assert [(r["train"], r["test"]) for r in results["results"]] == [
        (f"{CLASSES[0]}+{CLASSES[1]}", CLASSES[2])
    ]


def test_parse_class_spec():
    known = ["a", "b", "c"]
    assert parse_class_spec("all", known, name="x") == known
    assert parse_class_spec("b, a", known, name="x") == ["b", "a"]
    with pytest.raises(ValueError, match=r"x names unknown classes \['z'\]; the dataset has: a, b, c"):
        parse_class_spec("a,z", known, name="x")
    with pytest.raises(ValueError, match="x is empty"):
        parse_class_spec(" , ", known, name="x")


def test_cli_zero_shot_and_fit_predict(tiny_dataset, tmp_path, capsys):
    common = ["--size", "64", "--cache-dir", str(tmp_path / "cache"), "-q"]
    status = main(["zero-shot", "--data-root", str(tiny_dataset), "--train-class", CLASSES[0],
                   "--out", str(tmp_path / "zs"), "--heatmaps", "0", *common])
    assert status == 0
    assert "AU-PRO" in capsys.readouterr().out
    status = main(["fit", "--data-root", str(tiny_dataset), "--train-class", CLASSES[0],
                   "--model", str(tmp_path / "m.npz"), *common])
    assert status == 0
    status = main(["predict", "--model", str(tmp_path / "m.npz"), "--data-root",
                   str(tiny_dataset), "--test-classes", CLASSES[1], "--out",
                   str(tmp_path / "pred"), "--heatmaps", "0", "--cache-dir",
                   str(tmp_path / "cache"), "-q"])
    assert status == 0
    zero_shot = json.loads((tmp_path / "zs" / "results.json").read_text())["results"]
    predicted = json.loads((tmp_path / "pred" / "results.json").read_text())
    expected = [r for r in zero_shot if r["test"] == CLASSES[1]][0]
    assert predicted[0]["au_pro"] == pytest.approx(expected["au_pro"], abs=1e-12)
    assert predicted[0]["image_auroc"] == pytest.approx(expected["image_auroc"], abs=1e-12)
    tiff = next((tiny_dataset / CLASSES[1] / "test").rglob("*.tiff"))
    status = main(["predict", "--model", str(tmp_path / "m.npz"), "--input", str(tiff),
                   "--out", str(tmp_path / "single"), "-q"])
    assert status == 0
    with np.load(tmp_path / "single" / f"{tiff.stem}_anomaly_map.npz") as data:
        # The map comes at the scan's own resolution and at the model's.
        assert data["anomaly_map"].shape == (128, 128)
        assert data["anomaly_map_preprocessed"].shape == (64, 64)
        raw = read_organized(tiff)
        assert np.array_equal(np.isnan(data["anomaly_map"]), np.isnan(raw[..., 2]))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["zero-shot", "--data-root", "/nonexistent/zal3d", "--train-class", "a", "--out", "x"],
         "zal3d: error: "),
        (["predict", "--model", "/nonexistent/m.npz", "--input", "a.tiff", "--out", "x"],
         "zal3d: error: model file not found: /nonexistent/m.npz"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(message)


def test_cli_unknown_class_and_method(tiny_dataset, tmp_path, capsys):
    assert main(["zero-shot", "--data-root", str(tiny_dataset), "--train-class", "nope",
                 "--out", str(tmp_path), "-q"]) == 2
    assert "--train-class names unknown classes ['nope']" in capsys.readouterr().err
    assert main(["zero-shot", "--data-root", str(tiny_dataset), "--train-class", CLASSES[0],
                 "--method", "magic", "--out", str(tmp_path), "-q"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err


def test_cli_bad_argument_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["zero-shot", "--data-root", "x", "--train-class", "a", "--out", "y",
              "--coreset-ratio", "2"])
    assert exit_info.value.code == 2
    assert "expected a ratio in (0, 1], got '2'" in capsys.readouterr().err


def _copy_without_xyz(dataset, tmp_path, name):
    import shutil

    root = tmp_path / "partial"
    shutil.copytree(dataset, root)
    for folder in (root / name).rglob("xyz"):
        shutil.rmtree(folder)
    return root


def test_class_without_xyz_is_skipped_in_all(tiny_dataset, tmp_path, caplog):
    root = _copy_without_xyz(tiny_dataset, tmp_path, CLASSES[2])
    results = run(root, tmp_path / "out", tmp_path / "cache", train_class="all")
    pairs = {(r["train"], r["test"]) for r in results["results"]}
    assert pairs == {(CLASSES[0], CLASSES[1]), (CLASSES[1], CLASSES[0])}
    assert f"class {CLASSES[2]} is skipped" in caplog.text


def test_requested_class_without_xyz_fails_before_work(tiny_dataset, tmp_path):
    root = _copy_without_xyz(tiny_dataset, tmp_path, CLASSES[2])
    with pytest.raises(ValueError, match=f"class '{CLASSES[2]}' cannot be scored: .*no xyz"):
        run(root, tmp_path / "out", tmp_path / "cache", train_class=CLASSES[2])
    with pytest.raises(ValueError, match=f"class '{CLASSES[2]}' cannot be scored"):
        run(root, tmp_path / "out", tmp_path / "cache", train_class=CLASSES[0],
            test_classes=CLASSES[2])
    assert not (tmp_path / "out").exists()


def test_nothing_to_evaluate_is_an_error(tiny_dataset, tmp_path):
    root = _copy_without_xyz(tiny_dataset, tmp_path, CLASSES[1])
    import shutil

    shutil.rmtree(root / CLASSES[2])
    with pytest.raises(ValueError, match=r"nothing to evaluate: .*\(.* skipped: "):
        run(root, tmp_path / "out", tmp_path / "cache", train_class=CLASSES[0])


def test_output_inside_dataset_is_rejected(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="out_dir .* lies inside the dataset folder"):
        run(tiny_dataset, tiny_dataset / "results", tmp_path / "cache", train_class=CLASSES[0])
    with pytest.raises(ValueError, match="cache_dir .* lies inside the dataset folder"):
        run(tiny_dataset, tmp_path / "out", tiny_dataset / "cache", train_class=CLASSES[0])
    assert not (tiny_dataset / "results").exists()


def test_finished_pairs_survive_a_failure(tiny_dataset, tmp_path, monkeypatch):
    import zal3d_core.runner as runner

    original = runner._evaluate_class
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "_evaluate_class", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(tiny_dataset, tmp_path / "out", tmp_path / "cache", train_class=CLASSES[0])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    first_test = sorted(c for c in CLASSES if c != CLASSES[0])[0]
    assert [(r["train"], r["test"]) for r in saved] == [(CLASSES[0], first_test)]
    assert len((tmp_path / "out" / "results.csv").read_text().splitlines()) == 2


def test_cli_predict_names_and_failures(tiny_dataset, tmp_path, capsys):
    common = ["--size", "64", "--cache-dir", str(tmp_path / "cache"), "-q"]
    assert main(["fit", "--data-root", str(tiny_dataset), "--train-class", CLASSES[0],
                 "--model", str(tmp_path / "m.npz"), *common]) == 0
    first = tiny_dataset / CLASSES[1] / "test" / "dent" / "xyz" / "000.tiff"
    second = tiny_dataset / CLASSES[1] / "test" / "good" / "xyz" / "000.tiff"
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(first.read_bytes()[:200])
    status = main(["predict", "--model", str(tmp_path / "m.npz"), "--input", str(first),
                   str(broken), str(second), "--out", str(tmp_path / "maps"), "-q"])
    assert status == 2
    err = capsys.readouterr().err
    assert "1 of 3 scans failed, the first: " in err
    written = sorted(p.name for p in (tmp_path / "maps").glob("*.npz"))
    assert len(written) == 2
    assert written[0] != written[1]
    scores = (tmp_path / "maps" / "scores.csv").read_text().splitlines()
    assert scores[0] == "file,output,image_score"
    assert len(scores) == 3


def test_resize_anomaly_map_keeps_nan_pattern():
    from zal3d_core.scoring import resize_anomaly_map

    amap = np.arange(16, dtype=np.float32).reshape(4, 4)
    amap[0, 0] = np.nan
    out = resize_anomaly_map(amap, (8, 8))
    assert out.shape == (8, 8)
    assert np.isnan(out[:2, :2]).all()
    assert np.isfinite(out[2:, 2:]).all()
    valid = np.ones((8, 8), bool)
    valid[7, 7] = False
    out = resize_anomaly_map(amap, (8, 8), valid=valid)
    assert np.isnan(out[7, 7])
    assert np.isfinite(out[0, 0])
    flat = resize_anomaly_map(np.full((3, 3), 2.0), (5, 7))
    np.testing.assert_allclose(flat, 2.0)


def test_cli_fusion_weights_reach_config(tmp_path, caplog):
    from zal3d_core import cli

    parser = cli.build_parser()
    base = ["zero-shot", "--data-root", "d", "--train-class", "a", "--out", str(tmp_path)]
    args = parser.parse_args([*base, "--method", "3dzal", "--weight-distance", "0.5",
                              "--weight-classifier", "2"])
    config = cli._run_config(args, tmp_path / "d", tmp_path / "o")
    assert config.weight_distance == 0.5
    assert config.weight_classifier == 2.0

    default = cli._run_config(parser.parse_args(base), tmp_path / "d", tmp_path / "o")
    assert (default.weight_distance, default.weight_classifier) == (1.0, 1.0)

    with caplog.at_level("WARNING", logger="zal3d_core.cli"):
        cli._run_config(parser.parse_args([*base, "--weight-classifier", "0"]),
                        tmp_path / "d", tmp_path / "o")
    expected = "ignored options (they apply to --method 3dzal only): --weight-classifier"
    assert expected in caplog.text


def test_fusion_weights_are_recorded(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "out", tmp_path / "cache", train_class=CLASSES[0],
        weight_classifier=0.25)
    header = json.loads((tmp_path / "out" / "results.json").read_text())
    assert header["config"]["weight_classifier"] == 0.25
    assert header["config"]["weight_distance"] == 1.0
