"""Result tables: the input columns plus predictions with units, masks and flags.

Last stage of the pipeline. Predicted quantities are masked (not NaN, not
dropped) on flagged rows, so the table keeps the input's rows in order and
each row without a prediction says why in ``flag``.
"""

import datetime
import hashlib
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from astropy import units as u
from astropy.table import MaskedColumn, QTable
from astropy.utils.masked import Masked

from . import __version__
from .model import _member_names

__all__ = ["FLAG_OK", "build_result_table"]

#: Flag of a row with a prediction nothing argues against. Not ``''``: readers of
#: CSV and FITS tables (astropy's, pandas', TOPCAT's) take an empty cell for a
#: missing value, and a flag must read back as what was written.
FLAG_OK = "ok"

# Units of the predicted quantities.
_OUTPUT_UNITS = {
    "metallicity": u.dex,
    "metallicity_err": u.dex,
    "log_mstar": u.dex(u.solMass),
    "log_mstar_err": u.dex,
}

# Columns the result adds to the input table (``log_mstar*`` only when the model predicts it).
_RESULT_COLUMNS = ("metallicity", "metallicity_err", "log_mstar", "log_mstar_err", "ood_score",
                   "flag")

# Flag of a row whose image was fine but whose prediction is NaN or infinite.
MODEL_FAILED = "model_failed: non-finite output"


def _flag_column(flags):
    """The ``flag`` column: text, never masked, never empty."""
    return MaskedColumn(np.asarray(flags, dtype=str), mask=np.zeros(len(flags), dtype=bool))


def _masked_column(values, mask, unit):
    values = np.asarray(values, dtype=np.float64)
    values = np.where(mask, np.nan, values)
    if isinstance(unit, u.FunctionUnitBase):  # dex(solMass): a logarithmic quantity
        quantity = u.Dex(values, unit)
    else:
        quantity = u.Quantity(values, unit)
    return Masked(quantity, mask=np.asarray(mask, dtype=bool))


def _version(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _file_sha256(path, *, chunk=1 << 20):
    """SHA-256 of a file (model provenance).

    Parameters
    ----------
    path : path-like
        File to hash.
    chunk : int
        Read size in bytes.

    Returns
    -------
    digest : str
        Hexadecimal digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _result_meta(*, model=None, source=None, scale=None, data_release=None, extra=None):
    """Metadata recorded with a result table (plain types, ECSV/FITS friendly).

    Parameters
    ----------
    model : `~astro_metallicity.MetallicityModel`, optional
        The model used; its path, hash, provenance and metrics are recorded.
    source : str, optional
        Cutout source (``'frames'``, ``'jpeg'``, ``'images'``).
    scale : str or `~astropy.units.Quantity`, optional
        Pixel-scale convention used.
    data_release : int, optional
        SDSS data release queried.
    extra : dict, optional
        More entries.

    Returns
    -------
    meta : dict
    """
    info = {
        "astro_metallicity_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {name: _version(name) for name in
                     ("astropy", "astroquery", "numpy", "reproject", "photutils", "torch")},
        "quantity": "metallicity = 12 + log10(O/H) (gas phase), MPA-JHU convention",
    }
    if source is not None:
        info["cutout_source"] = str(source)
    if data_release is not None:
        info["sdss_data_release"] = int(data_release)
    if scale is not None:
        info["pixel_scale"] = scale if isinstance(scale, str) else \
            f"{u.Quantity(scale).to_value(u.arcsec / u.pix):.6g} arcsec / pix"
    if model is not None:
        md = model.metadata
        info["model"] = {
            "path": str(model.path) if model.path is not None else "",
            "sha256": _file_sha256(model.path) if model.path is not None and model.path.is_file()
            else "",
            "arch": md.get("arch", ""),
            # an ensemble's networks, by name and architecture
            "members": [f"{name}: {m.get('arch', '')}"
                        for name, m in zip(_member_names(md), md.get("members", []))],
            "outputs": list(md.get("outputs", [])),
            "cutout_size": int(md.get("cutout_size", 0)),
            "input_size": int(md.get("input_size", 0)),
            "provenance": md.get("provenance", {}),
            "metrics": md.get("metrics", {}),
            # the threshold of the 'ood' flags; None: the model has no OOD reference
            "ood_threshold": (float(md["ood"]["threshold"])
                              if getattr(model, "ood_reference", None) is not None else None),
        }
    if extra:
        info.update(extra)
    return {"astro_metallicity": info}


def build_result_table(table, flags, predictions, *, meta=None, ood_score=None,
                       ood_threshold=None):
    """Add prediction columns to a copy of the input table.

    Parameters
    ----------
    table : `~astropy.table.Table`
        The targets, one row per target, in the input order.
    flags : array of str
        The problem with each row, ``''`` where there is none (as in
        `~astro_metallicity.CutoutSet.flags`).
    predictions : dict of array
        Full-length arrays (one value per row; values on flagged rows are
        ignored) for some of ``metallicity``, ``metallicity_err``,
        ``log_mstar``, ``log_mstar_err``.
    meta : dict, optional
        Merged into the table's ``meta``.
    ood_score : array of float, optional
        Out-of-distribution score of each row's image
        (`astro_metallicity.ood.ood_score`), NaN where there is none; default
        all NaN.
    ood_threshold : float, optional
        Rows with a prediction whose ``ood_score`` exceeds it are flagged
        ``'ood: unlike the training images (score S > T)'``, their prediction
        kept; default: no ``ood`` flag.

    Returns
    -------
    result : `~astropy.table.QTable`
        The input columns, then ``metallicity`` (`~astropy.units.dex`),
        ``metallicity_err``, optionally ``log_mstar`` (dex(solMass)) and
        ``log_mstar_err``, masked on rows with a problem, ``ood_score``
        (masked where there is no score) and ``flag``: ``'ok'`` (`FLAG_OK`)
        on rows with a prediction, ``'ood: ...'`` on rows with a prediction
        from an image unlike the training images, otherwise the problem. A row
        without a problem whose predictions are not all finite is flagged
        ``'model_failed: non-finite output'`` and masked: a masked prediction
        always has a flag saying why.

    Raises
    ------
    ValueError
        If the input already has one of the result columns, or lengths disagree.

    Notes
    -----
    No flag is empty, so flags read back as written from every format
    (ECSV, FITS, CSV, VOTable, Parquet): ``t["flag"] == "ok"`` selects the
    rows with a trustworthy prediction after ``Table.read`` as before
    ``write``; ``~t["metallicity"].mask`` all rows with a prediction,
    ``ood`` ones included.
    """
    result = QTable(table, copy=True)
    n = len(result)
    flags = np.asarray(flags, dtype=str)
    if flags.shape != (n,):
        msg = f"flags has {flags.size} entries for a table of {n} rows"
        raise ValueError(msg)
    clash = [name for name in _RESULT_COLUMNS
             if name in result.colnames and (name in predictions or name == "flag")]
    if clash:
        msg = (f"the targets table already has column(s) {clash}; rename or remove them "
               "before predicting (the result adds these columns)")
        raise ValueError(msg)
    names = [name for name in ("metallicity", "metallicity_err", "log_mstar", "log_mstar_err")
             if name in predictions]
    values = {}
    for name in names:
        values[name] = np.asarray(predictions[name], dtype=np.float64)
        if values[name].shape != (n,):
            msg = f"predictions[{name!r}] has shape {values[name].shape}, expected ({n},)"
            raise ValueError(msg)
    # A NaN or inf from the network on an unflagged row is a failure of the model, and a
    # masked value must say why: flag the row and mask all its predictions.
    finite = np.ones(n, dtype=bool)
    for name in names:
        finite &= np.isfinite(values[name])
    flags = flags.astype(object)
    flags[(flags == "") & ~finite] = MODEL_FAILED
    mask = flags != ""
    flags[~mask] = FLAG_OK
    score = np.full(n, np.nan) if ood_score is None else np.asarray(ood_score, dtype=np.float64)
    if score.shape != (n,):
        msg = f"ood_score has shape {score.shape}, expected ({n},)"
        raise ValueError(msg)
    if ood_threshold is not None and np.isfinite(ood_threshold):
        from .ood import _ood_flag

        # the prediction is kept: the flag warns, it does not withhold
        for k in np.flatnonzero(~mask & np.isfinite(score) & (score > ood_threshold)):
            flags[k] = _ood_flag(score[k], ood_threshold)
    for name in names:
        result[name] = _masked_column(values[name], mask, _OUTPUT_UNITS[name])
    result["ood_score"] = MaskedColumn(np.where(np.isfinite(score), score, np.nan),
                                       mask=~np.isfinite(score))
    result["flag"] = _flag_column(flags.astype(str))
    if meta:
        result.meta.update(meta)
    return result
