"""Predict metallicity for large catalogues, partition by partition, on Dask workers.

`predict_metallicity_catalog` takes an LSDB ``lsdb.Catalog`` (HATS: partitions
are HEALPix tiles, so neighbours on the sky, which share SDSS fields, are
fetched together) or a ``dask.dataframe.DataFrame`` with coordinate columns, and
returns the same kind of lazy object with the prediction columns added. Each
partition runs the ordinary `~astro_metallicity.predict_metallicity` on the
workers, so the values are those of the single-process path.

Needs the optional extra: ``pip install "astro-metallicity[distributed]"``
(``dask[distributed]`` and ``lsdb``). Dask and LSDB are imported only when a
function of this module runs; ``import astro_metallicity`` never needs them.
"""

import functools
import os
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from astropy import config as _astropy_config
from astropy import units as u
from astropy.table import Table

from ._config import Conf, conf
from .table import _OUTPUT_UNITS

__all__ = ["PREDICTION_UNITS", "predict_metallicity_catalog"]

_INSTALL_HINT = 'pip install "astro-metallicity[distributed]"'

#: Units of the prediction columns (strings, as recorded in ``attrs``).
PREDICTION_UNITS = {name: unit.to_string() for name, unit in _OUTPUT_UNITS.items()}

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


def _predict_partition(frame, *, ra_column, dec_column, source, scale, model, device, outputs,
                       snapshot, attrs):
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
            result = predict_metallicity(targets, source=source, scale=scale, model=loaded,
                                         progress=False)
        cols = {}
        for name in outputs:
            for key in (name, f"{name}_err"):
                column = result[key]
                values = np.asarray(getattr(column, "unmasked", column).value, dtype=np.float64)
                values = np.where(np.asarray(getattr(column, "mask", False)), np.nan, values)
                cols[key] = pd.Series(values, index=frame.index)
        cols["flag"] = pd.Series(np.asarray(result["flag"].filled(""), dtype=str),
                                 index=frame.index, dtype=_flag_dtype())
    out = frame.assign(**cols)
    out.attrs = dict(frame.attrs)
    out.attrs[_ATTRS_KEY] = attrs
    return out


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
                                scale=None, model=None, device=None):
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
        Dask DataFrame is used as it is partitioned (sort it by position,
        e.g. by a HEALPix index, for the same benefit).
    ra_column, dec_column : str, optional
        Coordinate columns. Default: the catalogue's own (LSDB), else the
        names `~astro_metallicity.resolve_targets` recognises (``ra``/``dec``,
        ``RA``/``DEC``, ...).
    source : {'frames', 'jpeg'}, optional
        Cutout source; default as in `~astro_metallicity.predict_metallicity`.
    scale : 'adaptive' or `~astropy.units.Quantity`, optional
        One pixel scale for all targets; default the model's convention.
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
        with NaN where there is no prediction, and ``flag`` (string; ``''``
        when predicted, else why not, as in
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
        If the coordinate columns cannot be found, ``source`` is unknown,
        ``scale`` is not a single value, or the input has a prediction column.

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

    if is_lsdb:
        meta = catalog.meta if hasattr(catalog, "meta") else catalog._ddf._meta
        info = catalog.hc_structure.catalog_info
        if ra_column is None and dec_column is None:
            ra_column, dec_column = info.ra_column, info.dec_column
    else:
        meta = catalog._meta
    ra_column, dec_column = _find_columns(list(meta.columns), ra_column, dec_column)

    # The model: loaded here once, for its outputs and to fail early; the workers load it
    # again from its path (once per process).
    loaded = _get_model(model, device)
    outputs = list(loaded.outputs)
    source = _resolve_source(source, loaded)  # fixed here, the same on every worker
    clash = [name for name in _RESULT_COLUMNS if name in meta.columns and
             (name == "flag" or name.removesuffix("_err") in outputs)]
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
                       scale=scale)[_ATTRS_KEY],
    }
    kwargs = {"ra_column": ra_column, "dec_column": dec_column, "source": source,
              "scale": scale, "model": model_arg, "device": device, "outputs": outputs,
              "snapshot": conf_snapshot(), "attrs": attrs}
    out_meta = _predict_partition(meta.iloc[:0], **kwargs)
    return catalog.map_partitions(_predict_partition, meta=out_meta, **kwargs)
