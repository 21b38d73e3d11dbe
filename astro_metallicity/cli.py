"""Command line interface: ``astro-metallicity <command> ...``.

Commands
--------
``predict``
    Metallicities for a table of targets (ECSV, CSV, FITS, VOTable) or for
    ``--ra/--dec`` positions; writes a table (format from the extension).
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
import tempfile
import warnings
from pathlib import Path

import numpy as np

__all__ = ["build_parser", "main"]

_DEMO_SEED = 2026  # never used to simulate training data
_DEMO_GALAXIES = 500
_DEMO_TARGETS = 20
_MONTAGE_MAX = 60  # cutouts shown in a --montage (the first rows)


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
    p.add_argument("-o", "--output", help="output table (.ecsv, .csv, .fits); default: print")
    p.add_argument("--format", default=None, help="astropy format of the input table, if unusual")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--montage", help="also save a PNG montage of the cutouts (first 60 rows)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    d = sub.add_parser("demo", parents=[common], help="offline demo on the simulated sky",
                       description="Predict for a sample of galaxies of the simulated SDSS "
                                   "(served on 127.0.0.1) and compare with their true metallicity.")
    d.add_argument("--galaxies", type=int, default=_DEMO_GALAXIES, help="size of the simulated sky")
    d.add_argument("--seed", type=int, default=_DEMO_SEED, help="seed of the simulated sky")
    d.add_argument("-n", "--n-targets", type=int, default=_DEMO_TARGETS,
                   help="number of galaxies to predict")
    d.add_argument("-o", "--output-dir", default=".",
                   help="where to write demo_predictions.ecsv and demo_cutouts.png")

    m = sub.add_parser("mock-sdss", help="serve the simulated SDSS on 127.0.0.1",
                       description="Serve the simulated SDSS (SQL, cross-id, SAS frames, "
                                   "ImgCutout) until interrupted.")
    m.add_argument("--port", type=int, default=8080)
    m.add_argument("--galaxies", type=int, default=1000)
    m.add_argument("--seed", type=int, default=1)

    for name in ("train", "evaluate"):
        t = sub.add_parser(name, help=f"{name} a model (astro_metallicity.train)", add_help=False)
        t.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _read_targets(path, fmt):
    from astropy.table import QTable

    path = Path(path)
    if not path.is_file():
        msg = f"targets file {path} does not exist"
        raise FileNotFoundError(msg)
    kwargs = {} if fmt is None else {"format": fmt}
    if fmt is None and path.suffix.lower() == ".csv":
        kwargs["format"] = "ascii.csv"
    return QTable.read(path, **kwargs)


def _write_table(table, path, overwrite):
    from astropy.units import UnitsWarning
    from astropy.utils.exceptions import AstropyUserWarning

    path = Path(path)
    kwargs = {"overwrite": overwrite}
    if path.suffix.lower() == ".csv":
        kwargs["format"] = "ascii.csv"
    out = table.copy(copy_data=False)
    if path.suffix.lower() in (".csv", ".fits", ".fit", ".vot", ".xml"):
        # formats without room for a SkyCoord column get ra/dec columns instead
        from astropy.coordinates import SkyCoord

        for name in list(out.colnames):
            if isinstance(out[name], SkyCoord):
                icrs = out[name].icrs
                index = out.colnames.index(name)
                out.remove_column(name)
                out.add_column(icrs.dec.to("deg"), name=f"{name}_dec", index=index)
                out.add_column(icrs.ra.to("deg"), name=f"{name}_ra", index=index)
        if path.suffix.lower() != ".csv":
            out.meta = {}  # nested provenance does not fit a FITS header; ECSV keeps it
    with warnings.catch_warnings():
        # FITS has no 'dex' unit; astropy says so and still round-trips it through QTable
        warnings.filterwarnings("ignore", message=".*could not be saved in native FITS",
                                category=AstropyUserWarning)
        warnings.filterwarnings("ignore", category=UnitsWarning)
        out.write(path, **kwargs)


def save_montage(images, labels, path, *, ncols=5):
    """Save a PNG montage of cutouts with a label under each.

    Parameters
    ----------
    images : `~numpy.ndarray`
        uint8 ``(N, H, W, 3)``.
    labels : sequence of str
        One label per image.
    path : path-like
        PNG file to write.
    ncols : int
        Images per row.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig = Figure(figsize=(2.2 * ncols, 2.5 * nrows), dpi=100)
    for k in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.set_axis_off()
        if k < n:
            ax.imshow(images[k], origin="upper")
            ax.set_title(labels[k], fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _cmd_predict(args):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from .predict import predict_metallicity

    if args.targets and (args.ra or args.dec):
        msg = "give either a targets file or --ra/--dec, not both"
        raise SystemExit(f"astro-metallicity predict: error: {msg}")
    if args.targets:
        targets = _read_targets(args.targets, args.format)
    elif args.ra is not None and args.dec is not None:
        if len(args.ra) != len(args.dec):
            raise SystemExit("astro-metallicity predict: error: --ra and --dec need the same "
                             "number of values")
        targets = SkyCoord(np.array(args.ra) * u.deg, np.array(args.dec) * u.deg)
    else:
        raise SystemExit("astro-metallicity predict: error: give a targets file or --ra and --dec")
    output = None
    if args.output:
        output = Path(args.output)
        if output.exists() and not args.overwrite:
            raise SystemExit(f"astro-metallicity predict: error: {output} exists; "
                             "use --overwrite to replace it")
    result, cutouts = predict_metallicity(
        targets, source=args.source, scale=args.scale, model=args.model, device=args.device,
        return_cutouts=True, progress=False if args.no_progress else None)
    if output is not None:
        _write_table(result, output, args.overwrite)
        n_ok = int(np.sum(result["flag"] == ""))
        print(f"wrote {len(result)} rows ({n_ok} predicted) to {output}")
    else:
        result.pprint(max_lines=-1, max_width=-1)
    if args.montage:
        labels = [f"{v:.2f}" if f == "" else f[:20]
                  for v, f in zip(np.ma.filled(_plain(result["metallicity"]), np.nan),
                                  result["flag"])]
        shown = min(len(labels), _MONTAGE_MAX)
        save_montage(cutouts.images[:shown], labels[:shown], args.montage)
        print(f"saved a montage of {shown} cutouts to {args.montage}")
    return 0


def _plain(column):
    """Masked quantity column -> numpy masked array of values."""
    from astropy.utils.masked import Masked

    if isinstance(column, Masked):
        return np.ma.MaskedArray(np.asarray(column.unmasked.value), mask=column.mask)
    return np.ma.MaskedArray(np.asarray(getattr(column, "value", column)))


def demo_sample(catalog, n, seed=_DEMO_SEED):
    """The demo's fixed sample of targets from the simulated sky's truth table.

    Parameters
    ----------
    catalog : `~astropy.table.Table`
        Truth table of `astro_metallicity.mock.MockSDSS`.
    n : int
        Number of galaxies.
    seed : int
        Seed of the selection.

    Returns
    -------
    targets : `~astropy.table.QTable`
        objid, ra, dec (deg) and the true oh_p50 of ``n`` galaxies plus two
        deliberately bad rows (missing coordinates, outside the footprint)
        that show how failures are flagged.
    """
    from astropy import units as u
    from astropy.table import QTable

    rng = np.random.default_rng(seed)
    oh_all = np.asarray(getattr(catalog["oh_p50"], "value", catalog["oh_p50"]), float)
    usable = np.isfinite(oh_all) & (oh_all > 0)  # MPA-JHU writes -9999 where O/H is undefined
    if "camcol" in catalog.colnames:
        # two neighbouring camcols: fewer frames to fetch, and some shared by several targets
        camcol = np.asarray(catalog["camcol"])
        usable &= np.isin(camcol, np.unique(camcol)[:2])
    pool = np.flatnonzero(usable)
    n = int(min(n, len(pool)))
    idx = np.sort(rng.choice(pool, size=n, replace=False))
    ra = u.Quantity(catalog["ra"][idx], u.deg).value
    dec = u.Quantity(catalog["dec"][idx], u.deg).value
    oh = np.asarray(getattr(catalog["oh_p50"][idx], "value", catalog["oh_p50"][idx]), float)
    objid = np.asarray(catalog["objid"][idx]).astype(np.int64)
    targets = QTable({
        "objid": np.concatenate([objid, [-1, -2]]),
        "ra": np.concatenate([ra, [np.nan, (ra.mean() + 180.0) % 360.0]]) * u.deg,
        "dec": np.concatenate([dec, [0.0, -dec.mean()]]) * u.deg,
        "oh_true": np.concatenate([oh, [np.nan, np.nan]]) * u.dex,
    })
    return targets


def _cmd_demo(args):
    from astropy import units as u

    from ._config import conf
    from .mock import MockSDSS
    from .predict import predict_metallicity

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"Starting the simulated SDSS ({args.galaxies} galaxies, seed {args.seed}) on 127.0.0.1 ...")
    with tempfile.TemporaryDirectory(prefix="astro-metallicity-demo-") as cache, \
            conf.set_temp("cache_dir", cache), \
            MockSDSS(n_galaxies=args.galaxies, seed=args.seed) as sky:
        targets = demo_sample(sky.catalog, args.n_targets, seed=args.seed)
        print(f"Predicting metallicity for {len(targets)} targets from {args.source or conf.cutout_source!r} "
              f"cutouts served by {sky.url} ...")
        result, cutouts = predict_metallicity(targets, source=args.source, scale=args.scale,
                                              model=args.model, device=args.device,
                                              return_cutouts=True, progress=False)
    pred = _plain(result["metallicity"])
    err = _plain(result["metallicity_err"])
    true = np.asarray(result["oh_true"].to_value(u.dex))
    print()
    print(f"{'objid':>20} {'ra':>10} {'dec':>9} {'true Z':>7} {'pred Z':>7} {'err':>5}  flag")
    for k in range(len(result)):
        p = "" if np.ma.is_masked(pred[k]) else f"{pred[k]:7.3f}"
        e = "" if np.ma.is_masked(err[k]) else f"{err[k]:5.3f}"
        t = "" if not np.isfinite(true[k]) else f"{true[k]:7.3f}"
        ra = result["ra"][k].to_value(u.deg)
        dec = result["dec"][k].to_value(u.deg)
        print(f"{result['objid'][k]:>20} {ra:10.5f} {dec:9.5f} {t:>7} {p:>7} {e:>5}  "
              f"{result['flag'][k]}")
    ok = ~np.ma.getmaskarray(pred) & np.isfinite(true)
    rmse = float(np.sqrt(np.mean((np.asarray(pred[ok]) - true[ok]) ** 2))) if ok.any() else np.nan
    spread = float(np.std(true[ok])) if ok.any() else np.nan
    print()
    print(f"Predicted {int(ok.sum())} of {len(result)} targets; RMSE = {rmse:.3f} dex "
          f"(true metallicities have standard deviation {spread:.3f} dex).")
    print("This is a simulated sky: the numbers test the software, not the science.")
    table_path = out_dir / "demo_predictions.ecsv"
    _write_table(result, table_path, True)
    labels = []
    for k in range(len(result)):
        if ok[k]:
            labels.append(f"pred {pred[k]:.2f} / true {true[k]:.2f}")
        else:
            labels.append(str(result["flag"][k])[:28] or "no prediction")
    montage_path = out_dir / "demo_cutouts.png"
    save_montage(cutouts.images, labels, montage_path)
    print(f"Wrote {table_path} and {montage_path}")
    return 0


def _cmd_mock_sdss(args):
    from . import mock

    serve = getattr(mock, "serve", None)
    if serve is None:
        raise SystemExit("astro-metallicity mock-sdss: this build has no mock.serve()")
    return serve(port=args.port, n_galaxies=args.galaxies, seed=args.seed) or 0


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
        Exit status (0 on success).
    """
    from .logger import log

    level = log.level
    try:
        return _main(argv)
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
