"""Command line interface: ``astro-metallicity <command> ...``.

Commands
--------
``predict``
    Metallicities for a table of targets (ECSV, CSV, FITS, VOTable) or for
    ``--ra/--dec`` positions; writes a table (format from the extension:
    ``.ecsv``, ``.csv``, ``.fits``, ``.vot``/``.xml``). The output file, the
    montage and the input format are checked before any prediction starts.
    With ``--workers N`` (a local Dask cluster) or ``--scheduler ADDRESS``
    the targets (also Parquet or a HATS catalogue) are split into HEALPix
    tiles, predicted on the cluster, and each finished tile is written to
    the ``-o`` directory as a Parquet file; a rerun resumes the job.
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
import contextlib
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


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        msg = f"expected a positive integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"expected a positive integer, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


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
    p.add_argument("targets", nargs="?",
                   help="input table (.ecsv, .csv, .fits, .vot; with --workers/--scheduler "
                        "also .parquet, a Parquet directory or a HATS catalogue)")
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
    big = p.add_argument_group(
        "large jobs on a Dask cluster",
        "With --workers or --scheduler, -o names a directory: each finished HEALPix tile is "
        "written there as a Parquet file, and a rerun with the same inputs and settings "
        "predicts only the tiles not yet written.")
    big.add_argument("--workers", type=_positive_int, default=None,
                     help="start a local Dask cluster of N worker processes")
    big.add_argument("--scheduler", default=None,
                     help="address of a running Dask scheduler (e.g. tcp://host:8786)")
    big.add_argument("--partition-rows", type=_positive_int, default=None,
                     help="most targets per partition (default: from the table length and "
                          "the number of workers, at most 5000)")
    big.add_argument("--ra-column", default=None, help="right ascension column (degrees)")
    big.add_argument("--dec-column", default=None, help="declination column (degrees)")
    big.add_argument("--scale-column", default=None,
                     help="column of per-target pixel scales in arcsec/pixel")

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
                   help="simulated-sky preset: classic (default; the sky the previous bundled "
                        "model was trained on) or sdss (realistic SDSS-like images, the "
                        "bundled model's pretraining sky)")

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
    from .table import FLAG_OK

    if args.workers is not None or args.scheduler is not None:
        return _cmd_predict_distributed(args)
    if args.partition_rows is not None or args.ra_column or args.dec_column or \
            args.scale_column:
        raise _UsageError("predict", "--partition-rows, --ra-column, --dec-column and "
                          "--scale-column need --workers or --scheduler")
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
        n_ok = int(np.sum(result["flag"] == FLAG_OK))
        print(f"wrote {len(result)} rows ({n_ok} predicted) to {output}")
    else:
        result.pprint(max_lines=-1, max_width=-1)
    if montage is not None:
        labels = [f"{v:.2f}" if f == FLAG_OK else f[:20]
                  for v, f in zip(np.ma.filled(masked_values(result["metallicity"]), np.nan),
                                  result["flag"], strict=True)]
        shown = min(len(labels), MONTAGE_MAX)
        save_montage(cutouts.images[:shown], labels[:shown], montage)
        print(f"saved a montage of {shown} cutouts to {montage}")
    return 0


def _open_catalog(path, fmt):
    """The targets of a large job: a Dask DataFrame (Parquet, or a table astropy reads) or an
    LSDB catalogue (a HATS directory)."""
    import dask.dataframe as dd

    path = Path(path)
    if not path.exists():
        msg = f"targets {path} do not exist"
        raise FileNotFoundError(msg)
    try:
        if path.is_dir():
            from hats.io.validation import is_valid_catalog

            if is_valid_catalog(path, strict=False):
                import lsdb

                return lsdb.open_catalog(path)
            return dd.read_parquet(path)
        if fmt is None and path.suffix.lower() in (".parquet", ".pq"):
            return dd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _UsageError("predict", f"cannot read targets {path}: "
                          f"{type(exc).__name__}: {first}") from None
    return dd.from_pandas(_table_to_pandas(_read_targets(path, fmt)), chunksize=50_000)


def _table_to_pandas(table):
    """A targets table as pandas: angles in degrees, a SkyCoord column as ``ra``/``dec``."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    table = table.copy(copy_data=False)
    for name in list(table.colnames):
        column = table[name]
        if isinstance(column, SkyCoord):
            icrs = column.icrs
            index = table.colnames.index(name)
            table.remove_column(name)
            single = "ra" not in table.colnames and "dec" not in table.colnames
            ra_name, dec_name = ("ra", "dec") if single else (f"{name}_ra", f"{name}_dec")
            table.add_column(icrs.dec.deg, name=dec_name, index=index)
            table.add_column(icrs.ra.deg, name=ra_name, index=index)
        elif getattr(column, "unit", None) is not None and column.unit.physical_type == "angle":
            table[name] = column.to(u.deg)
    return Table(table).to_pandas()


def _cmd_predict_distributed(args):
    from ._demo import OUTPUT_FORMATS, check_writable_dir

    try:
        from . import distributed as dist

        dist._require_dask()
        import distributed  # noqa: F401
    except ImportError as exc:
        raise _UsageError("predict", f"--workers/--scheduler need the distributed extra: "
                          f"{dist._INSTALL_HINT} ({exc})") from None
    if args.workers is not None and args.scheduler is not None:
        raise _UsageError("predict", "give --workers (a local cluster) or --scheduler, not both")
    if not args.targets or args.ra or args.dec:
        raise _UsageError("predict", "--workers/--scheduler need a targets file (not --ra/--dec)")
    if args.montage:
        raise _UsageError("predict", "--montage is not available with --workers/--scheduler")
    if not args.output:
        raise _UsageError("predict", "--workers/--scheduler need -o DIRECTORY (where the "
                          "Parquet partitions go)")
    output = Path(args.output)
    if output.suffix.lower() in OUTPUT_FORMATS:
        raise _UsageError("predict", f"-o/--output: {output} is a table file; with --workers/"
                          "--scheduler -o names a directory of Parquet partitions (drop "
                          "--workers/--scheduler to write one table in this process)")
    if args.scale is not None and args.scale_column is not None:
        raise _UsageError("predict", "give --scale or --scale-column, not both")
    try:
        if not output.exists():
            check_writable_dir(output.parent)
        _check_input_format(args.format)
        catalog = _open_catalog(args.targets, args.format)
        settings, model = dist._job_settings(
            source=args.source, scale=args.scale, scale_column=args.scale_column,
            ra_column=args.ra_column, dec_column=args.dec_column, model=args.model,
            device=args.device, partition_rows=args.partition_rows)
        inputs = dist._input_fingerprint(args.targets)
        resume = dist._prepare_job(output, inputs=inputs, settings=settings,
                                   overwrite=args.overwrite)
    except ValueError as exc:
        raise _UsageError("predict", f"{exc}") from None
    with _dask_client(args) as client, client.as_current():
        n_done, skipped, n_rows, n_ok = dist._run_job(
            catalog, output, client=client, inputs=inputs, settings=settings, resume=resume,
            model=model, device=args.device, progress=not args.no_progress,
            echo=lambda text: print(text, file=sys.stderr))
    print(f"wrote {n_rows} rows ({n_ok} predicted) in {n_done} partitions to {output}"
          + (f"; {skipped} partitions were already written" if skipped else ""))
    return 0


@contextlib.contextmanager
def _dask_client(args):
    """A client of the cluster at --scheduler, or of a local cluster of --workers processes;
    the dashboard link is printed first thing, for watching a long job."""
    from distributed import Client, LocalCluster

    from .logger import log

    with contextlib.ExitStack() as stack:
        if args.scheduler is not None:
            client = stack.enter_context(Client(args.scheduler, set_as_default=False))
        else:
            # one thread per process: the cutouts are prepared in Python
            # on this machine only: the dashboard and the workers listen on localhost
            cluster = stack.enter_context(LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address="127.0.0.1:8787"))
            client = stack.enter_context(Client(cluster, set_as_default=False))
        link = client.dashboard_link if client.dashboard_link else "(no dashboard)"
        print(f"Dask dashboard: {link}", file=sys.stderr)
        log.info(f"Dask dashboard: {link}")
        yield client


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
