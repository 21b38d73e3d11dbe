"""Predict gas-phase metallicity for targets on the sky or for cutouts in hand.

`predict_metallicity` runs the whole pipeline: targets
(`~astro_metallicity.resolve_targets`) -> cutouts
(`~astro_metallicity.fetch_cutouts`, which builds them with
`astro_metallicity.preprocess`) -> CNN (`~astro_metallicity.load_model`)
-> result table (`~astro_metallicity.table.build_result_table`). Cutout size,
pixel-scale convention and colour stretch come from the model's metadata.
"""

import os
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import QTable
from astropy.utils.console import ProgressBar

from ._config import conf
from .acquire import CutoutSet, fetch_cutouts
from .logger import log
from .table import _result_meta, build_result_table
from .targets import resolve_targets

__all__ = ["predict_metallicity", "predict_metallicity_from_images"]

_PROGRESS_MIN_ROWS = 50
_CHUNK = 2048  # targets whose cutouts are held in memory at once


def _get_model(model, device):
    from .model import MetallicityModel, load_model

    if isinstance(model, MetallicityModel):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_model(model, device=device)
    msg = (f"model must be None (bundled model), a checkpoint path or a MetallicityModel from "
           f"load_model, got {type(model).__name__}")
    raise TypeError(msg)


def _model_scale(model, scale):
    """The pixel-scale argument for fetch_cutouts: explicit, else from the model metadata."""
    if scale is None:
        scale = model.pixel_scale
        if isinstance(scale, str):
            return scale
        return float(scale) * u.arcsec / u.pix
    if isinstance(scale, str):
        if scale != "adaptive":
            msg = f"scale must be None, 'adaptive' or a Quantity in arcsec/pix, got {scale!r}"
            raise ValueError(msg)
        return scale
    scale = u.Quantity(scale)
    if scale.unit == u.dimensionless_unscaled:
        msg = f"scale needs a unit, e.g. {scale.value} * u.arcsec / u.pix"
        raise u.UnitsError(msg)
    return scale


def _run_model(model, images, good, batch_size=None):
    """Predictions (full-length arrays, NaN where not good)."""
    n = len(images)
    out = {}
    idx = np.flatnonzero(good)
    if idx.size:
        raw = model.predict(images[idx], batch_size=batch_size)
    else:
        raw = {}
    for name in model.outputs:
        for key in (name, f"{name}_err"):
            full = np.full(n, np.nan)
            if idx.size:
                full[idx] = np.asarray(raw[key], dtype=float)
            out[key] = full
    return out


def predict_metallicity(targets, *, source=None, scale=None, model=None, device=None,
                        return_cutouts=False, progress=None):
    """Predict the gas-phase metallicity 12 + log(O/H) of galaxies at given positions.

    Parameters
    ----------
    targets : `~astropy.coordinates.SkyCoord` or `~astropy.table.Table`
        A scalar or array SkyCoord, or a table with a SkyCoord column or
        ra/dec columns (see `~astro_metallicity.resolve_targets`).
    source : {'frames', 'jpeg'}, optional
        Where cutouts come from (see `~astro_metallicity.fetch_cutouts`).
        Default ``conf.cutout_source``.
    scale : 'adaptive' or `~astropy.units.Quantity`, optional
        Pixel scale of the cutouts. Default: the convention the model was
        trained with (its metadata); override only knowingly.
    model : str, path-like or `~astro_metallicity.MetallicityModel`, optional
        Checkpoint path or a loaded model. Default ``conf.model_path`` or the
        bundled model.
    device : str, optional
        Torch device (``'cpu'``, ``'cuda'``, ...). Default ``conf.device``.
    return_cutouts : bool
        Also return the `~astro_metallicity.CutoutSet` (one cutout per row).
    progress : bool, optional
        Show a progress bar; default: for tables of 50 rows or more.

    Returns
    -------
    result : `~astropy.table.QTable`
        The input columns (a SkyCoord input gives a ``coord`` column), in the
        input order, plus ``metallicity`` and ``metallicity_err`` in
        `~astropy.units.dex`, ``log_mstar`` (dex(solMass)) and
        ``log_mstar_err`` when the model predicts stellar mass, and ``flag``
        (``''`` when predicted, else why not: ``'bad_coordinates: ...'``,
        ``'outside_footprint'``, ``'no_petrosian_radius'``,
        ``'partial_coverage'``, ``'fetch_failed: ...'``). Predictions are
        masked on flagged rows. ``meta['astro_metallicity']`` records
        versions, data release, source and model provenance and hash.
    cutouts : `~astro_metallicity.CutoutSet`
        Only with ``return_cutouts=True``.

    Examples
    --------
    >>> from astropy.coordinates import SkyCoord
    >>> from astro_metallicity import predict_metallicity
    >>> result = predict_metallicity(SkyCoord(185.0, 1.0, unit="deg"))  # doctest: +SKIP
    >>> result["metallicity"]  # doctest: +SKIP
    """
    resolved = resolve_targets(targets)
    model = _get_model(model, device)
    source = conf.cutout_source if source is None else source
    if source not in ("frames", "jpeg"):
        msg = f"source must be 'frames' or 'jpeg', got {source!r}"
        raise ValueError(msg)
    cutout_scale = _model_scale(model, scale)
    if scale is not None and str(model.pixel_scale) != str(scale):
        log.warning(f"scale={scale} differs from the convention the model was trained with "
                    f"({model.pixel_scale!r}); predictions may be biased")
    size = model.cutout_size
    n = len(resolved)
    if progress is None:
        progress = n >= _PROGRESS_MIN_ROWS
    flags = np.array(resolved.flags, dtype=object)
    good = flags == ""
    # Long tables run in chunks so that only one chunk of cutouts is in memory
    # (unless the caller asks for all of them).
    images = np.zeros((n if return_cutouts else 0, size, size, 3), dtype=np.uint8)
    scales = np.full(n, np.nan)
    predictions = {}
    for name in model.outputs:
        predictions[name] = np.full(n, np.nan)
        predictions[f"{name}_err"] = np.full(n, np.nan)
    idx = np.flatnonzero(good)
    log.info(f"predicting metallicity for {n} targets ({n - idx.size} with bad coordinates) "
             f"from {source!r} cutouts")
    chunks = [idx[k:k + _CHUNK] for k in range(0, idx.size, _CHUNK)]
    bar, done = None, 0
    if progress and len(chunks) > 1:
        bar = ProgressBar(idx.size, ipython_widget=False)
    for chunk in chunks:
        scale_arg = cutout_scale
        if not isinstance(cutout_scale, str) and np.ndim(cutout_scale) == 1:
            scale_arg = cutout_scale[chunk]
        cut = fetch_cutouts(resolved.coords[chunk], source=source, scale=scale_arg, size=size,
                            stretch=model.stretch, progress=progress and bar is None)
        flags[chunk] = cut.flags
        scales[chunk] = cut.scales.to_value(u.arcsec / u.pix)
        ok = np.asarray(cut.flags) == ""
        out = _run_model(model, cut.images, ok)
        for key, values in out.items():
            predictions[key][chunk] = values
        if return_cutouts:
            images[chunk] = cut.images
        done += len(chunk)
        if bar is not None:
            bar.update(done)
    good = flags == ""
    meta = _result_meta(model=model, source=source, data_release=conf.data_release,
                       scale=cutout_scale if isinstance(cutout_scale, str) or
                       np.ndim(cutout_scale) == 0 else "per target")
    result = build_result_table(resolved.table, flags.astype(str), predictions, meta=meta)
    n_bad = int(np.sum(~good))
    if n_bad:
        log.info(f"{n_bad} of {n} targets have no prediction; see the 'flag' column")
    if return_cutouts:
        return result, CutoutSet(images, flags.astype(str), scales * u.arcsec / u.pix, source)
    return result


def _load_image(item, size):
    """One image (path or array) as uint8 (size, size, 3); raises ValueError when unusable."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        with Image.open(item) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    else:
        arr = np.asarray(item)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            msg = f"image arrays must have shape (H, W, 3), got {arr.shape}"
            raise ValueError(msg)
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and np.nanmax(arr) <= 1.0:
                arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255)
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR),
                         dtype=np.uint8)
    return arr


def predict_metallicity_from_images(images, *, model=None, device=None, names=None):
    """Predict metallicity from *gri* colour cutouts you already have.

    The cutouts must follow the SDSS ImgCutout convention the model was
    trained on: *i*, *r*, *g* in red, green, blue with SDSS's asinh stretch,
    framed like the model's training cutouts (for the bundled model: 128 px
    spanning about 5 petroR90_r, see ``model.metadata``). Images of another
    size are resized to the model's cutout size.

    Parameters
    ----------
    images : str, path-like, array or sequence of them
        JPEG/PNG file paths, a uint8 array ``(N, H, W, 3)`` or ``(H, W, 3)``,
        or a list of paths/arrays.
    model : str, path-like or `~astro_metallicity.MetallicityModel`, optional
        Default ``conf.model_path`` or the bundled model.
    device : str, optional
        Torch device. Default ``conf.device``.
    names : sequence of str, optional
        Row labels for the ``image`` column; default the file paths, or
        the array index.

    Returns
    -------
    result : `~astropy.table.QTable`
        ``image`` plus the prediction columns of `predict_metallicity`;
        unreadable images are flagged ``'unreadable_image: ...'`` and masked.
    """
    model = _get_model(model, device)
    if isinstance(images, (str, os.PathLike)):
        items = [images]
    elif isinstance(images, np.ndarray):
        if images.ndim == 3:
            items = [images]
        elif images.ndim == 4:
            items = list(images)
        else:
            msg = f"images array must have shape (N, H, W, 3) or (H, W, 3), got {images.shape}"
            raise ValueError(msg)
    else:
        try:
            items = list(images)
        except TypeError:
            msg = (f"images must be a path, an array or a sequence of paths/arrays, got "
                   f"{type(images).__name__}")
            raise TypeError(msg) from None
    n = len(items)
    if names is None:
        names = [str(Path(it)) if isinstance(it, (str, os.PathLike)) else str(k)
                 for k, it in enumerate(items)]
    elif len(names) != n:
        msg = f"names has {len(names)} entries for {n} images; give one name per image"
        raise ValueError(msg)
    size = model.cutout_size
    arrays = np.zeros((n, size, size, 3), dtype=np.uint8)
    flags = np.full(n, "", dtype=object)
    for k, item in enumerate(items):
        try:
            arrays[k] = _load_image(item, size)
        except (OSError, ValueError) as exc:
            flags[k] = f"unreadable_image: {exc}"
    predictions = _run_model(model, arrays, flags == "")
    table = QTable({"image": np.asarray(names, dtype=str)})
    return build_result_table(table, flags.astype(str), predictions,
                              meta=_result_meta(model=model, source="images"))
