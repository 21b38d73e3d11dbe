"""Predict gas-phase metallicity for targets on the sky or for cutouts in hand.

`predict_metallicity` runs the whole pipeline: targets
(`~astro_metallicity.resolve_targets`) -> cutouts
(`~astro_metallicity.fetch_cutouts`, which builds them with
`astro_metallicity.preprocess`) -> CNN (`~astro_metallicity.load_model`)
-> result table (`~astro_metallicity.table.build_result_table`). Cutout size,
pixel-scale convention and colour stretch come from the model's metadata.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import QTable
from astropy.utils.console import ProgressBar

from ._config import conf
from .acquire import CutoutSet, fetch_cutouts
from .acquire._fields import sky_order
from .logger import log
from .table import FLAG_OK, _result_meta, build_result_table
from .targets import resolve_targets

__all__ = ["predict_metallicity", "predict_metallicity_from_images"]

_PROGRESS_MIN_ROWS = 50
_CHUNK = 2048  # targets whose cutouts are held in memory at once


def _get_model(model, device):
    from .model import _as_model

    return _as_model(model, device)


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


def _model_source(model):
    """The cutout source the model records it was trained on, or None."""
    recorded = model.metadata.get("cutout_source")
    return recorded if recorded in ("frames", "jpeg") else None


def _check_source(source):
    if source not in ("frames", "jpeg"):
        msg = f"source must be 'frames' or 'jpeg', got {source!r}"
        raise ValueError(msg)
    return source


def _resolve_source(source, model):
    """The explicit source, else the model's training source, else ``conf.cutout_source``."""
    if source is None:
        trained_on = _model_source(model)
        if trained_on is not None:
            log.debug(f"cutout source {trained_on!r}: the source the model was trained on")
        source = trained_on or conf.cutout_source
    return _check_source(source)


def _run_model(model, images, good, batch_size=None):
    """Predictions and OOD scores (full-length arrays, NaN where not good)."""
    from .ood import _score_from_run

    n = len(images)
    out = {}
    idx = np.flatnonzero(good)
    scores = np.full(n, np.nan)
    if idx.size:
        embed = getattr(model, "ood_reference", None) is not None
        raw, embedding = model._run(images[idx], batch_size=batch_size, embed=embed)
        if embed:
            scores[idx] = _score_from_run(model, embedding, images[idx])
    else:
        raw = {}
    for name in model.outputs:
        for key in (name, f"{name}_err"):
            full = np.full(n, np.nan)
            if idx.size:
                full[idx] = np.asarray(raw[key], dtype=float)
            out[key] = full
    return out, scores


def _ood_threshold(model):
    """The model's OOD threshold; None (and a log note) for a model without a reference."""
    from .ood import _threshold

    threshold = _threshold(model)
    if not np.isfinite(threshold):
        log.info("the model has no out-of-distribution reference statistics: ood_score is "
                 "masked and no row is flagged 'ood' (see astro_metallicity.ood)")
        return None
    return threshold


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
        Default: the source the model was trained on when its metadata
        records it (``metadata['cutout_source']``), else
        ``conf.cutout_source``. The source used is in
        ``meta['astro_metallicity']``.
    scale : 'adaptive' or `~astropy.units.Quantity`, optional
        Pixel scale of the cutouts, one value or one per target. Default: the
        convention the model was trained with (its metadata); override only
        knowingly.
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
        ``log_mstar_err`` when the model predicts stellar mass,
        ``ood_score`` (how unlike the model's training images the cutout is,
        see `astro_metallicity.ood.ood_score`; masked where there is no
        cutout or the model has no reference statistics) and ``flag``
        (``'ok'`` when predicted; ``'ood: unlike the training images (score
        S > T)'`` when predicted from an unusual cutout, prediction kept;
        else why not: ``'bad_coordinates: ...'``, ``'outside_footprint'``,
        ``'no_petrosian_radius'``, ``'partial_coverage'``, ``'bad_scale'``,
        ``'fetch_failed: ...'``, ``'model_failed: non-finite output'``).
        Predictions are masked on rows without one, and only there.
        ``meta['astro_metallicity']`` records versions, data release, source
        and model provenance, hash and OOD threshold.
    cutouts : `~astro_metallicity.CutoutSet`
        Only with ``return_cutouts=True``.

    Raises
    ------
    ValueError
        If ``source`` is unknown, or ``scale`` has neither one value nor one
        per target.

    Examples
    --------
    >>> from astropy.coordinates import SkyCoord
    >>> from astro_metallicity import predict_metallicity
    >>> result = predict_metallicity(SkyCoord(185.0, 1.0, unit="deg"))  # doctest: +SKIP
    >>> result["metallicity"]  # doctest: +SKIP
    """
    resolved = resolve_targets(targets)
    if source is not None:
        _check_source(source)  # a typo fails before the model is loaded
    model = _get_model(model, device)
    source = _resolve_source(source, model)
    cutout_scale = _model_scale(model, scale)
    n = len(resolved)
    if not isinstance(cutout_scale, str) and np.ndim(cutout_scale) > 0 and (
            np.ndim(cutout_scale) > 1 or len(cutout_scale) != n):
        msg = (f"scale has shape {np.shape(cutout_scale)} for {n} targets; give one scale "
               f"or one per target (shape ({n},))")
        raise ValueError(msg)
    if scale is not None and str(model.pixel_scale) != str(scale):
        log.warning(f"scale={scale} differs from the convention the model was trained with "
                    f"({model.pixel_scale!r}); predictions may be biased")
    size = model.cutout_size
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
    scores = np.full(n, np.nan)
    threshold = _ood_threshold(model)
    idx = np.flatnonzero(good)
    log.info(f"predicting metallicity for {n} targets ({n - idx.size} with bad coordinates) "
             f"from {source!r} cutouts")
    # Chunks of neighbouring targets (sky order: a chunk's targets share SDSS fields, so
    # each frame is decompressed about once and one Field query serves many). The CNN
    # runs a chunk in a thread (torch releases the GIL) while this thread fetches the
    # next one, so at most two chunks of cutouts are in memory. A table is cut into at
    # least 8 chunks (of 32 to _CHUNK targets) on the frames route so that the pipeline
    # fills early (on the jpeg route the network is most of the time and small chunks
    # only add overhead); the fetching stays in this thread, where a Ctrl-C cancels its
    # downloads at once.
    idx = idx[sky_order(resolved.coords[idx])]
    step = min(_CHUNK, max(32, -(-idx.size // 8))) if source == "frames" else _CHUNK
    chunks = [idx[k:k + step] for k in range(0, idx.size, step)]
    bar, done = None, 0
    if progress and len(chunks) > 1:
        bar = ProgressBar(idx.size, ipython_widget=False)

    def run_model(chunk, cut):
        ok = np.asarray(cut.flags) == ""
        out, scores[chunk] = _run_model(model, cut.images, ok)
        for key, values in out.items():
            predictions[key][chunk] = values

    cnn = ThreadPoolExecutor(1, thread_name_prefix="astro-metallicity-cnn")
    running = None
    try:
        for chunk in chunks:
            scale_arg = cutout_scale
            if not isinstance(cutout_scale, str) and np.ndim(cutout_scale) == 1:
                scale_arg = cutout_scale[chunk]
            cut = fetch_cutouts(resolved.coords[chunk], source=source, scale=scale_arg,
                                size=size, stretch=model.stretch,
                                progress=progress and bar is None)
            flags[chunk] = cut.flags
            scales[chunk] = cut.scales.to_value(u.arcsec / u.pix)
            if return_cutouts:
                images[chunk] = cut.images
            if running is not None:
                running.result()
                done += len(previous)
                if bar is not None:
                    bar.update(done)
            running, previous = cnn.submit(run_model, chunk, cut), chunk
            del cut
        if running is not None:
            running.result()
            if bar is not None:
                bar.update(idx.size)
    except BaseException:
        # a Ctrl-C or a failure: do not wait for the chunk on the CNN (its result is dropped)
        cnn.shutdown(wait=False, cancel_futures=True)
        raise
    cnn.shutdown(wait=True)
    meta = _result_meta(model=model, source=source, data_release=conf.data_release,
                       scale=cutout_scale if isinstance(cutout_scale, str) or
                       np.ndim(cutout_scale) == 0 else "per target")
    result = build_result_table(resolved.table, flags.astype(str), predictions, meta=meta,
                                ood_score=scores, ood_threshold=threshold)
    _log_summary(result, n, "targets")
    if return_cutouts:
        return result, CutoutSet(images, flags.astype(str), scales * u.arcsec / u.pix, source)
    return result


def _log_summary(result, n, what):
    flags = np.asarray(result["flag"])
    n_ood = int(np.sum(np.char.startswith(flags.astype(str), "ood:")))
    n_bad = int(np.sum(flags != FLAG_OK)) - n_ood
    if n_bad:
        log.info(f"{n_bad} of {n} {what} have no prediction; see the 'flag' column")
    if n_ood:
        log.info(f"{n_ood} of {n} {what} are unlike the model's training images (flag "
                 "'ood: ...'); their predictions are kept but may be wrong")


# What predict_metallicity_from_images accepts as an image (see its docstring). Real SDSS
# ImgCutout JPEGs (128 px) have a pixel standard deviation of 5.7 or more, channels that
# differ by 15 counts or more somewhere and no pixel at 255 in all three channels, so the
# limits below leave a wide margin for real cutouts. The grey test only catches an image
# whose channels are equal but for JPEG rounding: a faint cutout can be nearly grey.
_MIN_SIDE = 32  # px; a smaller image upsampled to the model's cutout holds no detail
_MAX_ASPECT = 1.02  # longer / shorter side; cutouts are square and a resize would distort
_MIN_STD = 2.0  # counts; below this an image has no galaxy in it ("blank")
_MAX_CHANNEL_SPREAD = 2  # counts; channels this close everywhere are grey (JPEG rounds)
_MAX_SATURATED = 0.2  # fraction of pixels at 255 in all channels
# Pillow modes of one 8-bit channel, and of one channel of more than 8 bits.
_GREY_MODES = ("1", "L", "LA", "La")
_DEEP_MODES = {"I": "32-bit integer", "F": "32-bit float", "I;16": "16-bit",
               "I;16B": "16-bit", "I;16L": "16-bit", "I;16N": "16-bit"}


def _read_image_file(path):
    """Pixels of an image file as an array, or a flag saying why it cannot be used."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in _DEEP_MODES:
                return None, (f"bad_image: {_DEEP_MODES[mode]} values (mode {mode}); expected "
                              "an 8-bit colour composite")
            if mode in _GREY_MODES:
                return None, "bad_image: grayscale (1 channel); expected a gri colour composite"
            return np.asarray(im.convert("RGB"), dtype=np.uint8), ""
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ... for bad files
        return None, f"unreadable_image: {exc}"


def _to_uint8(arr):
    """An (H, W, 3) array of numbers as uint8 0-255, or a flag saying why it cannot be."""
    if arr.dtype.kind not in "uif":  # bool, complex, text, objects
        return None, f"bad_image: {arr.dtype} values; expected numbers 0-255"
    if arr.dtype == np.uint8:
        return arr, ""
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            return None, f"bad_image: not finite ({bad} of {arr.size} values NaN or inf)"
        low, high = float(arr.min()), float(arr.max())
        if high <= 1.0:  # a float image in 0-1
            if low < -1.0 / 255:
                return None, f"bad_image: values out of range ({low:.3g} to {high:.3g})"
            return np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), ""
        if low < -1.0 or high > 256.0:
            return None, (f"bad_image: values out of range ({low:.4g} to {high:.4g}); expected "
                          "0-255 or 0-1")
        return np.clip(arr, 0, 255).astype(np.uint8), ""
    low, high = int(arr.min()), int(arr.max())
    if high > 255 and arr.dtype.itemsize == 2:
        return None, f"bad_image: 16-bit values (max {high} > 255); expected 8-bit 0-255"
    if low < 0 or high > 255:
        return None, f"bad_image: values out of range ({low} to {high}); expected 0-255"
    return arr.astype(np.uint8), ""


def _image_problem(arr):
    """Why a uint8 (H, W, 3) image is unlike a gri cutout, or ``''`` (sizes are width x height)."""
    height, width = arr.shape[:2]
    if min(height, width) < _MIN_SIDE:
        return f"bad_image: too small ({width}x{height} px < {_MIN_SIDE}x{_MIN_SIDE})"
    if max(height, width) > _MAX_ASPECT * min(height, width):
        return f"bad_image: not square ({width}x{height} px)"
    if int(arr.max()) == int(arr.min()):
        return f"bad_image: blank (every value {int(arr.max())})"
    saturated = float(np.mean(np.all(arr == 255, axis=-1)))
    if saturated > _MAX_SATURATED:
        return f"bad_image: saturated ({saturated:.0%} of pixels at 255)"
    std = float(arr.std())
    if std < _MIN_STD:
        return f"bad_image: blank (pixel standard deviation {std:.2f} < {_MIN_STD:g})"
    spread = arr.max(axis=-1).astype(np.int16) - arr.min(axis=-1)
    if int(spread.max()) <= _MAX_CHANNEL_SPREAD:
        return "bad_image: grayscale (R = G = B); expected a gri colour composite"
    return ""


def _load_image(item, size):
    """One image (path or array) as uint8 (size, size, 3), or None and a flag saying why not."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        arr, flag = _read_image_file(item)
        if arr is None:
            return None, flag
    else:
        try:
            arr = np.asarray(item)
        except (TypeError, ValueError) as exc:  # ragged nested lists
            return None, f"bad_image: not an array ({exc})"
        if arr.size == 0:
            return None, f"bad_image: empty (shape {arr.shape})"
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1):
            return None, "bad_image: grayscale (1 channel); expected a gri colour composite"
        if arr.ndim != 3:
            return None, f"bad_image: not an image (shape {arr.shape}); expected (H, W, 3)"
        if arr.shape[-1] != 3:
            return None, f"bad_image: {arr.shape[-1]} channels; expected 3 (RGB, shape (H, W, 3))"
        arr, flag = _to_uint8(arr)
        if arr is None:
            return None, flag
    flag = _image_problem(arr)
    if flag:
        return None, flag
    if arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR),
                         dtype=np.uint8)
    return arr, ""


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
        or a list of paths/arrays. Arrays may also hold floats in 0-1 or
        0-255, or integers in 0-255.
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
        ``image`` plus the prediction columns of `predict_metallicity`. An
        image that cannot be used is not predicted: its row is masked and
        flagged ``'unreadable_image: ...'`` (not an image file) or
        ``'bad_image: <why>'``, one of ``empty``, ``not finite``,
        ``grayscale``, ``N channels``, ``16-bit values``, ``values out of
        range``, ``too small`` (a side under 32 px), ``not square`` (sides
        differing by more than 2 %), ``saturated`` (over 20 % of pixels at 255
        in all channels), ``blank`` (pixel standard deviation under 2 counts;
        real SDSS cutouts have 5 or more), with the numbers that failed (sizes
        are width x height). A non-finite prediction is flagged
        ``'model_failed: non-finite output'``. A usable image unlike the
        model's training images keeps its prediction and is flagged
        ``'ood: unlike the training images (score S > T)'`` (column
        ``ood_score``, see `astro_metallicity.ood.ood_score`).

    Raises
    ------
    TypeError
        If ``images`` is not a path, an array or a sequence.
    ValueError
        If an ``images`` array is neither one image ``(H, W, 3)`` nor a batch
        ``(N, H, W, 3)``, or ``names`` does not give one name per image.

    Notes
    -----
    The image checks catch images that cannot be SDSS *gri* cutouts; the
    out-of-distribution score catches many that pass them but are unlike the
    training data (stars, empty sky, artefacts, swapped colour channels, other
    stretches), not all (some stars and square-root stretches pass; see the
    documentation's page of limits).
    """
    if isinstance(images, (str, os.PathLike)):
        items = [images]
    elif isinstance(images, np.ndarray):
        # A bare array is one image or a batch of them; any other shape is not a set of
        # colour images as a whole, and guessing which axis is which would be wrong.
        if images.ndim == 3 and images.shape[-1] == 3:
            items = [images]
        elif images.ndim == 4 and images.shape[-1] == 3:
            items = list(images)
        else:
            msg = (f"images array must have shape (N, H, W, 3) or (H, W, 3) (RGB colour "
                   f"composites), got {images.shape}; pass a list of arrays to have unusable "
                   "images (grayscale, ...) flagged one by one")
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
    model = _get_model(model, device)
    size = model.cutout_size
    arrays = np.zeros((n, size, size, 3), dtype=np.uint8)
    flags = np.full(n, "", dtype=object)
    for k, item in enumerate(items):
        arr, flags[k] = _load_image(item, size)
        if arr is not None:
            arrays[k] = arr
    threshold = _ood_threshold(model)
    predictions, scores = _run_model(model, arrays, flags == "")
    table = QTable({"image": np.asarray(names, dtype=str)})
    result = build_result_table(table, flags.astype(str), predictions,
                                meta=_result_meta(model=model, source="images"),
                                ood_score=scores, ood_threshold=threshold)
    _log_summary(result, n, "images")
    return result
