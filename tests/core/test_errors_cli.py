"""Bad arguments, files and folders for every `zal3d` command.

Each error must end the command with exit status 2 and exactly one line on stderr that
starts with ``zal3d: error:``, never a traceback. The last test runs the installed
console script in a subprocess to show that no traceback reaches the terminal.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zal3d_core import cli
from zal3d_core.cli import main
from zal3d_core.demo import DEMO_CLASSES, generate_demo_dataset
from zal3d_core.io import read_organized, write_organized_tiff, write_png

CLASSES = DEMO_CLASSES[:2]
QUIET = ["--size", "64", "--heatmaps", "0", "-q"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "data"
    return generate_demo_dataset(
        root,
        classes=CLASSES,
        n_train=2,
        n_validation=0,
        n_test_good=1,
        n_test_per_defect=1,
        defect_types=("dent",),
        size=128,
        seed=0,
    )


@pytest.fixture(scope="module")
def model_file(dataset, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    path = folder / "model.npz"
    status = main(
        [
            "fit",
            "--data-root",
            str(dataset),
            "--train-class",
            CLASSES[0],
            "--model",
            str(path),
            "--size",
            "64",
            "--no-cache",
            "-q",
        ]
    )
    assert status == 0
    return path


def error_line(capsys) -> str:
    """Return the single stderr line of a failed command."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("zal3d: error: ")
    return lines[0]


def run_failing(argv, capsys) -> str:
    try:
        status = main([str(a) for a in argv])
    except SystemExit as stop:
        status = stop.code
    assert status == 2
    return error_line(capsys)


def fit_first_class(root, out, *extra) -> list:
    """Return the arguments of a zero-shot run that fits on the first class."""
    first = ["zero-shot", "--data-root", root, "--train-class", CLASSES[0]]
    return [*first, "--out", out, *extra]


def copy_dataset(dataset: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(dataset, target)
    return target


# ---------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--size", "31"],
            "argument --size: expected a size of at least 32 pixels, got '31'",
        ),
        (["--size", "big"], "argument --size: expected an integer, got 'big'"),
        (
            ["--coreset-ratio", "0"],
            "argument --coreset-ratio: expected a number > 0, got '0'",
        ),
        (["--coreset-ratio", "nan"], "argument --coreset-ratio: expected a number > 0"),
        (["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
        (["--heatmaps", "-2"], "argument --heatmaps: expected an integer >= 0"),
        (["--search", "brute"], "argument --search: invalid choice: 'brute'"),
        (["--sigma", "x"], "argument --sigma: expected a number, got 'x'"),
        (["--sigma", "nan"], "argument --sigma: expected a finite number >= 0, got 'nan'"),
        (["--sigma", "-1"], "argument --sigma: expected a finite number >= 0, got '-1'"),
        (["--n-reweight", "0"], "argument --n-reweight: expected an integer >= 1, got '0'"),
        (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
        (
            ["--classifier-centering", "image"],
            "argument --classifier-centering: invalid choice: 'image'",
        ),
        (
            ["--weight-classifier", "-0.5"],
            "argument --weight-classifier: expected a finite number >= 0, got '-0.5'",
        ),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_option_values(extra, message, capsys, tmp_path):
    line = run_failing(
        [
            "zero-shot",
            "--data-root",
            tmp_path,
            "--train-class",
            "a",
            "--out",
            tmp_path / "out",
            *extra,
        ],
        capsys,
    )
    assert message in line
    assert "--help" in line


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["zap"], "argument COMMAND: invalid choice: 'zap'"),
        (
            ["fit", "--data-root", "x"],
            "the following arguments are required: --train-class, --model",
        ),
        (
            ["predict", "--model", "m.npz", "--out", "o"],
            "one of the arguments --data-root --input is required",
        ),
    ],
)
def test_bad_commands(argv, message, capsys):
    assert message in run_failing(argv, capsys)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--sigma", "1e9"],
            "sigma must be at most 4 times the larger side of the preprocessed "
            "samples, 256 pixels",
        ),
        (
            ["--method", ","],
            "--method names no method (got ','); pass e.g. --method btf",
        ),
        (["--method", "magic"], "unknown method 'magic'; choose from btf, 3dzal"),
        (["--seed", str(2**64)], "seed must be <= 9223372036854775807"),
    ],
)
def test_bad_model_options(extra, message, dataset, capsys, tmp_path):
    line = run_failing(
        [
            "zero-shot",
            "--data-root",
            dataset,
            "--train-class",
            CLASSES[0],
            "--out",
            tmp_path / "out",
            "--size",
            "64",
            "-q",
            *extra,
        ],
        capsys,
    )
    assert message in line


# ---------------------------------------------------------------------------------------
# Dataset folders


def test_data_root_errors(capsys, tmp_path):
    common = ["--train-class", "a", "--out", tmp_path / "out", "-q"]
    line = run_failing(
        ["zero-shot", "--data-root", tmp_path / "absent", *common], capsys
    )
    assert "MVTec 3D-AD root folder not found" in line
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    line = run_failing(["zero-shot", "--data-root", notes, *common], capsys)
    assert "MVTec 3D-AD root must be a folder, but" in line
    (tmp_path / "empty").mkdir()
    line = run_failing(
        ["zero-shot", "--data-root", tmp_path / "empty", *common], capsys
    )
    assert "contains no class folders" in line


def test_unknown_classes(dataset, capsys, tmp_path):
    line = run_failing(
        [
            "zero-shot",
            "--data-root",
            dataset,
            "--train-class",
            "nope",
            "--out",
            tmp_path,
            "-q",
        ],
        capsys,
    )
    assert "--train-class names unknown classes ['nope']" in line
    line = run_failing(
        [
            "zero-shot",
            "--data-root",
            dataset,
            "--train-class",
            CLASSES[0],
            "--test-classes",
            "zzz",
            "--out",
            tmp_path,
            "-q",
        ],
        capsys,
    )
    assert "--test-classes names unknown classes ['zzz']" in line


def test_missing_modality_folder(dataset, capsys, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    shutil.rmtree(root / CLASSES[1] / "test" / "dent" / "xyz")
    line = run_failing(
        fit_first_class(root, tmp_path / "out", "--no-cache", *QUIET),
        capsys,
    )
    assert f"Sample test/dent/000 of class '{CLASSES[1]}' has no xyz file" in line


def test_empty_train_class(dataset, capsys, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    shutil.rmtree(root / CLASSES[0] / "train" / "good")
    (root / CLASSES[0] / "train" / "good").mkdir()
    line = run_failing(
        fit_first_class(root, tmp_path / "out", "--no-cache", *QUIET),
        capsys,
    )
    assert f"class {CLASSES[0]} has no train/good samples to fit on" in line


def test_gt_of_another_size(dataset, capsys, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    write_png(
        root / CLASSES[1] / "test" / "dent" / "gt" / "000.png",
        np.zeros((10, 10), np.uint8),
    )
    line = run_failing(
        fit_first_class(root, tmp_path / "out", "--no-cache", *QUIET),
        capsys,
    )
    assert "gt of shape (10, 10) differs from the xyz shape (128, 128)" in line


def test_truncated_scan(dataset, capsys, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    scan = root / CLASSES[0] / "train" / "good" / "xyz" / "001.tiff"
    scan.write_bytes(scan.read_bytes()[:200])
    line = run_failing(
        fit_first_class(root, tmp_path / "out", "--no-cache", *QUIET),
        capsys,
    )
    assert "001.tiff is truncated or not a valid TIFF file" in line


def test_stray_files_and_unwritable_cache(dataset, capsys, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    xyz = root / CLASSES[0] / "train" / "good" / "xyz"
    (xyz / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (xyz / "Thumbs.db").write_bytes(b"x")
    (xyz / "notes.txt").write_text("scanner settings")
    (xyz / "._000.tiff").write_bytes(b"\x00\x05\x16\x07")
    (root / CLASSES[1] / "test" / "dent" / "gt" / "._000.png").write_bytes(b"\x00\x05")

    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    argv = fit_first_class(root, tmp_path / "out", "--cache-dir", blocker / "cache", *QUIET)
    status = main([str(a) for a in argv])
    assert status == 0

    err = capsys.readouterr().err
    assert err.count("could not write cache entry") == 1
    assert "No more entries are written in this run" in err
    assert "Traceback" not in err
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert [(r["train"], r["test"], r["n_test"]) for r in rows] == [
        (CLASSES[0], CLASSES[1], 2)
    ]


# ---------------------------------------------------------------------------------------
# Output folders and model files


def test_output_folder_is_a_file(dataset, capsys, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    common = ["--data-root", dataset, "--train-class", CLASSES[0], "-q"]
    line = run_failing(["zero-shot", *common, "--out", blocker], capsys)
    assert "out_dir" in line
    assert "blocker is a file, not a folder" in line
    line = run_failing(["zero-shot", *common, "--out", blocker / "sub"], capsys)
    assert "part of the path is a file, not a folder" in line
    line = run_failing(
        ["fit", *common, "--model", blocker / "m.npz", "--size", "64"], capsys
    )
    assert "model folder" in line
    assert "blocker is a file, not a folder" in line
    line = run_failing(["fit", *common, "--model", tmp_path, "--size", "64"], capsys)
    assert "it is a folder. Pass a file name, e.g." in line


def test_demo_checks_options_before_generating(capsys, tmp_path):
    out = tmp_path / "demo"
    line = run_failing(["demo", "--out", out, "--train-class", "nosuch", "-q"], capsys)
    assert "--train-class names unknown classes ['nosuch']" in line
    assert not (out / "data").exists()
    line = run_failing(["demo", "--out", out, "--method", "nosuch", "-q"], capsys)
    assert "unknown method 'nosuch'" in line
    assert not (out / "data").exists()
    source = tmp_path / "scan.npy"
    line = run_failing(
        ["demo", "--out", out, "--real-geometry", "--sources", f"mug={source}",
         "--train-class", "cup", "-q"],
        capsys,
    )
    assert "--train-class names unknown classes ['cup']; the dataset has: mug" in line
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    line = run_failing(["demo", "--out", blocker, "-q"], capsys)
    assert "blocker is a file, not a folder" in line


def test_predict_output_folder_is_a_file(model_file, dataset, capsys, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    scan = dataset / CLASSES[1] / "test" / "dent" / "xyz" / "000.tiff"
    line = run_failing(
        ["predict", "--model", model_file, "--input", scan, "--out", blocker, "-q"],
        capsys,
    )
    assert "--out" in line
    assert "blocker is a file, not a folder" in line


def test_damaged_model_files(model_file, dataset, capsys, tmp_path):
    scan = dataset / CLASSES[1] / "test" / "dent" / "xyz" / "000.tiff"

    def predict(model):
        return run_failing(
            [
                "predict",
                "--model",
                model,
                "--input",
                scan,
                "--out",
                tmp_path / "out",
                "-q",
            ],
            capsys,
        )

    assert "model file not found" in predict(tmp_path / "absent.npz")
    assert "is a folder. Pass the .npz file" in predict(tmp_path)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(model_file.read_bytes()[:500])
    assert "is not a valid zal3d model file" in predict(truncated)
    tiff_model = tmp_path / "scan.npz"
    shutil.copy(scan, tiff_model)
    assert "is not a valid zal3d model file" in predict(tiff_model)
    with np.load(model_file, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(arrays["metadata"].tobytes())
    del meta["n_reweight"]
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    edited = tmp_path / "edited.npz"
    np.savez(edited, **arrays)
    assert "its metadata lacks n_reweight" in predict(edited)
    meta["n_reweight"] = 3
    meta["format_version"] = 99
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(edited, **arrays)
    assert "has model format version 99, but this zal3d" in predict(edited)


def test_predict_bad_inputs(model_file, dataset, capsys, tmp_path):
    def predict(*inputs):
        return run_failing(
            [
                "predict",
                "--model",
                model_file,
                "--input",
                *inputs,
                "--out",
                tmp_path / "out",
                "-q",
            ],
            capsys,
        )

    assert "--input file not found: " in predict(tmp_path / "absent.tiff")
    assert "unknown extension '.png'" in predict(
        dataset / CLASSES[1] / "test" / "dent" / "rgb" / "000.png"
    )
    assert "--input file not found: " in predict(tmp_path)
    empty = tmp_path / "empty.tiff"
    empty.write_bytes(b"")
    assert "empty.tiff is truncated or not a valid TIFF file" in predict(empty)
    points = tmp_path / "points.npy"
    np.save(points, np.random.default_rng(0).random((50, 3)))
    assert "contains an unorganized cloud of shape (50, 3)" in predict(points)
    hollow = tmp_path / "hollow.tiff"
    write_organized_tiff(hollow, np.full((64, 64, 3), np.nan))
    assert "found 0 valid border points" in predict(hollow)
    first = dataset / CLASSES[1] / "test" / "dent" / "xyz" / "000.tiff"
    second = dataset / CLASSES[1] / "test" / "good" / "xyz" / "000.tiff"
    assert main(["predict", "--model", str(model_file), "--input", str(first), str(second),
                 "--out", str(tmp_path / "two"), "-q"]) == 0
    # Same file names in different folders get names from their folders.
    names = sorted(p.name for p in (tmp_path / "two").glob("*_anomaly_map.npz"))
    assert names == ["dent_xyz_000_tiff_anomaly_map.npz", "good_xyz_000_tiff_anomaly_map.npz"]


def test_predict_skips_class_without_scans(model_file, dataset, capsys, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    shutil.rmtree(root / CLASSES[1] / "test")
    (root / CLASSES[1] / "test" / "good" / "xyz").mkdir(parents=True)
    argv = ["predict", "--model", model_file, "--data-root", root, "--out", tmp_path / "o"]
    line = run_failing([*argv, "--test-classes", CLASSES[1], "-q"], capsys)
    assert f"no test samples in {CLASSES[1]} under {root}" in line

    status = main([str(a) for a in [*argv, "--heatmaps", "0"]])
    assert status == 0
    captured = capsys.readouterr()
    assert f"class {CLASSES[1]} has no test samples; skipped" in captured.err
    rows = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [row["test"] for row in rows] == [CLASSES[0]]


def test_predict_writes_maps(model_file, dataset, capsys, tmp_path):
    scan = dataset / CLASSES[1] / "test" / "dent" / "xyz" / "000.tiff"
    status = main(
        [
            "predict",
            "--model",
            str(model_file),
            "--input",
            str(scan),
            "--out",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    assert status == 0
    with np.load(tmp_path / "out" / "000_anomaly_map.npz") as data:
        assert data["anomaly_map"].shape == read_organized(scan).shape[:2]
        assert data["anomaly_map_preprocessed"].shape == (64, 64)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------
# Errors raised while running


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    def exhausted(args):
        raise MemoryError("Unable to allocate 112. GiB for an array")

    monkeypatch.setitem(cli.COMMANDS, "backends", exhausted)
    assert main(["backends"]) == 2
    line = error_line(capsys)
    assert line == (
        "zal3d: error: out of memory: Unable to allocate 112. GiB for an array. Use a "
        "smaller --size or fewer samples."
    )


def test_interrupt_and_debug(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "backends", interrupted)
    assert main(["backends"]) == 130
    assert capsys.readouterr().err.strip() == "zal3d: interrupted"

    def failing(args):
        raise ValueError("broken input")

    monkeypatch.setitem(cli.COMMANDS, "backends", failing)
    assert main(["backends"]) == 2
    assert error_line(capsys) == "zal3d: error: broken input"
    with pytest.raises(ValueError, match="broken input"):
        main(["backends", "--debug"])


def test_console_script_prints_no_traceback(tmp_path):
    script = Path(sys.executable).with_name("zal3d")
    command = (
        [str(script)] if script.exists() else [sys.executable, "-m", "zal3d_core.cli"]
    )
    blocker = tmp_path / "blocker"
    blocker.write_text("x")

    result = subprocess.run(
        [
            *command,
            "predict",
            "--model",
            str(tmp_path / "absent.npz"),
            "--input",
            str(tmp_path / "scan.tiff"),
            "--out",
            str(blocker),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"zal3d: error: model file not found: {tmp_path / 'absent.npz'}"
    ]

    result = subprocess.run(
        [
            *command,
            "zero-shot",
            "--data-root",
            str(tmp_path),
            "--train-class",
            "a",
            "--out",
            str(blocker),
            "--size",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_repeated_methods_run_once():
    import argparse

    args = argparse.Namespace(backend=None, method="btf, btf,3dzal,btf")
    assert cli._methods(args) == ["btf", "3dzal"]
