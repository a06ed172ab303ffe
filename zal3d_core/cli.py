"""The ``zal3d`` command line: zero-shot runs, fit, predict, the demo.

This is the only module that prints. Every error caused by input becomes one line on
stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("zal3d")

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr, like other errors."""

    def error(self, message: str):
        self.exit(
            EXIT_INPUT_ERROR,
            f"zal3d: error: {message}. Run '{self.prog} --help' for the options.\n",
        )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _ratio(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a ratio in (0, 1], got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _size(text: str) -> int:
    value = _non_negative_int(text)
    if value < 32:
        raise argparse.ArgumentTypeError(f"expected a size of at least 32 pixels, got {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug messages)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="only warnings and errors; no progress bars")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="btf",
                        help="comma-separated methods: btf (FPFH + PatchCore), 3dzal (the "
                             "full method; needs zal3d[torch]), or a backend name "
                             "(default: btf)")
    parser.add_argument("--backend", default=None,
                        help="run this registered feature backend instead of --method")
    parser.add_argument("--coreset-ratio", type=_ratio, default=0.1,
                        help="fraction of normal patches kept in the memory bank, in (0, 1] "
                             "(default: 0.1)")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="random seed of coreset selection and training (default: 0)")
    parser.add_argument("--n-reweight", type=_positive_int, default=3,
                        help="number of nearest bank features in the PatchCore re-weighting "
                             "of each score; 1 disables it (default: 3)")
    parser.add_argument("--sigma", type=_non_negative_float, default=4.0,
                        help="Gaussian blur of anomaly maps in pixels, at most 4 times "
                             "--size (default: 4)")
    parser.add_argument("--size", type=_size, default=224,
                        help="side of the resized samples in pixels (default: 224)")
    parser.add_argument("--no-plane-removal", action="store_true",
                        help="keep the background plane (default: remove it by RANSAC)")
    parser.add_argument("--plane-border", type=_non_negative_int, default=None,
                        help="width in pixels of the image border the background plane "
                             "is fitted to (default: 10)")
    parser.add_argument("--plane-distance", type=_plane_distance, default=None,
                        help="distance to the plane, in the cloud's units, below which "
                             "points are background; 'auto' derives it from the point "
                             "spacing (default: auto)")
    parser.add_argument("--search", choices=("window", "tree"), default=None,
                        help="FPFH neighbour search: image window or KD-tree (default: window)")
    parser.add_argument("--rgb-weights", default=None,
                        help="3dzal: local file of ImageNet weights for the RGB ResNet")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="3dzal: training epochs of the point encoder (default: 10)")
    parser.add_argument("--classifier-epochs", type=_positive_int, default=None,
                        help="3dzal: training epochs of the normalcy classifier (default: 30)")
    parser.add_argument("--anomaly-types", choices=("both", "adding", "removing"), default=None,
                        help="3dzal: pseudo-anomaly types used in training (default: both)")
    parser.add_argument("--bias-cnn", choices=("random", "pretrained", "none"), default=None,
                        help="3dzal: CNN that picks pseudo-anomaly anchors; none picks "
                             "random valid pixels (default: random)")
    parser.add_argument("--branches", default=None,
                        help="3dzal: comma-separated feature branches among rgb,fpfh,point "
                             "(default: all three)")
    parser.add_argument("--bank-branches", default=None,
                        help="3dzal: branches in the memory bank, among --branches "
                             "(default: all but point; the classifier reads fpfh,point)")
    parser.add_argument("--device", default=None,
                        help="3dzal: torch device (default: cuda when available, else cpu)")
    parser.add_argument("--classifier-centering", choices=("scan", "none"), default=None,
                        help="3dzal: subtract each scan's median patch feature before the "
                             "classifier (scan) or not (none) (default: none)")
    parser.add_argument("--weight-distance", type=_non_negative_float, default=None,
                        help="3dzal: weight w_d of the distance score in the fused score "
                             "(default: 1)")
    parser.add_argument("--weight-classifier", type=_non_negative_float, default=None,
                        help="3dzal: weight w_c of the classifier score in the fused score; "
                             "0 scores by distance only (default: 1)")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="folder for cached features (default: $ZAL3D_CACHE_DIR, "
                             "$XDG_CACHE_HOME/zal3d or ~/.cache/zal3d)")
    parser.add_argument("--no-cache", action="store_true",
                        help="neither read nor write cached features")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``zal3d`` command."""
    parser = _Parser(
        prog="zal3d",
        description="Zero-shot 3D anomaly detection and localization (3DzAL, BTF).",
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"zal3d {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    zero_shot = commands.add_parser(
        "zero-shot", help="fit on one class, evaluate on the others, write tables and heatmaps",
        description="Fit on the train/good scans of --train-class and evaluate on the test "
                    "scans of the other classes. Writes results.json, results.csv, "
                    "results.md, timings.json and heatmaps/ into --out.",
    )
    zero_shot.add_argument("--data-root", type=Path, required=True,
                           help="dataset folder in the MVTec 3D-AD layout")
    zero_shot.add_argument("--train-class", required=True,
                           help="class to fit on; 'all' runs the full train x test matrix; "
                                "'a,b' pools the normal scans of several classes")
    zero_shot.add_argument("--test-classes", default="all",
                           help="comma-separated classes to test on (default: all classes "
                                "not used for training)")
    zero_shot.add_argument("--out", type=Path, required=True, help="output folder")
    zero_shot.add_argument("--heatmaps", type=_non_negative_int, default=3,
                           help="heatmap PNGs per test class (default: 3)")
    _add_model_options(zero_shot)
    _add_data_options(zero_shot)
    _add_common(zero_shot)

    fit = commands.add_parser("fit", help="fit a model on normal scans and save it",
                              description="Fit on the train/good scans of --train-class "
                                          "and save the model (one .npz file, no pickle).")
    fit.add_argument("--data-root", type=Path, required=True,
                     help="dataset folder in the MVTec 3D-AD layout")
    fit.add_argument("--train-class", required=True,
                     help="class to fit on; 'a,b' pools several classes")
    fit.add_argument("--model", type=Path, required=True, help="model file to write (.npz)")
    _add_model_options(fit)
    _add_data_options(fit)
    _add_common(fit)

    predict = commands.add_parser(
        "predict", help="score scans with a saved model",
        description="Score the test scans of a dataset (--data-root) or single organized "
                    "cloud files (--input) with a model written by `zal3d fit`.",
    )
    predict.add_argument("--model", type=Path, required=True, help="model file (.npz)")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-root", type=Path, help="dataset folder in the MVTec 3D-AD layout")
    source.add_argument("--input", type=Path, nargs="+",
                        help="organized cloud files (.tiff, .pcd, .npy, .npz)")
    predict.add_argument("--test-classes", default="all",
                         help="with --data-root: comma-separated classes (default: all)")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--heatmaps", type=_non_negative_int, default=3,
                         help="with --data-root: heatmap PNGs per class (default: 3)")
    _add_data_options(predict)
    _add_common(predict)

    demo = commands.add_parser(
        "demo", help="generate the built-in demo dataset and run the zero-shot job on it",
        description="Generate a small dataset in the MVTec 3D-AD layout (procedural "
                    "objects with dents, bumps, holes, cuts, cracks and contamination) and "
                    "run the full train x test matrix on it.",
    )
    demo.add_argument("--out", type=Path, default=Path("zal3d-demo"),
                      help="output folder (default: ./zal3d-demo)")
    demo.add_argument("--data", type=Path, default=None,
                      help="where to write the dataset (default: OUT/data)")
    demo.add_argument("--real-geometry", action="store_true",
                      help="use real scanned objects (PCL sample scans) as geometry")
    demo.add_argument("--sources", nargs="+", default=None, metavar="CLASS=FILE",
                      help="with --real-geometry: point-cloud files to use as classes")
    demo.add_argument("--train-class", default="all",
                      help="class to fit on, 'all' or 'a,b' (default: all)")
    demo.add_argument("--heatmaps", type=_non_negative_int, default=3,
                      help="heatmap PNGs per test class (default: 3)")
    _add_model_options(demo)
    _add_data_options(demo)
    _add_common(demo)

    backends = commands.add_parser("backends", help="list the available feature backends")
    _add_common(backends)
    return parser


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, unless -q, and only when tqdm is installed."""
    if args.quiet or not sys.stderr.isatty():
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else (
        logging.DEBUG if args.verbose >= 2 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("zal3d", "zal3d_core", "zal3d_torch"):
        logging.getLogger(name).setLevel(level)


def _methods(args: argparse.Namespace) -> list[str]:
    if args.backend:
        return [args.backend]
    methods = list(dict.fromkeys(m.strip() for m in args.method.split(",") if m.strip()))
    if not methods:
        raise ValueError(
            f"--method names no method (got {args.method!r}); pass e.g. --method btf."
        )
    return methods


TORCH_ONLY_OPTIONS = ("rgb_weights", "epochs", "classifier_epochs", "anomaly_types",
                      "bias_cnn", "branches", "bank_branches", "device",
                      "weight_distance", "weight_classifier", "classifier_centering")


def _backend_config(args: argparse.Namespace, methods: Sequence[str]) -> dict[str, dict]:
    if "3dzal" not in methods:
        given = [f"--{name.replace('_', '-')}" for name in TORCH_ONLY_OPTIONS
                 if getattr(args, name, None) is not None]
        if given:
            logger.warning("ignored options (they apply to --method 3dzal only): %s",
                           ", ".join(given))
    configs: dict[str, dict] = {}
    for method in methods:
        config: dict = {}
        if args.search is not None and method in ("btf", "fpfh"):
            config["search"] = args.search
        if method == "3dzal":
            for key, value in (("rgb_weights", args.rgb_weights), ("epochs", args.epochs),
                               ("classifier_epochs", args.classifier_epochs),
                               ("anomaly_types", args.anomaly_types),
                               ("bias_cnn", args.bias_cnn), ("device", args.device),
                               ("classifier_centering", args.classifier_centering)):
                if value is not None:
                    config[key] = value
            if args.branches is not None:
                config["branches"] = [b.strip() for b in args.branches.split(",") if b.strip()]
            if args.bank_branches is not None:
                config["bank_branches"] = [
                    b.strip() for b in args.bank_branches.split(",") if b.strip()
                ]
            config["seed"] = args.seed
        configs[method] = config
    return configs


def _fusion_weights(args: argparse.Namespace) -> dict:
    weights = {"weight_distance": args.weight_distance,
               "weight_classifier": args.weight_classifier}
    return {key: 1.0 if value is None else value for key, value in weights.items()}


def _preprocess(args: argparse.Namespace) -> dict:
    config = {"size": args.size, "remove_plane": not args.no_plane_removal}
    plane = {}
    if args.plane_border is not None:
        plane["border"] = args.plane_border
    if args.plane_distance is not None:
        plane["distance"] = args.plane_distance
    if plane:
        config["plane_kwargs"] = plane
    return config


def _plane_distance(text: str) -> float | str:
    if text == "auto":
        return text
    return _positive_float(text)


def _run_config(args: argparse.Namespace, data_root: Path, out: Path):
    from .runner import RunConfig

    methods = _methods(args)
    return RunConfig(
        data_root=data_root,
        out_dir=out,
        train_class=args.train_class,
        test_classes=getattr(args, "test_classes", "all"),
        methods=methods,
        backend_config=_backend_config(args, methods),
        coreset_ratio=args.coreset_ratio,
        seed=args.seed,
        n_reweight=args.n_reweight,
        sigma=args.sigma,
        **_fusion_weights(args),
        preprocess=_preprocess(args),
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        n_heatmaps=args.heatmaps,
        progress=_show_progress(args),
    )


def _print_summary(results: dict, out: Path) -> None:
    print((out / "results.md").read_text(), end="")
    print(f"Results written to {out}/ (results.json, results.csv, results.md, "
          "timings.json, heatmaps/)")


def _check_class_options(args: argparse.Namespace, data_root: Path) -> None:
    """Check --train-class and --test-classes first, so that errors name the options."""
    from .datasets import MVTec3D
    from .runner import parse_class_spec

    classes = MVTec3D(data_root).classes
    parse_class_spec(args.train_class, classes, name="--train-class")
    parse_class_spec(args.test_classes, classes, name="--test-classes")


def _command_zero_shot(args: argparse.Namespace) -> int:
    from .runner import run_zero_shot

    _check_class_options(args, args.data_root)
    results = run_zero_shot(_run_config(args, args.data_root, args.out))
    _print_summary(results, args.out)
    return 0


def _command_demo(args: argparse.Namespace) -> int:
    from . import demo
    from .io import make_folder
    from .runner import check_methods, parse_class_spec, run_zero_shot

    # Check what can be checked before the dataset is generated, which takes a while.
    check_methods(_methods(args))
    make_folder(args.out, "--out")
    data = args.data or args.out / "data"
    if args.sources and not args.real_geometry:
        raise ValueError("--sources needs --real-geometry; add it to use those scans.")
    if not args.real_geometry:
        parse_class_spec(args.train_class, demo.DEMO_CLASSES, name="--train-class")
    if args.real_geometry:
        sources = None
        if args.sources:
            sources = {}
            for item in args.sources:
                name, sep, path = item.partition("=")
                if not sep or not name or not path:
                    raise ValueError(f"--sources entries must look like CLASS=FILE, got {item!r}.")
                sources[name] = Path(path)
            parse_class_spec(args.train_class, list(sources), name="--train-class")
        root = demo.generate_real_geometry_dataset(data, sources, seed=args.seed,
                                                   progress=_show_progress(args))
    else:
        root = demo.generate_demo_dataset(data, seed=args.seed,
                                          progress=_show_progress(args))
    logger.info("demo dataset in %s", root)
    args.test_classes = "all"
    _check_class_options(args, Path(root))
    results = run_zero_shot(_run_config(args, Path(root), args.out))
    _print_summary(results, args.out)
    return 0


def _model_kwargs(args: argparse.Namespace) -> dict:
    return dict(coreset_ratio=args.coreset_ratio, seed=args.seed, n_reweight=args.n_reweight,
                sigma=args.sigma, preprocess=_preprocess(args), **_fusion_weights(args))


def _command_fit(args: argparse.Namespace) -> int:
    from .backend import get_backend
    from .datasets import MVTec3D
    from .model import ZeroShotModel
    from .runner import METHODS, parse_class_spec

    methods = _methods(args)
    if len(methods) != 1:
        raise ValueError(f"fit takes one method, but got {methods}; run fit once per method.")
    method = methods[0]
    backend_name, defaults = METHODS.get(method, (method, {}))
    config = {**defaults, **_backend_config(args, methods)[method]}
    dataset = MVTec3D(args.data_root)
    classes = parse_class_spec(args.train_class, dataset.classes, name="--train-class")
    records = [r for c in classes for r in dataset.samples(c, "train", ["good"])]
    if not records:
        raise ValueError(f"classes {classes} have no train/good samples in {args.data_root}.")
    model = ZeroShotModel(get_backend(backend_name, **config), **_model_kwargs(args))
    model.fit((r.load() for r in records), progress=_show_progress(args))
    path = model.save(args.model)
    print(f"Fitted on {len(records)} normal samples of {', '.join(classes)}: memory bank of "
          f"{model.fit_info['n_bank']} x {model.fit_info['feature_dim']} features. "
          f"Model written to {path}")
    return 0


def _command_predict(args: argparse.Namespace) -> int:
    from .io import make_folder
    from .model import ZeroShotModel

    model = ZeroShotModel.load(args.model)
    if args.input is not None:
        missing = [str(path) for path in args.input if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"--input file not found: {', '.join(missing)}")
    if args.data_root is not None:
        return _predict_dataset(args, model)
    make_folder(args.out, "--out")
    return _predict_files(args, model)


def _method_name(backend_name: str) -> str:
    from .runner import METHODS

    for method, (backend, _) in METHODS.items():
        if backend == backend_name:
            return method
    return backend_name


def _predict_dataset(args: argparse.Namespace, model) -> int:
    from .backend import backend_digest
    from .datasets import MVTec3D
    from .io import atomic_write_text, make_folder
    from .report import csv_text, markdown_tables
    from .runner import (
        RESULT_COLUMNS,
        FeatureCache,
        RunConfig,
        _evaluate_class,
        _inside,
        default_cache_dir,
        parse_class_spec,
    )

    dataset = MVTec3D(args.data_root)
    classes = parse_class_spec(args.test_classes, dataset.classes, name="--test-classes")
    if _inside(args.out, args.data_root):
        raise ValueError(
            f"--out {args.out} lies inside the dataset folder {args.data_root}, which "
            "zal3d never writes into; choose a folder outside it."
        )
    make_folder(args.out, "--out")
    cache = FeatureCache(args.cache_dir or default_cache_dir(), enabled=not args.no_cache)
    config = RunConfig(data_root=args.data_root, out_dir=args.out, n_heatmaps=args.heatmaps,
                       progress=_show_progress(args))
    digest = backend_digest(model.backend)
    method = _method_name(model.backend.name)
    rows, timings = [], {}
    records_of = {name: dataset.samples(name, "test") for name in classes}
    if not any(records_of.values()):
        raise ValueError(
            f"no test samples in {', '.join(classes)} under {args.data_root}. Check that "
            "each class has test/<defect>/xyz/*.tiff files, or pick other --test-classes."
        )
    for test_class, records in records_of.items():
        if not records:
            logger.warning("class %s has no test samples; skipped", test_class)
            continue
        rows.append(_evaluate_class(model, method, str(args.model.stem), test_class,
                                    records, cache, digest, config,
                                    args.out / "heatmaps", timings))
        atomic_write_text(args.out / "results.csv", csv_text(rows, RESULT_COLUMNS))
        atomic_write_text(args.out / "results.json", json.dumps(rows, indent=2) + "\n")
        table = markdown_tables(rows, classes=dataset.classes)
        atomic_write_text(args.out / "results.md", f"# Results of {args.model.name}\n\n{table}")
    print(table, end="")
    written = "results.json, results.csv, results.md"
    if args.heatmaps > 0:
        written += ", heatmaps/"
    print(f"Results written to {args.out}/ ({written})")
    return 0


def _output_names(paths: Sequence[Path]) -> list[str]:
    """Distinct output names for input files: the file stem, or more of the path.

    MVTec 3D-AD names every scan ``NNN.tiff``, so stems repeat across folders; then
    the path below the inputs' common folder is used, e.g. ``gear_test_bump_xyz_000``.
    """
    import os

    stems = [path.stem for path in paths]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [path.resolve() for path in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    names = []
    for path in resolved:
        parts = path.relative_to(common).with_suffix("").parts
        names.append("_".join(parts) + (f"_{path.suffix[1:]}" if path.suffix else ""))
    return names


def _predict_files(args: argparse.Namespace, model) -> int:
    import numpy as np

    from .datasets import Sample
    from .io import atomic_save_npz, atomic_write_text, read_organized, write_png
    from .report import csv_text, depth_image, heatmap_panel
    from .scoring import resize_anomaly_map

    rows, pictures, failures = [], [], []
    for path, name in zip(args.input, _output_names(args.input)):
        try:
            xyz = read_organized(path)
            sample = Sample(xyz=xyz, rgb=None, gt=None, label=0, class_name="", split="",
                            defect="", name=path.stem, path=path)
            prepared = model.preprocess(sample)
            prediction = model.predict(prepared, preprocessed=True)
        except (ValueError, TypeError, OSError) as error:
            if len(args.input) == 1:
                raise
            # One unreadable or unusable scan must not lose the others' results.
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            logger.error("%s: %s", path, message)
            failures.append(f"{path}: {message}")
            continue
        # The map at the scan's own resolution (NaN where the scan has no point), and
        # at the model's resolution, where the score was computed.
        full = resize_anomaly_map(prediction.anomaly_map, xyz.shape[:2],
                                  valid=~np.isnan(xyz).any(axis=2))
        atomic_save_npz(args.out / f"{name}_anomaly_map.npz", anomaly_map=full,
                        anomaly_map_preprocessed=prediction.anomaly_map)
        pictures.append((name, depth_image(prepared.xyz), prediction.anomaly_map))
        rows.append({"file": str(path), "output": f"{name}_anomaly_map.npz",
                     "image_score": prediction.image_score})
    if pictures:
        # One colour scale for every picture, so a good scan does not look as hot as
        # a defective one.
        values = np.concatenate([amap[np.isfinite(amap)] for _, _, amap in pictures])
        vmin, vmax = float(np.percentile(values, 1)), float(np.percentile(values, 99.9))
        for name, image, amap in pictures:
            write_png(args.out / f"{name}_anomaly_map.png",
                      heatmap_panel(image, None, amap, vmin=vmin, vmax=vmax))
        print(f"Colour scale of the pictures: {vmin:.4g} (dark) to {vmax:.4g} (bright)")
    atomic_write_text(args.out / "scores.csv",
                      csv_text(rows, ("file", "output", "image_score")))
    for row in rows:
        print(f"{row['file']}\t{row['image_score']:.6g}")
    print(f"Anomaly maps of {len(rows)} scans written to {args.out}/")
    if failures:
        raise ValueError(
            f"{len(failures)} of {len(args.input)} scans failed, the first: {failures[0]}"
        )
    return 0


def _command_backends(args: argparse.Namespace) -> int:
    from .backend import available_backends, load_backend
    from .runner import METHODS

    print("methods (--method):")
    for method, (backend, _) in METHODS.items():
        # Loading the backend imports its packages, so a missing torch shows here.
        try:
            loaded = load_backend(backend)
        except ImportError as error:
            logger.debug("backend %s failed to load: %s", backend, error)
            loaded = False
        state = "available" if loaded else 'needs pip install "zal3d[torch]"'
        print(f"  {method:<8} backend {backend} ({state})")
    backends = available_backends()
    print("backends (--backend):")
    for name in backends:
        print(f"  {name}")
    return 0


COMMANDS = {
    "zero-shot": _command_zero_shot,
    "fit": _command_fit,
    "predict": _command_predict,
    "demo": _command_demo,
    "backends": _command_backends,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zal3d`` command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("zal3d: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError as error:
        if args.debug:
            raise
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(
            f"zal3d: error: out of memory{': ' + detail if detail else ''}. Use a "
            "smaller --size or fewer samples.",
            file=sys.stderr,
        )
        return EXIT_INPUT_ERROR
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, ImportError,
            PermissionError, RuntimeError, OSError) as error:
        if args.debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"zal3d: error: {message}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
