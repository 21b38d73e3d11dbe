"""Command line interface: ``astro-metallicity <command> ...``.

Commands
--------
``predict``
    Metallicities for a table of targets (ECSV, CSV, FITS, VOTable) or for
    ``--ra/--dec`` positions; writes a table (format from the extension:
    ``.ecsv``, ``.csv``, ``.fits``, ``.vot``/``.xml``). The output file, the
    montage and the input format are checked before any prediction starts.
``demo``
    The offline demo: starts the simulated SDSS on 127.0.0.1, predicts for a
    fixed sample of its galaxies with the bundled model, prints predicted
    against true metallicity and the RMSE, and saves a PNG montage.
``mock-sdss``
    Serve the simulated SDSS for a person (or another program) to query.
``train`` / ``evaluate``
    Delegated to `astro_metallicity.train`.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from ._demo import DEMO_GALAXIES, DEMO_SEED, DEMO_TARGETS, MONTAGE_MAX, OUTPUT_FORMATS

__all__ = ["build_parser", "main"]


class _UsageError(Exception):
    """A bad command line: reported in one line, exit status 2 (as argparse does)."""

    def __init__(self, command, message):
        super().__init__(message)
        self.command = command


def _scale_arg(text):
    if text == "adaptive":
        return text
    from astropy import units as u

    try:
        value = float(text)
    except ValueError:
        msg = f"--scale must be 'adaptive' or a number of arcsec per pixel, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value <= 0:
        msg = f"--scale must be positive, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value * u.arcsec / u.pix


def build_parser():
    """The argument parser of ``astro-metallicity``.

    Returns
    -------
    parser : `argparse.ArgumentParser`
    """
    parser = argparse.ArgumentParser(
        prog="astro-metallicity",
        description="Gas-phase metallicity 12+log(O/H) of galaxies from SDSS gri images (CNN).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--source", choices=("frames", "jpeg"), default=None,
                        help="cutout source (default: conf.cutout_source)")
    common.add_argument("--scale", type=_scale_arg, default=None,
                        help="'adaptive' or arcsec/pixel (default: the model's convention)")
    common.add_argument("--model", default=None,
                        help="model checkpoint .pt (default: conf.model_path or the bundled model)")
    common.add_argument("--device", default=None, help="torch device (default: conf.device)")

    p = sub.add_parser("predict", parents=[common], help="predict for a table of targets",
                       description="Predict metallicity for targets from a table or --ra/--dec.")
    p.add_argument("targets", nargs="?", help="input table (.ecsv, .csv, .fits, .vot)")
    p.add_argument("--ra", type=float, nargs="+", help="right ascension(s) in degrees")
    p.add_argument("--dec", type=float, nargs="+", help="declination(s) in degrees")
    p.add_argument("-o", "--output",
                   help=f"output table ({', '.join(OUTPUT_FORMATS)}); default: print")
    p.add_argument("--format", default=None,
                   help="astropy format of the input table, if its extension does not say "
                        "(e.g. ascii.csv, ascii.ecsv, fits, votable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--montage", help="also save a PNG montage of the cutouts (first 60 rows)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    d = sub.add_parser("demo", parents=[common], help="offline demo on the simulated sky",
                       description="Predict for a sample of galaxies of the simulated SDSS "
                                   "(served on 127.0.0.1) and compare with their true metallicity.")
    d.add_argument("--galaxies", type=int, default=DEMO_GALAXIES, help="size of the simulated sky")
    d.add_argument("--seed", type=int, default=DEMO_SEED, help="seed of the simulated sky")
    d.add_argument("-n", "--n-targets", type=int, default=DEMO_TARGETS,
                   help="number of galaxies to predict")
    d.add_argument("-o", "--output-dir", default=".",
                   help="where to write demo_predictions.ecsv and demo_cutouts.png")

    m = sub.add_parser("mock-sdss", help="serve the simulated SDSS on 127.0.0.1",
                       description="Serve the simulated SDSS (SQL, cross-id, SAS frames, "
                                   "ImgCutout) until interrupted.")
    m.add_argument("--port", type=int, default=8080)
    m.add_argument("--galaxies", type=int, default=1000)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--appearance", choices=("classic", "sdss"), default="classic",
                   help="simulated-sky preset: classic (default; the sky the bundled model was "
                        "trained on) or sdss (realistic SDSS-like images)")

    for name in ("train", "evaluate"):
        t = sub.add_parser(name, help=f"{name} a model (astro_metallicity.train)", add_help=False)
        t.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _check_input_format(fmt):
    """Refuse a ``--format`` that astropy cannot read tables in."""
    from astropy.io import registry
    from astropy.table import QTable

    if fmt is not None and fmt not in set(registry.get_formats(QTable, "Read")["Format"]):
        raise _UsageError("predict", f"--format {fmt!r} is not a table format astropy reads; "
                          "e.g. ascii.csv, ascii.ecsv, fits, votable (all: "
                          "astropy.table.QTable.read.list_formats())")


def _read_targets(path, fmt):
    from astropy.io.registry import IORegistryError
    from astropy.table import QTable

    path = Path(path)
    if not path.is_file():
        msg = f"targets file {path} does not exist"
        raise FileNotFoundError(msg)
    kwargs = {} if fmt is None else {"format": fmt}
    if fmt is None and path.suffix.lower() == ".csv":
        kwargs["format"] = "ascii.csv"
    try:
        return QTable.read(path, **kwargs)
    except IORegistryError:
        raise _UsageError("predict", f"cannot tell the table format of {path}; give it with "
                          "--format (e.g. ascii.csv, ascii.ecsv, fits, votable)") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _UsageError("predict", f"cannot read targets file {path}: "
                          f"{type(exc).__name__}: {first}") from None


def _check_output(path, overwrite):
    """Check that the result table can be written to ``path``; returns it as a Path."""
    from ._demo import check_writable_dir, output_format

    path = Path(path)
    try:
        output_format(path)
        if path.is_dir():
            msg = f"{path} is a directory; give a file name, e.g. {path / 'predictions.ecsv'}"
            raise ValueError(msg)
        check_writable_dir(path.parent)
        if path.exists():
            if not overwrite:
                msg = f"{path} exists; use --overwrite to replace it"
                raise ValueError(msg)
            try:
                with open(path, "ab"):  # opened for appending, nothing written: unchanged
                    pass
            except OSError as exc:
                msg = f"cannot replace {path} ({exc.strerror or exc})"
                raise ValueError(msg) from None
    except ValueError as exc:
        raise _UsageError("predict", f"-o/--output: {exc}") from None
    return path


def _check_montage(path):
    """Check that a montage can be saved to ``path`` (image format and directory)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ._demo import check_writable_dir

    path = Path(path)
    kinds = FigureCanvasAgg(Figure()).get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in kinds:
        raise _UsageError("predict", f"--montage: cannot tell the image format of {path} from "
                          f"its extension; use .png (or {', '.join(sorted(kinds))})")
    try:
        check_writable_dir(path.parent)
    except ValueError as exc:
        raise _UsageError("predict", f"--montage: {exc}") from None
    return path


def _cmd_predict(args):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from ._demo import masked_values, save_montage, write_table
    from .predict import predict_metallicity

    # Everything a typo can break is checked here, before a long prediction starts.
    if args.targets and (args.ra or args.dec):
        raise _UsageError("predict", "give either a targets file or --ra/--dec, not both")
    if not args.targets and (args.ra is None or args.dec is None):
        raise _UsageError("predict", "give a targets file or --ra and --dec")
    if not args.targets and len(args.ra) != len(args.dec):
        raise _UsageError("predict", "--ra and --dec need the same number of values")
    _check_input_format(args.format)
    output = None if not args.output else _check_output(args.output, args.overwrite)
    montage = None if not args.montage else _check_montage(args.montage)
    if args.targets:
        targets = _read_targets(args.targets, args.format)
    else:
        targets = SkyCoord(np.array(args.ra) * u.deg, np.array(args.dec) * u.deg)
    result, cutouts = predict_metallicity(
        targets, source=args.source, scale=args.scale, model=args.model, device=args.device,
        return_cutouts=True, progress=False if args.no_progress else None)
    if output is not None:
        write_table(result, output, args.overwrite)
        n_ok = int(np.sum(result["flag"] == ""))
        print(f"wrote {len(result)} rows ({n_ok} predicted) to {output}")
    else:
        result.pprint(max_lines=-1, max_width=-1)
    if montage is not None:
        labels = [f"{v:.2f}" if f == "" else f[:20]
                  for v, f in zip(np.ma.filled(masked_values(result["metallicity"]), np.nan),
                                  result["flag"], strict=True)]
        shown = min(len(labels), MONTAGE_MAX)
        save_montage(cutouts.images[:shown], labels[:shown], montage)
        print(f"saved a montage of {shown} cutouts to {montage}")
    return 0


def _cmd_demo(args):
    from ._demo import run_demo

    return run_demo(galaxies=args.galaxies, seed=args.seed, n_targets=args.n_targets,
                    output_dir=args.output_dir, source=args.source, scale=args.scale,
                    model=args.model, device=args.device)


def _cmd_mock_sdss(args):
    from . import mock

    serve = getattr(mock, "serve", None)
    if serve is None:
        raise SystemExit("astro-metallicity mock-sdss: this build has no mock.serve()")
    kwargs = {} if args.appearance == "classic" else {"appearance": args.appearance}
    return serve(port=args.port, n_galaxies=args.galaxies, seed=args.seed, **kwargs) or 0


def _cmd_delegate(name, argv):
    """Run ``astro_metallicity.train.cli.<name>(argv)`` (train or evaluate)."""
    import importlib

    try:
        module = importlib.import_module("astro_metallicity.train.cli")
    except ImportError as exc:
        raise SystemExit(f"astro-metallicity {name}: not available ({exc})") from None
    func = getattr(module, name, None)
    if func is None:
        raise SystemExit(f"astro-metallicity {name}: astro_metallicity.train.cli has no {name}()")
    return func(list(argv)) or 0


def main(argv=None):
    """Run the ``astro-metallicity`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    status : int
        Exit status: 0 on success, 2 for a usage error (reported in one line
        on stderr, before any prediction starts).
    """
    from .logger import log

    level = log.level
    try:
        return _main(argv)
    except _UsageError as exc:
        print(f"astro-metallicity {exc.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, TypeError) as exc:  # usage errors: no traceback
        print(f"astro-metallicity: error: {exc}", file=sys.stderr)
        return 2
    finally:
        log.setLevel(level)  # -v lasts for this command only


def _main(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    # train/evaluate own their options (astro_metallicity.train.cli): hand them over untouched
    first = next((k for k, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] in ("train", "evaluate"):
        if "-v" in argv[:first] or "--verbose" in argv[:first]:
            from .logger import log

            log.setLevel("DEBUG")
        return _cmd_delegate(argv[first], argv[first + 1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        from .logger import log

        log.setLevel("DEBUG")
    if args.command is None:
        parser.print_help()
        return 1
    if args.command == "predict":
        return _cmd_predict(args)
    if args.command == "demo":
        return _cmd_demo(args)
    if args.command == "mock-sdss":
        return _cmd_mock_sdss(args)
    return _cmd_delegate(args.command, args.args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
