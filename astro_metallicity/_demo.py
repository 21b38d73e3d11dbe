"""The offline demo of ``astro-metallicity demo``, and the output helpers it shares with the CLI.

Private: the command line (`astro_metallicity.cli`) is the public face of this
module. Figures are drawn with matplotlib's object API onto an Agg canvas, so
nothing here switches the user's (global) matplotlib backend.
"""

import tempfile
import warnings
from pathlib import Path

import numpy as np

__all__ = ["DEMO_APPEARANCE", "DEMO_GALAXIES", "DEMO_SEED", "DEMO_TARGETS", "MONTAGE_MAX",
           "OUTPUT_FORMATS",
           "check_writable_dir", "demo_sample", "masked_values", "output_format", "run_demo",
           "save_montage", "write_table"]

DEMO_SEED = 2026  # never used to simulate training data
#: The simulated sky's look: that of the bundled model's pretraining sky (and the closer
#: one to SDSS, see the realism page of the documentation).
DEMO_APPEARANCE = "sdss"
DEMO_GALAXIES = 500
DEMO_TARGETS = 20
MONTAGE_MAX = 60  # cutouts shown in a --montage (the first rows)

#: Table formats a result can be written in, by file extension: those astropy writes
#: and reads back with the units, the masked values and the flags of a result table.
OUTPUT_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits", ".fit": "fits",
                  ".vot": "votable", ".xml": "votable"}


def output_format(path):
    """The astropy format of a result table written to ``path``, from its extension.

    Parameters
    ----------
    path : path-like
        Output file.

    Returns
    -------
    format : str
        A value of `OUTPUT_FORMATS`.

    Raises
    ------
    ValueError
        If the extension is not one of `OUTPUT_FORMATS`.
    """
    suffix = Path(path).suffix.lower()
    fmt = OUTPUT_FORMATS.get(suffix)
    if fmt is None:
        known = ", ".join(OUTPUT_FORMATS)
        hint = " (.txt does not say which text format: .ecsv is text that keeps units)" \
            if suffix == ".txt" else ""
        msg = (f"cannot tell the table format of {path} from its extension "
               f"{suffix or '(none)'!r}; use one of {known}{hint}")
        raise ValueError(msg)
    return fmt


def check_writable_dir(directory):
    """Check that files can be created in ``directory`` (by creating and removing one).

    Parameters
    ----------
    directory : path-like

    Raises
    ------
    ValueError
        If ``directory`` does not exist, is not a directory or is not writable.
    """
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        msg = f"directory {directory} {what}"
        raise ValueError(msg)
    try:  # permissions alone do not tell (root, read-only file systems, ACLs): try it
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        msg = f"cannot write to directory {directory} ({exc.strerror or exc})"
        raise ValueError(msg) from None


def write_table(table, path, overwrite):
    """Write a result table; the format follows the file's extension.

    Parameters
    ----------
    table : `~astropy.table.QTable`
        Table to write.
    path : path-like
        Output file, with an extension of `OUTPUT_FORMATS` (``.ecsv``,
        ``.csv``, ``.fits``, ``.vot``, ...).
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    ValueError
        If the extension is not one of `OUTPUT_FORMATS`.
    """
    from astropy.io.votable.exceptions import W50
    from astropy.units import UnitsWarning
    from astropy.utils.exceptions import AstropyUserWarning

    path = Path(path)
    fmt = output_format(path)
    out = table.copy(copy_data=False)
    if fmt != "ascii.ecsv":
        # formats without room for a SkyCoord column get ra/dec columns instead
        from astropy.coordinates import SkyCoord

        for name in list(out.colnames):
            if isinstance(out[name], SkyCoord):
                icrs = out[name].icrs
                index = out.colnames.index(name)
                out.remove_column(name)
                out.add_column(icrs.dec.to("deg"), name=f"{name}_dec", index=index)
                out.add_column(icrs.ra.to("deg"), name=f"{name}_ra", index=index)
        if fmt != "ascii.csv":
            out.meta = {}  # nested provenance does not fit a FITS header; ECSV keeps it
    with warnings.catch_warnings():
        # FITS has no 'dex' unit; astropy says so and still round-trips it through QTable
        warnings.filterwarnings("ignore", message=".*could not be saved in native FITS",
                                category=AstropyUserWarning)
        warnings.filterwarnings("ignore", category=UnitsWarning)
        # VOTable's unit grammar (VOUnit) has no 'dex' either (W50); the unit string is
        # written as is and astropy reads it back as dex
        warnings.filterwarnings("ignore", message=".*Invalid unit string", category=W50)
        out.write(path, format=fmt, overwrite=overwrite)


def masked_values(column):
    """Masked quantity column -> numpy masked array of its values.

    Parameters
    ----------
    column : `~astropy.units.Quantity`, `~astropy.utils.masked.Masked` or array-like
        A column of a result table.

    Returns
    -------
    values : `~numpy.ma.MaskedArray`
        The values without unit, masked where the column is.
    """
    from astropy.utils.masked import Masked

    if isinstance(column, Masked):
        return np.ma.MaskedArray(np.asarray(column.unmasked.value), mask=column.mask)
    return np.ma.MaskedArray(np.asarray(getattr(column, "value", column)))


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig = Figure(figsize=(2.2 * ncols, 2.5 * nrows), dpi=100)
    FigureCanvasAgg(fig)  # a canvas of our own: pyplot and its global backend stay untouched
    for k in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.set_axis_off()
        if k < n:
            ax.imshow(images[k], origin="upper")
            ax.set_title(labels[k], fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def demo_sample(catalog, n, seed=DEMO_SEED):
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


def run_demo(*, galaxies=DEMO_GALAXIES, seed=DEMO_SEED, n_targets=DEMO_TARGETS, output_dir=".",
             source=None, scale=None, model=None, device=None, appearance=DEMO_APPEARANCE):
    """Run the offline demo: predict for a sample of the simulated sky and compare with the truth.

    Starts `~astro_metallicity.mock.MockSDSS` on 127.0.0.1 with a private
    download cache, prints predicted against true metallicity and the RMSE,
    and writes ``demo_predictions.ecsv`` and ``demo_cutouts.png``.

    Parameters
    ----------
    galaxies : int
        Size of the simulated sky.
    seed : int
        Seed of the simulated sky and of the sample.
    n_targets : int
        Number of galaxies to predict (two bad targets are added).
    output_dir : path-like
        Where to write the table and the montage; created if needed.
    source, scale, model, device
        As for `~astro_metallicity.predict_metallicity`.
    appearance : {'sdss', 'classic'}
        Look of the simulated galaxies (`~astro_metallicity.mock.MockSky`).

    Returns
    -------
    status : int
        0.

    Raises
    ------
    ValueError
        If ``output_dir`` cannot be created or written to (checked first).
    """
    from astropy import units as u

    from ._config import conf
    from .mock import MockSDSS
    from .predict import _get_model, _resolve_source, predict_metallicity

    out_dir = Path(output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the output directory {out_dir} ({exc.strerror or exc})"
        raise ValueError(msg) from None
    check_writable_dir(out_dir)  # before the demo's work, not after it
    print(f"Starting the simulated SDSS ({galaxies} galaxies, seed {seed}, {appearance!r} "
          "appearance) on 127.0.0.1 ...")
    with tempfile.TemporaryDirectory(prefix="astro-metallicity-demo-") as cache, \
            conf.set_temp("cache_dir", cache), \
            MockSDSS(n_galaxies=galaxies, seed=seed, appearance=appearance) as sky:
        targets = demo_sample(sky.catalog, n_targets, seed=seed)
        model = _get_model(model, device)
        # the source the prediction will use: the model's training source, else conf's
        source = _resolve_source(source, model)
        print(f"Predicting metallicity for {len(targets)} targets from "
              f"{source!r} cutouts served by {sky.url} ...")
        result, cutouts = predict_metallicity(targets, source=source, scale=scale,
                                              model=model, device=device,
                                              return_cutouts=True, progress=False)
    pred = masked_values(result["metallicity"])
    err = masked_values(result["metallicity_err"])
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
    write_table(result, table_path, True)
    labels = []
    for k in range(len(result)):
        if ok[k]:
            ood = "ood " if str(result["flag"][k]).startswith("ood:") else ""
            labels.append(f"{ood}pred {pred[k]:.2f} / true {true[k]:.2f}")
        else:
            labels.append(str(result["flag"][k])[:28] or "no prediction")
    montage_path = out_dir / "demo_cutouts.png"
    save_montage(cutouts.images, labels, montage_path)
    print(f"Wrote {table_path} and {montage_path}")
    return 0
