"""Predict metallicity for large catalogues, partition by partition, on Dask workers.

`predict_metallicity_catalog` takes an LSDB ``lsdb.Catalog`` (HATS: partitions
are HEALPix tiles, so neighbours on the sky, which share SDSS fields, are
fetched together) or a ``dask.dataframe.DataFrame`` with coordinate columns, and
returns the same kind of lazy object with the prediction columns added. Each
partition runs the ordinary `~astro_metallicity.predict_metallicity` on the
workers, so the values are those of the single-process path.

`partition_by_healpix` gives a Dask DataFrame the partitions of a HATS
catalogue (one HEALPix tile each, of at most a given number of rows). The
command line's large jobs (``astro-metallicity predict ... --workers N`` or
``--scheduler ADDRESS``) use both, writing each finished tile as a Parquet file
and resuming a stopped job from the files already written (``_run_job``).

Needs the optional extra: ``pip install "astro-metallicity[distributed]"``
(``dask[distributed]`` and ``lsdb``). Dask and LSDB are imported only when a
function of this module runs; ``import astro_metallicity`` never needs them.
"""

import functools
import os
import sys
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from astropy import config as _astropy_config
from astropy import units as u
from astropy.table import Table

from ._config import Conf, conf
from .logger import log
from .table import _OUTPUT_UNITS

__all__ = ["PREDICTION_UNITS", "SPATIAL_INDEX", "auto_partition_rows", "partition_by_healpix",
           "predict_metallicity_catalog"]

_INSTALL_HINT = 'pip install "astro-metallicity[distributed]"'

#: Units of the prediction columns (strings, as recorded in ``attrs``).
PREDICTION_UNITS = {name: unit.to_string() for name, unit in _OUTPUT_UNITS.items()}

#: Name of the spatial index `partition_by_healpix` adds: the NESTED HEALPix pixel at order 29
#: of each row, as HATS and LSDB name and compute it; -1 for a row without usable coordinates.
SPATIAL_INDEX = "_healpix_29"
_NO_POSITION = -1
_SPATIAL_ORDER = 29

# The key under which result partitions (and the result's meta) record units and provenance
# in ``DataFrame.attrs``.
_ATTRS_KEY = "astro_metallicity"


def _require_dask():
    try:
        import dask.dataframe as dd
    except ImportError as exc:
        msg = (f"predict_metallicity_catalog needs dask[dataframe] (and lsdb for HATS "
               f"catalogues): {_INSTALL_HINT} ({exc})")
        raise ImportError(msg) from exc
    return dd


def _is_lsdb_catalog(obj):
    """True for an LSDB catalogue, without importing lsdb when the caller has not."""
    return any(cls.__module__.split(".")[0] == "lsdb" for cls in type(obj).__mro__)


# --- configuration travelling to the workers --------------------------------------------------

def conf_snapshot():
    """The current values of every ``astro_metallicity.conf`` item, as a plain dict.

    Worker processes read their own configuration (defaults or their own
    ``astro_metallicity.cfg``), not the client's: `predict_metallicity_catalog`
    takes this snapshot in the client and applies it around each partition.

    Returns
    -------
    snapshot : dict
        ``{item name: value}``.
    """
    return {name: getattr(conf, name) for name, item in vars(Conf).items()
            if isinstance(item, _astropy_config.ConfigItem)}


# One snapshot at a time is applied in a process; tasks running on several threads of one
# worker share it (reference count) instead of undoing each other's conf.set_temp.
_conf_state = {"key": None, "count": 0, "stack": None}
_conf_cond = threading.Condition()


@contextmanager
def _applied_conf(snapshot):
    key = tuple(sorted((name, repr(value)) for name, value in snapshot.items()))
    with _conf_cond:
        while _conf_state["count"] and _conf_state["key"] != key:
            _conf_cond.wait()
        if _conf_state["count"] == 0:
            stack = ExitStack()
            try:
                for name, value in snapshot.items():
                    stack.enter_context(conf.set_temp(name, value))
            except Exception:
                stack.close()
                raise
            _conf_state.update(key=key, stack=stack)
        _conf_state["count"] += 1
    try:
        yield
    finally:
        with _conf_cond:
            _conf_state["count"] -= 1
            if _conf_state["count"] == 0:
                stack = _conf_state["stack"]
                _conf_state.update(key=None, stack=None)
                stack.close()
                _conf_cond.notify_all()


def _threads_in_this_worker():
    """Threads of the Dask worker running this task (1 outside a distributed worker)."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


# --- the model, once per worker process ---------------------------------------------------------

_model_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _cached_model(path, device, _stamp):
    from .model import load_model

    return load_model(path, device=device)


def _worker_model(path, device):
    """The model at ``path``, loaded once per process (keyed by path, size and mtime)."""
    stat = os.stat(path)
    with _model_lock:
        return _cached_model(str(path), device, (stat.st_size, stat.st_mtime_ns))


def _model_loads():
    """How many times this process loaded a model for `predict_metallicity_catalog`."""
    return _cached_model.cache_info().misses


# --- one partition ------------------------------------------------------------------------------

def _empty_predictions(frame, outputs):
    import pandas as pd

    cols = {}
    for name in outputs:
        for key in (name, f"{name}_err"):
            cols[key] = pd.Series(np.full(len(frame), np.nan), index=frame.index)
    cols["ood_score"] = pd.Series(np.full(len(frame), np.nan), index=frame.index)
    cols["flag"] = pd.Series(np.full(len(frame), "", dtype=object), index=frame.index,
                             dtype=_flag_dtype())
    return cols


def _flag_dtype():
    import pandas as pd

    return pd.StringDtype()


def _coordinate_column(series):
    """A partition's coordinate column for resolve_targets: missing values masked, as
    `astropy.table.Table.from_pandas` has them (numbers as float, text as text)."""
    import pandas as pd
    from astropy.table import MaskedColumn

    mask = np.asarray(series.isna(), dtype=bool)
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.astype("float64").to_numpy(na_value=np.nan)
    else:
        values = np.asarray(series.astype(object).where(~mask, ""), dtype=str)
    return MaskedColumn(values, mask=mask)


def _unmasked_float(column):
    """A result column's values as float64, NaN where masked (a Parquet/pandas column)."""
    values = getattr(column, "unmasked", column)
    values = np.asarray(getattr(values, "value", values), dtype=np.float64)
    return np.where(np.asarray(getattr(column, "mask", False)), np.nan, values)


def _predict_partition(frame, *, ra_column, dec_column, source, scale, model, device, outputs,
                       snapshot, attrs, scale_column=None):
    """Predictions for one partition: the input rows, in order, plus the prediction columns."""
    import pandas as pd

    from .predict import predict_metallicity

    if len(frame) == 0:
        cols = _empty_predictions(frame, outputs)
    else:
        snapshot = dict(snapshot)
        # conf.max_workers is the politeness limit per worker process; tasks running on
        # several threads of one worker share it.
        snapshot["max_workers"] = max(1, int(snapshot["max_workers"]) //
                                      _threads_in_this_worker())
        with _applied_conf(snapshot):
            loaded = _worker_model(model, device) if isinstance(model, str) else model
            targets = Table({"ra": _coordinate_column(frame[ra_column]),
                             "dec": _coordinate_column(frame[dec_column])})
            if scale_column is not None:
                # one scale per row, in arcsec/pix; a missing one is NaN, which
                # fetch_cutouts flags as 'bad_scale'
                scale = pd.to_numeric(frame[scale_column], errors="coerce").to_numpy(
                    dtype=np.float64, na_value=np.nan) * (u.arcsec / u.pix)
            result = predict_metallicity(targets, source=source, scale=scale, model=loaded,
                                         progress=False)
        cols = {}
        for name in outputs:
            for key in (name, f"{name}_err"):
                cols[key] = pd.Series(_unmasked_float(result[key]), index=frame.index)
        cols["ood_score"] = pd.Series(_unmasked_float(result["ood_score"]), index=frame.index)
        cols["flag"] = pd.Series(np.asarray(result["flag"].filled(""), dtype=str),
                                 index=frame.index, dtype=_flag_dtype())
    out = frame.assign(**cols)
    out.attrs = dict(frame.attrs)
    out.attrs[_ATTRS_KEY] = attrs
    return out


# --- spatial partitions for a Dask DataFrame ----------------------------------------------------

def _spatial_index(frame, ra_column, dec_column):
    """The HATS spatial index of each row of a partition; -1 where there is no usable position
    (the rows `~astro_metallicity.resolve_targets` will flag in any case)."""
    import pandas as pd
    from hats.pixel_math.spatial_index import compute_spatial_index

    def degrees(name):
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64,
                                                                     na_value=np.nan)

    ra, dec = degrees(ra_column), degrees(dec_column)
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    index = np.full(len(frame), _NO_POSITION, dtype=np.int64)
    if ok.any():
        index[ok] = compute_spatial_index(np.mod(ra[ok], 360.0), dec[ok])
    return pd.Series(index, index=frame.index, name=SPATIAL_INDEX)


def _client_workers():
    """Number of workers of the current ``distributed`` client (1 without one)."""
    try:
        from distributed import default_client

        return max(1, len(default_client().scheduler_info(n_workers=-1)["workers"]))
    except (ImportError, ValueError, TypeError):
        return 1


def auto_partition_rows(n_rows, n_workers=1):
    """Rows per partition for a table of ``n_rows`` on ``n_workers`` workers.

    At least four partitions per worker, so that a worker finishing early
    finds work, a lost worker costs little and finished partitions come in
    steadily; at most 5,000 rows, so that a partition's cutouts (48 kB each)
    and its result stay small whatever the table length; at least 10 rows.

    Parameters
    ----------
    n_rows : int
        Rows of the table.
    n_workers : int
        Workers of the cluster.

    Returns
    -------
    rows : int
    """
    return int(np.clip(np.ceil(n_rows / (4 * max(1, n_workers))), 10, 5000))


def partition_by_healpix(catalog, *, ra_column=None, dec_column=None, partition_rows=None,
                         highest_order=12, row_column="input_row"):
    """Repartition a Dask DataFrame into HEALPix tiles, as HATS catalogues are partitioned.

    Each row gets its NESTED HEALPix pixel at order 29 (``SPATIAL_INDEX``,
    ``_healpix_29``, computed by ``hats`` as LSDB does) as the index. Counts
    per order-``highest_order`` pixel are taken in one pass over the data, and
    HATS's alignment rule makes tiles of at most ``partition_rows`` rows: the
    largest HEALPix pixels (lowest orders) that hold no more, so the order of
    each tile follows from the table's size and density.
    The result has one partition per tile, sorted by the spatial index, so
    neighbours on the sky, which share SDSS fields, are in one partition and
    their fields are fetched by one task. Memory stays bounded: the counts
    are one number per occupied pixel, and the rows are moved by Dask's
    disk-backed shuffle.

    Parameters
    ----------
    catalog : ``dask.dataframe.DataFrame``
        Targets with right ascension and declination in degrees.
    ra_column, dec_column : str, optional
        Coordinate columns; default the names
        `~astro_metallicity.resolve_targets` recognises.
    partition_rows : int, optional
        Most rows of a tile (a single order-``highest_order`` pixel with more
        rows stays one partition). Default ``auto_partition_rows`` for the
        table length and the workers of the current Dask client.
    highest_order : int
        Finest HEALPix order of a tile (order 12: pixels of 52 arcsec, about
        one cutout; an SDSS field is 13.5 x 9.8 arcmin, an order-8 pixel).
    row_column : str or None
        Name of a column added with each row's number in the input (0, 1,
        ...), so that ``sort_values(row_column)`` restores the input order;
        None adds none.

    Returns
    -------
    frame : ``dask.dataframe.DataFrame``
        The rows (all input columns, plus ``row_column``), indexed by
        ``SPATIAL_INDEX`` and partitioned by tile. The first partition holds
        the rows without a usable position (index -1); it may be empty.
    pixels : list
        One entry per partition: None for the first, then the tile as a
        ``hats.pixel_math.HealpixPixel`` (order, pixel).

    Raises
    ------
    TypeError
        If ``catalog`` is not a Dask DataFrame.
    ValueError
        If the coordinate columns cannot be found, or the input already has a
        column named ``SPATIAL_INDEX`` or ``row_column``.
    """
    frame, pixels, _, _ = _plan_healpix(catalog, ra_column=ra_column, dec_column=dec_column,
                                        partition_rows=partition_rows,
                                        highest_order=highest_order, row_column=row_column)
    return frame, pixels


def _plan_healpix(catalog, *, ra_column, dec_column, partition_rows, highest_order, row_column):
    """`partition_by_healpix`, also returning the rows of each partition and the divisions."""
    dd = _require_dask()
    from hats.pixel_math import HealpixPixel

    if not isinstance(catalog, dd.DataFrame):
        msg = (f"catalog must be a dask.dataframe.DataFrame, got {type(catalog).__name__} "
               "(an LSDB catalogue is partitioned by HEALPix tile already)")
        raise TypeError(msg)
    columns = list(catalog.columns)
    ra_column, dec_column = _find_columns(columns, ra_column, dec_column)
    clash = [name for name in (SPATIAL_INDEX, row_column) if name is not None and name in columns]
    if clash:
        msg = f"the catalogue already has column(s) {clash}; rename or drop them first"
        raise ValueError(msg)

    frame = _with_spatial_index(catalog, ra_column, dec_column, row_column)
    shift = 2 * (_SPATIAL_ORDER - highest_order)
    # floor division keeps -1 (no position) as -1
    counts = (frame[SPATIAL_INDEX] // (1 << shift)).value_counts().compute()
    n_rows = int(counts.sum())
    counts = counts[counts.index >= 0].sort_index()
    if partition_rows is None:
        partition_rows = auto_partition_rows(n_rows, _client_workers())
    order_of = _healpix_tiles(counts.index.to_numpy(np.int64), counts.to_numpy(np.int64),
                              highest_order, int(partition_rows))
    starts = [pixel << 2 * (_SPATIAL_ORDER - order) for order, pixel, _ in order_of]
    if order_of:
        order, pixel, _ = order_of[-1]
        divisions = [_NO_POSITION, *starts, ((pixel + 1) << 2 * (_SPATIAL_ORDER - order)) - 1]
    else:
        divisions = [_NO_POSITION, _NO_POSITION]
    frame = frame.set_index(SPATIAL_INDEX, divisions=divisions)
    pixels = [None, *(HealpixPixel(order, pixel) for order, pixel, _ in order_of)]
    rows = [n_rows - int(counts.sum()), *(n for _, _, n in order_of)]
    return frame, pixels, rows, divisions


def _healpix_tiles(pixels, counts, highest_order, threshold):
    """HATS's alignment of occupied order-``highest_order`` pixels into tiles: from order 0
    down, a pixel with at most ``threshold`` rows is a tile, a fuller one is split into its
    four children (an order-``highest_order`` pixel is a tile whatever its count).

    The same rule as ``hats.pixel_math.generate_alignment``, on the occupied pixels only:
    that one walks a dense histogram of 12 * 4**order bins (2 s at order 9, 100 MB at
    order 10), too slow and large for the fine orders dense fields need.

    Returns [(order, pixel, rows)] sorted by position along the NESTED curve.
    """
    tiles = []
    left = np.ones(len(pixels), dtype=bool)
    for order in range(highest_order + 1):
        if not left.any():
            break
        parents = pixels[left] >> 2 * (highest_order - order)
        unique, inverse = np.unique(parents, return_inverse=True)
        sums = np.bincount(inverse, weights=counts[left]).astype(np.int64)
        accept = (sums <= threshold) if order < highest_order else np.ones(len(unique), bool)
        tiles.extend((order, int(pixel), int(n)) for pixel, n in
                     zip(unique[accept], sums[accept], strict=True))
        rows = np.flatnonzero(left)
        left[rows[accept[inverse]]] = False
    return sorted(tiles, key=lambda tile: tile[1] << 2 * (highest_order - tile[0]))


def _with_spatial_index(catalog, ra_column, dec_column, row_column):
    """The input with the input row number and the `SPATIAL_INDEX` column added (lazy)."""
    import pandas as pd

    frame = catalog
    if row_column is not None:
        frame = frame.assign(**{row_column: 1})
        frame[row_column] = frame[row_column].cumsum() - 1
    spatial = frame.map_partitions(_spatial_index, ra_column, dec_column,
                                   meta=pd.Series([], dtype="int64", name=SPATIAL_INDEX))
    return frame.assign(**{SPATIAL_INDEX: spatial})


# --- the entry point ----------------------------------------------------------------------------

def _find_columns(columns, ra_column, dec_column):
    from .targets import _find_coord_columns

    if (ra_column is None) != (dec_column is None):
        msg = "give both ra_column and dec_column, or neither"
        raise ValueError(msg)
    if ra_column is None:
        found = _find_coord_columns(Table({name: [] for name in columns}))
        if found is None or found[0] != "radec":
            msg = (f"the catalogue has no recognised coordinate columns (columns: "
                   f"{list(columns)}); pass ra_column= and dec_column= (degrees, ICRS)")
            raise ValueError(msg)
        ra_column, dec_column = found[1]
    missing = [name for name in (ra_column, dec_column) if name not in columns]
    if missing:
        msg = f"column(s) {missing} not in the catalogue (columns: {list(columns)})"
        raise ValueError(msg)
    return ra_column, dec_column


def predict_metallicity_catalog(catalog, *, ra_column=None, dec_column=None, source=None,
                                scale=None, scale_column=None, model=None, device=None):
    """Predict metallicity for a Dask or LSDB catalogue, partition by partition, on the workers.

    Lazy: nothing runs until the result is computed (``.compute()``,
    ``.to_parquet``, ``Catalog.to_hats``, ...), on whatever Dask scheduler is
    active (a ``distributed.Client`` when one exists). Each partition becomes a
    table for `~astro_metallicity.predict_metallicity`, so each row's values
    equal those of the single-process path.

    Parameters
    ----------
    catalog : ``lsdb.Catalog`` or ``dask.dataframe.DataFrame``
        The targets, one row per galaxy, with right ascension and declination
        in degrees (ICRS). An LSDB catalogue is partitioned by HEALPix tile,
        so galaxies sharing an SDSS field are fetched by the same task; a
        Dask DataFrame is used as it is partitioned: pass it through
        ``astro_metallicity.distributed.partition_by_healpix`` first for the
        same benefit.
    ra_column, dec_column : str, optional
        Coordinate columns. Default: the catalogue's own (LSDB), else the
        names `~astro_metallicity.resolve_targets` recognises (``ra``/``dec``,
        ``RA``/``DEC``, ...).
    source : {'frames', 'jpeg'}, optional
        Cutout source; default as in `~astro_metallicity.predict_metallicity`.
    scale : 'adaptive' or `~astropy.units.Quantity`, optional
        One pixel scale for all targets; default the model's convention.
    scale_column : str, optional
        A column with one pixel scale per target, in arcsec/pix (instead of
        ``scale``); rows where it is missing or not positive are flagged
        ``'bad_scale'``.
    model : str, path-like or `~astro_metallicity.MetallicityModel`, optional
        Checkpoint path (default ``conf.model_path`` or the bundled model).
        The workers load it from this path, once per worker process, so the
        path must be readable on every worker. A loaded model with a path is
        reloaded from that path on the workers.
    device : str, optional
        Torch device on the workers. Default ``conf.device``.

    Returns
    -------
    result : ``lsdb.Catalog`` or ``dask.dataframe.DataFrame``
        The same kind of object: the input columns and index (LSDB keeps its
        ``_healpix_29`` index and partitions), rows in the input order, plus
        ``metallicity``, ``metallicity_err``, ``log_mstar`` and
        ``log_mstar_err`` (when the model predicts stellar mass) as float64
        with NaN where there is no prediction, ``ood_score`` (float64, NaN
        where there is none; see `~astro_metallicity.ood.ood_score`) and
        ``flag`` (string; ``'ok'`` when predicted, ``'ood: ...'`` when
        predicted but unlike the training images, else why not, as in
        `~astro_metallicity.predict_metallicity`). Units
        (``astro_metallicity.distributed.PREDICTION_UNITS``:
        ``dex`` and ``dex(solMass)``) and provenance are recorded in
        ``attrs['astro_metallicity']`` of the result's meta and of every
        computed partition (pandas keeps them through ``compute()``; Dask's
        ``to_parquet`` stores them in the pandas metadata of the files, LSDB's
        ``to_hats`` does not).

    Raises
    ------
    ImportError
        If dask is not installed.
    TypeError
        If ``catalog`` is neither an LSDB catalogue nor a Dask DataFrame.
    ValueError
        If the coordinate or scale columns cannot be found, ``source`` is
        unknown, ``scale`` is not a single value or is given with
        ``scale_column``, or the input has a prediction column.

    Notes
    -----
    Worker processes do not see the client's ``astro_metallicity.conf``. The
    values of every item at the time of this call (SDSS URLs, data release,
    timeout, retries, ``max_workers``, ``cache_dir``, ``batch_size``, ...) are
    recorded here and applied with ``conf.set_temp`` around each partition on
    the workers. ``conf.max_workers`` is the number of concurrent downloads
    per worker process (split between the threads of a worker, at least one
    each: use one thread per worker process), so a cluster of N
    workers sends up to N times that many requests to SDSS: size the cluster
    accordingly. ``cache_dir`` should be a directory every worker can write
    (a shared one lets workers reuse each other's frames).
    """
    dd = _require_dask()
    from .predict import _check_source, _get_model, _resolve_source
    from .table import _RESULT_COLUMNS

    is_lsdb = _is_lsdb_catalog(catalog)
    if not is_lsdb and not isinstance(catalog, dd.DataFrame):
        msg = (f"catalog must be an lsdb.Catalog or a dask.dataframe.DataFrame, got "
               f"{type(catalog).__name__}; for an astropy Table use predict_metallicity")
        raise TypeError(msg)
    if source is not None:
        _check_source(source)
    if scale is not None and not isinstance(scale, str) and np.ndim(u.Quantity(scale)) > 0:
        msg = ("scale must be one value for the whole catalogue ('adaptive' or a Quantity in "
               "arcsec/pix)")
        raise ValueError(msg)
    if scale_column is not None and scale is not None:
        msg = "give scale (one for all targets) or scale_column (one per target), not both"
        raise ValueError(msg)

    if is_lsdb:
        meta = catalog.meta if hasattr(catalog, "meta") else catalog._ddf._meta
        info = catalog.hc_structure.catalog_info
        if ra_column is None and dec_column is None:
            ra_column, dec_column = info.ra_column, info.dec_column
    else:
        meta = catalog._meta
    ra_column, dec_column = _find_columns(list(meta.columns), ra_column, dec_column)
    if scale_column is not None and scale_column not in meta.columns:
        msg = (f"scale_column {scale_column!r} is not in the catalogue (columns: "
               f"{list(meta.columns)})")
        raise ValueError(msg)

    # The model: loaded here once, for its outputs and to fail early; the workers load it
    # again from its path (once per process).
    loaded = _get_model(model, device)
    outputs = list(loaded.outputs)
    source = _resolve_source(source, loaded)  # fixed here, the same on every worker
    clash = [name for name in _RESULT_COLUMNS if name in meta.columns and
             (name in ("flag", "ood_score") or name.removesuffix("_err") in outputs)]
    if clash:
        msg = (f"the catalogue already has column(s) {clash}; rename or drop them before "
               "predicting (the result adds these columns)")
        raise ValueError(msg)
    model_arg = str(Path(loaded.path).resolve()) if loaded.path is not None else loaded

    from .table import _result_meta

    attrs = {
        "units": {name: PREDICTION_UNITS[name] for name in PREDICTION_UNITS
                  if name.removesuffix("_err") in outputs},
        **_result_meta(model=loaded, source=source, data_release=conf.data_release,
                       scale=scale if scale_column is None else "per target")[_ATTRS_KEY],
    }
    kwargs = {"ra_column": ra_column, "dec_column": dec_column, "source": source,
              "scale": scale, "scale_column": scale_column, "model": model_arg, "device": device,
              "outputs": outputs, "snapshot": conf_snapshot(), "attrs": attrs}
    out_meta = _predict_partition(meta.iloc[:0], **kwargs)
    return catalog.map_partitions(_predict_partition, meta=out_meta, **kwargs)


# --- a resumable job: one Parquet file per partition (the command line's distributed path) -----

#: File in a job's output directory recording its inputs, settings and partitions.
MANIFEST_NAME = "astro_metallicity_manifest.json"
_MANIFEST_FORMAT = "astro-metallicity partitioned predictions, version 1"
_UNPOSITIONED_FILE = "unpositioned.parquet"
_HIGHEST_ORDER = 12
# what _write_hats_metadata adds to a finished job's directory
_HATS_FILES = ("properties", "hats.properties", "partition_info.csv", "dataset/_metadata",
               "dataset/_common_metadata")


def _input_fingerprint(path):
    """What identifies an input on disk: its path and each file's size and modification time.

    Parameters
    ----------
    path : path-like
        A file or a directory (every file below it counts).

    Returns
    -------
    fingerprint : dict
        ``{'path': absolute path, 'files': {relative name: [bytes, mtime_ns]}}``.
    """
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return {"path": str(path),
            "files": {(f.name if f == path else f.relative_to(path).as_posix()):
                      [f.stat().st_size, f.stat().st_mtime_ns] for f in files}}


def _partition_file(pixel):
    if pixel is None:
        return _UNPOSITIONED_FILE
    from hats.io.paths import pixel_catalog_file

    # the HATS layout (dataset/Norder=k/Dir=d/Npix=p.parquet)
    base = Path("/base")
    return Path(str(pixel_catalog_file(base, pixel))).relative_to(base).as_posix()


def _write_json(path, data):
    import json

    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _write_partition(frame, path):
    """One result partition as Parquet, atomically: a reader or a resumed job sees the whole
    file or none. The units go into the fields' metadata (``unit``), the provenance into the
    pandas metadata (``attrs``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=True)
    units = frame.attrs.get(_ATTRS_KEY, {}).get("units", {})
    fields = [field.with_metadata({b"unit": units[field.name].encode()})
              if field.name in units else field for field in table.schema]
    table = pa.Table.from_arrays(table.columns, schema=pa.schema(fields, table.schema.metadata))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _job_settings(*, source, scale, scale_column, ra_column, dec_column, model, device,
                  partition_rows):
    """The settings a job's results depend on (JSON types), with the loaded model."""
    from .predict import _get_model, _resolve_source
    from .table import _file_sha256

    loaded = _get_model(model, device)
    if scale is not None and not isinstance(scale, str):
        scale = f"{u.Quantity(scale).to_value(u.arcsec / u.pix):.6g} arcsec / pix"
    settings = {
        "source": _resolve_source(source, loaded),
        "scale": scale,
        "scale_column": scale_column,
        "ra_column": ra_column,
        "dec_column": dec_column,
        "model_sha256": (_file_sha256(loaded.path) if loaded.path is not None else
                         f"in-memory model {id(loaded)}"),
        "data_release": int(conf.data_release),
        "partition_rows": "auto" if partition_rows is None else int(partition_rows),
        "highest_order": _HIGHEST_ORDER,
    }
    return settings, loaded


def _differences(old, inputs, settings):
    """What differs between a job recorded in a manifest and this one (texts)."""
    diffs = []
    if old.get("format") != _MANIFEST_FORMAT:
        diffs.append(f"manifest format {old.get('format')!r}")
    old_inputs = old.get("inputs", {})
    if old_inputs.get("path") != inputs["path"]:
        diffs.append(f"input {old_inputs.get('path')} -> {inputs['path']}")
    elif old_inputs.get("files") != inputs["files"]:
        diffs.append(f"the files of input {inputs['path']} changed")
    for key, value in settings.items():
        if old.get("settings", {}).get(key) != value:
            diffs.append(f"{key} {old.get('settings', {}).get(key)!r} -> {value!r}")
    return diffs


def _prepare_job(output, *, inputs, settings, overwrite):
    """Check an output directory before a cluster starts; the manifest of a job to resume, or
    None for a new one. Raises ValueError for a directory that holds something else."""
    import json

    output = Path(output)
    manifest = output / MANIFEST_NAME
    if output.exists() and not output.is_dir():
        msg = f"{output} exists and is not a directory"
        raise ValueError(msg)
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except ValueError as exc:
            msg = f"cannot read {manifest} ({exc}); remove {output} to start again"
            raise ValueError(msg) from None
        diffs = _differences(old, inputs, settings)
        if not diffs:
            return old
        if not overwrite:
            msg = (f"{output} holds a job with other inputs or settings ({'; '.join(diffs)}); "
                   "rerun with the same ones to resume it, or use --overwrite to start again")
            raise ValueError(msg)
        for name in [*(part["file"] for part in old.get("partitions", [])), *_HATS_FILES]:
            (output / name).unlink(missing_ok=True)
        manifest.unlink()
        return None
    if output.is_dir() and any(output.iterdir()):
        msg = (f"{output} is not empty and has no {MANIFEST_NAME}; give a new or empty "
               "directory")
        raise ValueError(msg)
    return None


def _run_job(catalog, output, *, client, inputs, settings, resume, model, device,
             progress=True, echo=print):
    """Predict ``catalog`` partition by partition on ``client``'s cluster, writing each
    finished partition to ``output`` at once and skipping those already written.

    Returns (partitions predicted now, partitions skipped, rows written now, rows predicted).
    """
    from astropy.utils.console import ProgressBar
    from distributed import as_completed

    from .table import FLAG_OK

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.rglob("*.tmp-*"):  # left by a killed job
        stale.unlink()
    is_lsdb = _is_lsdb_catalog(catalog)
    ra_column, dec_column = settings["ra_column"], settings["dec_column"]
    if is_lsdb:
        pixels = list(catalog.get_healpix_pixels())
        rows = [None] * len(pixels)
        divisions = None
        frame = catalog
    elif resume is not None:
        # the plan of the first run: same inputs, so the same partitions
        columns = _find_columns(list(catalog.columns), ra_column, dec_column)
        divisions = resume["divisions"]
        frame = _with_spatial_index(catalog, *columns, "input_row").set_index(
            SPATIAL_INDEX, divisions=divisions)
    else:
        rows_setting = settings["partition_rows"]
        frame, pixels, rows, divisions = _plan_healpix(
            catalog, ra_column=ra_column, dec_column=dec_column,
            partition_rows=None if rows_setting == "auto" else rows_setting,
            highest_order=settings["highest_order"], row_column="input_row")
    if resume is not None:
        parts = resume["partitions"]
    else:
        parts = [{"file": _partition_file(pixel), "rows": n,
                  "order": None if pixel is None else int(pixel.order),
                  "pixel": None if pixel is None else int(pixel.pixel)}
                 for pixel, n in zip(pixels, rows, strict=True)]
        _write_json(output / MANIFEST_NAME, {
            "format": _MANIFEST_FORMAT, "inputs": inputs, "settings": settings,
            "divisions": divisions, "partitions": parts,
            "units": dict(PREDICTION_UNITS),
        })
    if len(parts) != frame.npartitions:
        msg = (f"the input has {frame.npartitions} partitions, the manifest of {output} "
               f"{len(parts)}; use --overwrite to start again")
        raise ValueError(msg)

    result = predict_metallicity_catalog(
        frame, ra_column=ra_column, dec_column=dec_column, source=settings["source"],
        scale=_scale_setting(settings["scale"]), scale_column=settings["scale_column"],
        model=model, device=device)
    delayed = result.to_delayed()
    todo = [k for k, part in enumerate(parts)
            if part["rows"] != 0 and not (output / part["file"]).is_file()]
    skipped = sum(part["rows"] != 0 for part in parts) - len(todo)
    echo(f"{len(todo)} partitions to predict, {skipped} already written to {output}")
    pending = dict(zip(client.compute([delayed[k] for k in todo]), todo, strict=True))
    n_rows = n_ok = 0
    bar = ProgressBar(len(todo), ipython_widget=False, file=sys.stderr) \
        if progress and len(todo) > 1 else None
    try:
        for done, future in enumerate(as_completed(list(pending)), start=1):
            k = pending.pop(future)
            part = future.result()
            future.release()  # the worker frees the partition now, not at the end
            _write_partition(part, output / parts[k]["file"])
            n_rows += len(part)
            n_ok += int((part["flag"] == FLAG_OK).sum())
            del part
            if bar is not None:
                bar.update(done)
            log.debug(f"wrote partition {parts[k]['file']}")
    finally:
        for future in pending:  # stopped early (an error, Ctrl-C): cancel the rest
            future.cancel()
        if bar is not None:
            bar.__exit__(None, None, None)
    if is_lsdb:
        info = catalog.hc_structure.catalog_info
        ra_column, dec_column = ra_column or info.ra_column, dec_column or info.dec_column
    else:
        ra_column, dec_column = _find_columns(list(catalog.columns), ra_column, dec_column)
    _write_hats_metadata(output, parts, ra_column, dec_column)
    return len(todo), skipped, n_rows, n_ok


def _write_hats_metadata(output, parts, ra_column, dec_column):
    """Once every tile is written, make the directory a HATS catalogue (``lsdb.open_catalog``
    reads it): partition list, properties and Parquet ``_metadata``, written by ``hats``. The
    rows without a position are outside it, in ``unpositioned.parquet``."""
    from hats.catalog import PartitionInfo, TableProperties
    from hats.io.parquet_metadata import write_parquet_metadata
    from hats.pixel_math import HealpixPixel

    tiles = [part for part in parts if part["order"] is not None and part["rows"] != 0]
    if not tiles or not all((output / part["file"]).is_file() for part in tiles):
        return
    total = write_parquet_metadata(output)
    PartitionInfo.from_healpix([HealpixPixel(part["order"], part["pixel"]) for part in tiles]
                               ).write_to_file(catalog_path=output)
    TableProperties(catalog_name=output.name or "metallicity", catalog_type="object",
                    total_rows=int(total), ra_column=ra_column,
                    dec_column=dec_column).to_properties_file(output)


def _scale_setting(text):
    if text is None or text == "adaptive":
        return text
    return float(text.split()[0]) * u.arcsec / u.pix
