"""Acquire *gri* data from SDSS: the only module of the package that uses the network.

Two routes, both with a validating disk cache, bounded concurrency and
retries with exponential backoff:

``frames``
    Locate the fields around each target with the SkyServer SQL search
    (`astroquery.sdss.SDSS.query_sql`, one query per group of nearby
    targets, on the ``Field`` table; or the same query as ADQL through a
    `pyvo` TAP service when ``conf.tap_url`` is set, see `tap_url`), download the g, r, i corrected frames
    from the SAS (URLs from astroquery's ``SDSS.IMAGING_URL_SUFFIX``) into the
    cache (each frame once, shared by all targets), and hand them to
    `astro_metallicity.preprocess.make_cutout`.
``jpeg``
    SkyServer's ImgCutout ``getjpeg`` service, the source Wu & Boada (2018)
    used, with the paper's galaxy-adapted pixel scale (petroR90_r looked up
    with `astroquery.sdss.SDSS.query_crossid`) or a fixed one.

Every URL comes from ``astro_metallicity.conf`` (``skyserver_baseurl``,
``sas_baseurl``, ``data_release``), read at call time; the mock SDSS server
(`astro_metallicity.mock.MockSDSS`) points them at 127.0.0.1. Failures of
single targets become flags (``'outside_footprint'``,
``'no_petrosian_radius'``, ``'fetch_failed: <reason>'``), never exceptions in
the middle of a table.

Cache layout (under ``conf.cache_dir``, default
``<astropy cache dir>/astro_metallicity``), one folder per server so a mock
sky never mixes with real SDSS::

    <host_port>/dr17/frames/301/<run>/<camcol>/frame-<band>-<run>-<camcol>-<field>.fits.bz2
    <host_port>/dr17/jpeg/<ra>_<dec>_<scale>_<w>x<h>.jpg

Files are written to a temporary name and renamed when complete and valid,
so an interrupted run never leaves a partial file; a cached file that does
not validate (truncated, corrupted) is deleted and fetched again.
"""

import bz2
import io
import os
import random
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from astropy import units as u

from ._config import conf
from .logger import log

__all__ = [
    "FIELD_SQL",
    "FetchError",
    "cache_dir",
    "clear_memory_cache",
    "fetch_frame",
    "fetch_frame_cutouts",
    "fetch_jpeg",
    "fetch_jpeg_cutouts",
    "frame_url",
    "frames_for_target",
    "in_footprint",
    "jpeg_url",
    "load_frame",
    "lookup_petro_r90",
    "query_fields",
    "tap_url",
]

#: SQL used to find the fields around a position (SkyServer ``Field`` table).
FIELD_SQL = ("SELECT run, rerun, camcol, field, raMin, raMax, decMin, decMax FROM Field "
             "WHERE raMax > {ra1} AND raMin < {ra2} AND decMax > {dec1} AND decMin < {dec2}")

_FRAME_SHAPE = (1489, 2048)
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_GROUP_CELL_DEG = 0.5  # targets in one cell share one Field query
_CROSSID_BATCH = 500
_CROSSID_RADIUS = 5.0 * u.arcsec


class FetchError(Exception):
    """A download failed for good (after retries, or with a non-retryable error).

    ``reason`` is a short text used in the ``fetch_failed: <reason>`` flag.
    """

    def __init__(self, reason, *, retryable=False):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class _Retryable(Exception):
    """Internal: a transient failure that is worth retrying."""


# --------------------------------------------------------------------------- cache and HTTP

def cache_dir():
    """Root of the download cache.

    Returns
    -------
    path : `~pathlib.Path`
        ``conf.cache_dir`` when set, else ``<astropy cache dir>/astro_metallicity``.
    """
    if conf.cache_dir:
        return Path(conf.cache_dir).expanduser()
    from astropy.config import get_cache_dir

    return Path(get_cache_dir()) / "astro_metallicity"


def _server_key(url):
    """Cache folder name of a server: host, port and path prefix (e.g. a mock sky's token)."""
    parts = urlsplit(url)
    key = (parts.hostname or "local").replace(":", "_")
    if parts.port:
        key += f"_{parts.port}"
    path = parts.path.strip("/")
    if path:
        key += "_" + "".join(c if c.isalnum() or c in "-." else "_" for c in path)
    return key


_thread_local = threading.local()


def _session():
    import requests

    session = getattr(_thread_local, "session", None)
    if session is None:
        from . import __version__

        session = requests.Session()
        session.headers["User-Agent"] = f"astro-metallicity/{__version__}"
        _thread_local.session = session
    return session


def _with_retries(func, what):
    """Call ``func()``; retry `_Retryable` and transient network errors with backoff."""
    import requests

    retries = max(0, int(conf.max_retries))
    backoff = float(conf.retry_backoff)
    last = "unknown error"
    for attempt in range(retries + 1):
        try:
            return func()
        except _Retryable as exc:
            last = str(exc)
        except requests.Timeout:
            last = "timeout"
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                ConnectionError) as exc:
            last = f"connection error ({type(exc).__name__})"
        if attempt < retries:
            wait = backoff * 2 ** attempt * (1.0 + 0.25 * random.random())
            log.debug(f"{what}: {last}; retry {attempt + 1}/{retries} in {wait:.2f} s")
            time.sleep(wait)
    raise FetchError(f"{last} after {retries + 1} attempts")


def _get(url, params=None):
    """GET with status checks; returns the body (bytes). Raises `_Retryable` or `FetchError`."""
    response = _session().get(url, params=params, timeout=float(conf.timeout))
    try:
        status = response.status_code
        if status in _RETRY_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status}")
        if status >= 400:
            raise FetchError(f"HTTP {status}")
        content = response.content
        expected = response.headers.get("Content-Length")
        encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
        if (not encoded and expected is not None and expected.isdigit()
                and int(expected) != len(content)):
            raise _Retryable(f"truncated ({len(content)} of {expected} bytes)")
        return content
    finally:
        response.close()


_locks_guard = threading.Lock()
_path_locks = {}


def _lock_for(key):
    with _locks_guard:
        lock = _path_locks.get(key)
        if lock is None:
            lock = _path_locks[key] = threading.Lock()
        return lock


def _atomic_write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    # temporary files left by killed runs (older than an hour) go
    for stale in path.parent.glob(path.name + ".*.part"):
        try:
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
        except OSError:
            pass
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _cached_download(path, url, params, parse, what):
    """Return ``parse(bytes)`` for a cached or freshly downloaded file.

    A cached file that fails ``parse`` is deleted and fetched again. A
    download that fails ``parse`` (truncated, corrupted) is retried.
    """
    with _lock_for(str(path)):
        if path.is_file():
            try:
                return parse(path.read_bytes())
            except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
                log.warning(f"cached {path.name} is invalid ({exc}); fetching it again")
                path.unlink(missing_ok=True)

        def attempt():
            content = _get(url, params)
            try:
                value = parse(content)
            except FetchError:
                raise
            except Exception as exc:
                raise _Retryable(f"invalid file ({type(exc).__name__}: {exc})") from exc
            _atomic_write(path, content)
            return value

        return _with_retries(attempt, what)


# --------------------------------------------------------------------------- frames

def _instrument(data_release):
    if data_release > 17:
        return "prior-surveys/sdss4-dr17-eboss"
    return "eboss" if data_release > 12 else "boss"


def frame_url(run, camcol, field, band, *, rerun=301, data_release=None):
    """URL of an SDSS corrected frame on the SAS.

    Built with astroquery's ``SDSS.IMAGING_URL_SUFFIX`` and
    ``conf.sas_baseurl``.

    Parameters
    ----------
    run, camcol, field : int
        Field identifiers.
    band : str
        One of ``'ugriz'``.
    rerun : int
        Photometric rerun (301 for DR8 and later).
    data_release : int, optional
        Default ``conf.data_release``.

    Returns
    -------
    url : str
    """
    from astroquery.sdss import SDSS

    dr = int(conf.data_release if data_release is None else data_release)
    return SDSS.IMAGING_URL_SUFFIX.format(
        base=conf.sas_baseurl.rstrip("/"), dr=dr, instrument=_instrument(dr), rerun=int(rerun),
        run=int(run), camcol=int(camcol), field=int(field), band=band)


def _frame_path(run, camcol, field, band, rerun, dr):
    name = f"frame-{band}-{int(run):06d}-{int(camcol)}-{int(field):04d}.fits.bz2"
    return (cache_dir() / _server_key(conf.sas_baseurl) / f"dr{dr}" / "frames" / str(rerun)
            / str(int(run)) / str(int(camcol)) / name)


def _parse_frame(content, band=None):
    """Decompress and check a frame file; return (data float32, header)."""
    from astropy.io import fits

    raw = bz2.decompress(content) if content[:3] == b"BZh" else content
    with fits.open(io.BytesIO(raw), memmap=False) as hdul:
        hdu = hdul[0]
        data = hdu.data
        header = hdu.header.copy()
        if data is None or data.ndim != 2 or data.shape != _FRAME_SHAPE:
            shape = None if data is None else data.shape
            msg = f"HDU0 has shape {shape}, expected {_FRAME_SHAPE}"
            raise ValueError(msg)
        for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "NMGY"):
            if key not in header:
                msg = f"HDU0 header lacks {key}"
                raise ValueError(msg)
        if band is not None and "FILTER" in header and header["FILTER"].strip() != band:
            msg = f"FILTER is {header['FILTER']!r}, expected {band!r}"
            raise ValueError(msg)
        data = np.array(data, dtype=np.float32)
    return data, header


def fetch_frame(run, camcol, field, band, *, rerun=301, data_release=None):
    """Download one corrected frame into the cache (if not there) and return its path.

    Parameters
    ----------
    run, camcol, field : int
        Field identifiers.
    band : str
        Filter.
    rerun : int
        Photometric rerun.
    data_release : int, optional
        Default ``conf.data_release``.

    Returns
    -------
    path : `~pathlib.Path`
        The validated ``.fits.bz2`` in the cache.

    Raises
    ------
    FetchError
        If the frame cannot be downloaded or never validates.
    """
    load_frame(run, camcol, field, band, rerun=rerun, data_release=data_release)
    dr = int(conf.data_release if data_release is None else data_release)
    return _frame_path(run, camcol, field, band, rerun, dr)


class _FrameMemo:
    """Small thread-safe LRU of decompressed frames (each ~12 MB)."""

    def __init__(self, maxsize=12):
        self.maxsize = maxsize
        self._data = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key, value):
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self):
        with self._lock:
            self._data.clear()


_memo = _FrameMemo()


def clear_memory_cache():
    """Forget the decompressed frames kept in memory (the disk cache stays)."""
    _memo.clear()


def load_frame(run, camcol, field, band, *, rerun=301, data_release=None):
    """Data and header of a corrected frame, from memory, the disk cache or the SAS.

    Parameters
    ----------
    run, camcol, field : int
        Field identifiers.
    band : str
        Filter.
    rerun : int
        Photometric rerun.
    data_release : int, optional
        Default ``conf.data_release``.

    Returns
    -------
    data : `~numpy.ndarray`
        float32 image in nanomaggies per pixel.
    header : `~astropy.io.fits.Header`
        HDU0 header (WCS, NMGY, ...).

    Raises
    ------
    FetchError
        If the frame cannot be downloaded or never validates.
    """
    dr = int(conf.data_release if data_release is None else data_release)
    path = _frame_path(run, camcol, field, band, rerun, dr)
    key = str(path)
    value = _memo.get(key)
    if value is not None and path.is_file():
        return value
    url = frame_url(run, camcol, field, band, rerun=rerun, data_release=dr)
    value = _cached_download(path, url, None, lambda content: _parse_frame(content, band),
                             f"frame {path.name}")
    _memo.put(key, value)
    return value


def _query_sql(sql):
    """Run SQL on SkyServer through astroquery, with retries; returns a Table or None."""
    from astroquery.sdss import SDSS

    def attempt():
        response = SDSS.query_sql_async(sql, timeout=float(conf.timeout),
                                        data_release=int(conf.data_release), cache=False)
        status = response.status_code
        if status in _RETRY_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status}")
        if status >= 400:
            raise FetchError(f"HTTP {status}")
        try:
            return SDSS._parse_result(response)
        except Exception as exc:
            text = response.text.strip().splitlines()
            first = text[0][:200] if text else ""
            raise FetchError(f"SQL failed: {type(exc).__name__}: {first}") from exc

    return _with_retries(attempt, "SQL query")


def query_fields(ra_min, ra_max, dec_min, dec_max):
    """Fields whose bounding box overlaps a box on the sky (``Field`` table).

    Parameters
    ----------
    ra_min, ra_max, dec_min, dec_max : float
        The box in degrees.

    Returns
    -------
    fields : `~astropy.table.Table`
        Columns run, rerun, camcol, field, raMin, raMax, decMin, decMax (may be empty).

    Raises
    ------
    FetchError
        If the query fails after retries.
    """
    from astropy.table import Table, unique, vstack

    names = ["run", "rerun", "camcol", "field", "raMin", "raMax", "decMin", "decMax"]
    empty = Table(names=names, dtype=[int] * 4 + [float] * 4)
    if ra_max - ra_min >= 360.0:
        ra_min, ra_max = 0.0, 360.0
    # Near RA = 0/360 a field may be stored with limits on either side (raMin
    # slightly negative, or above 360 - epsilon): ask for the box in both
    # conventions and merge.
    boxes = [(ra_min, ra_max)]
    if ra_min < 1.0:
        boxes.append((ra_min + 360.0, ra_max + 360.0))
    if ra_max > 359.0:
        boxes.append((ra_min - 360.0, ra_max - 360.0))
    if len(boxes) > 1:
        parts = [_query_fields_box(lo, hi, dec_min, dec_max, names, empty) for lo, hi in boxes]
        parts = [t for t in parts if len(t)]
        if not parts:
            return empty
        return unique(vstack(parts), keys=["run", "rerun", "camcol", "field"])
    return _query_fields_box(ra_min, ra_max, dec_min, dec_max, names, empty)


def tap_url():
    """TAP service used to locate fields, or ``''`` for the SkyServer SQL search.

    Read from ``conf.tap_url`` when the configuration has that item (empty by
    default). With a TAP URL the ``Field`` look-up runs as ADQL through
    `pyvo.dal.TAPService` (synchronous queries), which suits services that
    offer TAP rather than SkyServer's SQL search (e.g. mirrors, a CasJobs TAP
    front end); everything else is unchanged.

    Returns
    -------
    url : str
    """
    return str(conf.tap_url or "")


def _query_tap(url, adql):
    """Run ADQL on a TAP service with pyvo, with retries; returns a Table."""
    import pyvo

    def attempt():
        service = pyvo.dal.TAPService(url, session=_session())
        try:
            return service.run_sync(adql).to_table()
        except pyvo.dal.DALQueryError as exc:
            raise FetchError(f"TAP query failed: {exc}") from exc
        except pyvo.dal.DALServiceError as exc:
            status = exc.code
            if status is not None and 400 <= status < 500 and status not in _RETRY_STATUS:
                raise FetchError(f"TAP HTTP {status}") from exc
            raise _Retryable(f"TAP service error ({exc})") from exc

    return _with_retries(attempt, "TAP query")


def _query_fields_box(ra_min, ra_max, dec_min, dec_max, names, empty):
    from astropy.table import Table

    sql = FIELD_SQL.format(ra1=f"{ra_min:.6f}", ra2=f"{ra_max:.6f}",
                           dec1=f"{dec_min:.6f}", dec2=f"{dec_max:.6f}")
    url = tap_url()
    result = _query_tap(url, sql) if url else _query_sql(sql)  # the SQL is valid ADQL
    if result is None or len(result) == 0:
        return empty
    lower = {n.lower(): n for n in result.colnames}
    missing = [n for n in names if n.lower() not in lower]
    if missing:
        msg = f"Field query answered without columns {missing}"
        raise FetchError(msg)
    return Table([np.asarray(result[lower[n.lower()]]) for n in names], names=names)


def _ra_interval(table, ref):
    """Field RA limits as offsets (deg) from ``ref``, continuous across RA = 0/360."""
    lo = (np.asarray(table["raMin"], float) - ref + 180.0) % 360.0 - 180.0
    hi = (np.asarray(table["raMax"], float) - ref + 180.0) % 360.0 - 180.0
    hi = np.where(hi < lo, hi + 360.0, hi)
    return lo, hi


def _half_width_deg(scale_arcsec, size):
    # half diagonal of the cutout, plus a few pixels for interpolation
    return (np.asarray(scale_arcsec) * (size / 2.0 + 2.0) * np.sqrt(2.0)) / 3600.0


def _sample_points(center, scale_arcsec, size, n=7):
    """A grid of sky positions spanning the cutout (corners and edges included)."""
    from .preprocess import cutout_wcs

    w = cutout_wcs(center, size, scale_arcsec * u.arcsec / u.pix)
    grid = np.linspace(-0.5, size - 0.5, n)
    x, y = np.meshgrid(grid, grid)
    sky = w.pixel_to_world(x.ravel(), y.ravel())
    return sky


def _frame_covers(header, points):
    from .preprocess import header_wcs

    w = header_wcs(header)
    x, y = w.world_to_pixel(points)
    ny, nx = int(header.get("NAXIS2", _FRAME_SHAPE[0])), int(header.get("NAXIS1", _FRAME_SHAPE[1]))
    return (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)


def _box_covers(row, points):
    ref = float(row["raMin"])
    lo, hi = _ra_interval({"raMin": [row["raMin"]], "raMax": [row["raMax"]]}, ref)
    dra = (points.ra.deg - ref + 180.0) % 360.0 - 180.0
    dec = points.dec.deg
    return ((dra >= lo[0]) & (dra <= hi[0])
            & (dec >= row["decMin"]) & (dec <= row["decMax"]))


def frames_for_target(center, scale, size, candidates):
    """Choose and download the fields that together cover a cutout.

    Candidates (rows of `query_fields`) are ranked by how many sample points
    of the cutout their bounding box holds; the best is downloaded and its
    real WCS checked; more fields are added while parts of the cutout are
    uncovered (a galaxy near a frame edge gets a mosaic).

    Parameters
    ----------
    center : `~astropy.coordinates.SkyCoord`
        Scalar target position.
    scale : float
        Pixel scale in arcsec/pix.
    size : int
        Cutout side in pixels.
    candidates : `~astropy.table.Table`
        Field rows around the target.

    Returns
    -------
    frames : dict
        ``{'g': [(data, header), ...], 'r': [...], 'i': [...]}`` (empty lists
        when no field holds the target).
    complete : bool
        Whether the chosen fields cover the whole cutout.
    """
    points = _sample_points(center, scale, size)
    uncovered = np.ones(len(points), dtype=bool)
    center_index = len(points) // 2
    chosen = []
    tried = set()
    while uncovered.any():
        best, best_count = None, 0
        for k, row in enumerate(candidates):
            if k in tried:
                continue
            count = int(np.sum(_box_covers(row, points) & uncovered))
            if count > best_count:
                best, best_count = k, count
        if best is None:
            break
        tried.add(best)
        row = candidates[best]
        ident = (int(row["run"]), int(row["camcol"]), int(row["field"]), int(row["rerun"]))
        try:
            _, header = load_frame(ident[0], ident[1], ident[2], "r", rerun=ident[3])
        except FetchError as exc:
            if exc.reason.startswith("HTTP 404"):  # listed but not on the SAS: try the others
                log.debug(f"frame {ident} not found on the SAS; skipping it")
                continue
            raise
        covers = _frame_covers(header, points)
        if np.any(covers & uncovered):
            chosen.append(ident)
            uncovered &= ~covers
    frames = {"g": [], "r": [], "i": []}
    if not chosen or uncovered[center_index]:
        return frames, False
    for run, camcol, field, rerun in chosen:
        for band in "gri":
            frames[band].append(load_frame(run, camcol, field, band, rerun=rerun))
    return frames, not uncovered.any()


def _group_targets(coords, half_deg):
    """Group target indices into sky cells; each group shares one Field query."""
    ra = coords.ra.deg
    dec = coords.dec.deg
    keys = np.floor(dec / _GROUP_CELL_DEG).astype(int) * 100000 + np.floor(
        ra / _GROUP_CELL_DEG).astype(int)
    groups = {}
    for i, key in enumerate(keys):
        groups.setdefault(int(key), []).append(i)
    boxes = {}
    for key, idx in groups.items():
        idx = np.asarray(idx)
        cosd = np.maximum(np.cos(np.deg2rad(np.abs(dec[idx]) + half_deg[idx])), 1e-3)
        dra = half_deg[idx] / cosd
        boxes[key] = (float(np.min(ra[idx] - dra)), float(np.max(ra[idx] + dra)),
                      float(np.min(dec[idx] - half_deg[idx])), float(np.max(dec[idx] + half_deg[idx])))
    return groups, boxes


def in_footprint(coords):
    """Whether each position lies in an imaged SDSS field (``Field`` bounding boxes).

    Parameters
    ----------
    coords : `~astropy.coordinates.SkyCoord`
        1-D array of positions.

    Returns
    -------
    inside : `~numpy.ndarray` of bool
        True where some field's bounding box holds the position.

    Raises
    ------
    FetchError
        If a Field query fails after retries.
    """
    n = len(coords)
    inside = np.zeros(n, dtype=bool)
    if n == 0:
        return inside
    half = np.full(n, 1.0 / 3600.0)
    groups, boxes = _group_targets(coords, half)
    for key, idx in groups.items():
        table = query_fields(*boxes[key])
        for i in idx:
            ra, dec = coords[i].ra.deg, coords[i].dec.deg
            lo, hi = _ra_interval(table, ra)
            inside[i] = bool(np.any((lo <= 0) & (hi >= 0)
                                    & (table["decMin"] <= dec) & (table["decMax"] >= dec)))
    return inside


def _progress_bar(total, progress):
    if not progress or total == 0:
        return None
    from astropy.utils.console import ProgressBar

    return ProgressBar(total, ipython_widget=False)


def _flag_from_error(exc):
    if isinstance(exc, FetchError):
        return f"fetch_failed: {exc.reason}"
    return f"fetch_failed: {type(exc).__name__}: {exc}"


def fetch_frame_cutouts(coords, scales, size, *, stretch=None, progress=False):
    """Cutouts from SDSS corrected frames (the ``frames`` route of `~astro_metallicity.preprocess.make_cutouts`).

    Parameters
    ----------
    coords : `~astropy.coordinates.SkyCoord`
        1-D array of valid target positions.
    scales : array of float
        Pixel scale of each cutout (arcsec/pix).
    size : int
        Cutout side in pixels.
    stretch : dict, optional
        Colour stretch for `~astro_metallicity.preprocess.gri_composite`.
    progress : bool
        Show a progress bar.

    Returns
    -------
    images : `~numpy.ndarray`
        uint8 ``(N, size, size, 3)``; zeros where a target failed.
    flags : `~numpy.ndarray` of object
        ``''`` or the reason of failure per target.
    """
    from .preprocess import make_cutout

    n = len(coords)
    scales = np.asarray(scales, dtype=float)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    flags = np.full(n, "", dtype=object)
    if n == 0:
        return images, flags
    half = _half_width_deg(scales, size)
    groups, boxes = _group_targets(coords, half)
    workers = max(1, int(conf.max_workers))
    # 1. Field look-ups, one per sky cell
    candidates = {}
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(query_fields, *boxes[key]): key for key in groups}
        for future in as_completed(futures):
            key = futures[future]
            try:
                candidates[key] = future.result()
            except Exception as exc:  # noqa: BLE001 - becomes a flag
                for i in groups[key]:
                    flags[i] = _flag_from_error(exc)
    # 2. Per-target: choose and download frames, build the cutout
    target_fields = {}
    for key, idx in groups.items():
        if key not in candidates:
            continue
        table = candidates[key]
        for i in idx:
            if len(table) == 0:
                target_fields[i] = table
                continue
            ra, dec, h = coords[i].ra.deg, coords[i].dec.deg, half[i]
            cosd = max(np.cos(np.deg2rad(abs(dec) + h)), 1e-3)
            lo, hi = _ra_interval(table, ra)
            sel = ((hi > -h / cosd) & (lo < h / cosd)
                   & (table["decMax"] > dec - h) & (table["decMin"] < dec + h))
            target_fields[i] = table[sel]

    def work(i):
        table = target_fields[i]
        if len(table) == 0:
            return i, None, "outside_footprint"
        frames, complete = frames_for_target(coords[i], scales[i], size, table)
        if not frames["r"]:
            return i, None, "outside_footprint"
        rgb, _, coverage = make_cutout(frames, coords[i], size=size,
                                       scale=scales[i] * u.arcsec / u.pix, stretch=stretch,
                                       return_bands=True)
        if not complete or np.mean(coverage < 0.5) > 0.001:
            return i, rgb, "partial_coverage"
        return i, rgb, ""

    bar = _progress_bar(len(target_fields), progress)
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(work, i): i for i in target_fields}
        for future in as_completed(futures):
            i = futures[future]
            try:
                _, rgb, flag = future.result()
            except Exception as exc:  # noqa: BLE001 - becomes a flag
                rgb, flag = None, _flag_from_error(exc)
                log.debug(f"target {i}: {flag}")
            flags[i] = flag
            if rgb is not None and flag == "":
                images[i] = rgb
            if bar is not None:
                bar.update()
    return images, flags


# --------------------------------------------------------------------------- jpeg route

def jpeg_url(data_release=None):
    """URL of the ImgCutout ``getjpeg`` service.

    Parameters
    ----------
    data_release : int, optional
        Default ``conf.data_release``.

    Returns
    -------
    url : str
        ``{conf.skyserver_baseurl}/dr{N}/SkyServerWS/ImgCutout/getjpeg``.
    """
    dr = int(conf.data_release if data_release is None else data_release)
    return f"{conf.skyserver_baseurl.rstrip('/')}/dr{dr}/SkyServerWS/ImgCutout/getjpeg"


def _parse_jpeg(content, width, height):
    from PIL import Image

    with Image.open(io.BytesIO(content)) as im:
        if im.format != "JPEG":
            msg = f"not a JPEG ({im.format})"
            raise ValueError(msg)
        if im.size != (width, height):
            msg = f"JPEG is {im.size[0]}x{im.size[1]}, expected {width}x{height}"
            raise ValueError(msg)
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def fetch_jpeg(ra, dec, scale, width, height=None, *, data_release=None):
    """One ImgCutout colour JPEG (cached), as a uint8 array.

    Parameters
    ----------
    ra, dec : float
        Centre in degrees.
    scale : float
        Pixel scale in arcsec/pix.
    width, height : int
        Image size in pixels (``height`` defaults to ``width``).
    data_release : int, optional
        Default ``conf.data_release``.

    Returns
    -------
    rgb : `~numpy.ndarray`
        uint8 ``(height, width, 3)``.

    Raises
    ------
    FetchError
        If the image cannot be downloaded or never decodes to the right size.
    """
    height = width if height is None else height
    dr = int(conf.data_release if data_release is None else data_release)
    params = {"ra": f"{ra:.7f}", "dec": f"{dec:.7f}", "scale": f"{scale:.6f}",
              "width": int(width), "height": int(height)}
    name = f"{params['ra']}_{params['dec']}_{params['scale']}_{width}x{height}.jpg"
    path = cache_dir() / _server_key(conf.skyserver_baseurl) / f"dr{dr}" / "jpeg" / name
    return _cached_download(path, jpeg_url(dr), params,
                            lambda content: _parse_jpeg(content, int(width), int(height)),
                            f"cutout {name}")


def fetch_jpeg_cutouts(coords, scales, size, *, progress=False):
    """Cutouts from the ImgCutout service (the ``jpeg`` route of `~astro_metallicity.preprocess.make_cutouts`).

    Parameters
    ----------
    coords : `~astropy.coordinates.SkyCoord`
        1-D array of valid target positions.
    scales : array of float
        Pixel scale of each cutout (arcsec/pix).
    size : int
        Cutout side in pixels.
    progress : bool
        Show a progress bar.

    Returns
    -------
    images : `~numpy.ndarray`
        uint8 ``(N, size, size, 3)``; zeros where a target failed.
    flags : `~numpy.ndarray` of object
        ``''``, ``'outside_footprint'`` (a blank image) or ``'fetch_failed: ...'``.
    """
    n = len(coords)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    flags = np.full(n, "", dtype=object)
    ra = coords.ra.deg
    dec = coords.dec.deg
    scales = np.asarray(scales, dtype=float)

    def work(i):
        return fetch_jpeg(ra[i], dec[i], scales[i], size, size)

    bar = _progress_bar(n, progress)
    with ThreadPoolExecutor(max(1, int(conf.max_workers))) as pool:
        futures = {pool.submit(work, i): i for i in range(n)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                rgb = future.result()
            except Exception as exc:  # noqa: BLE001 - becomes a flag
                flags[i] = _flag_from_error(exc)
            else:
                if int(rgb.max()) - int(rgb.min()) < 2:
                    flags[i] = "outside_footprint"
                else:
                    images[i] = rgb
            if bar is not None:
                bar.update()
    return images, flags


def lookup_petro_r90(coords, *, radius=None):
    """Look up the r-band Petrosian 90 per cent radius of the galaxy at each position.

    Uses `astroquery.sdss.SDSS.query_crossid` (nearest primary object) in
    batches of 500, with retries.

    Parameters
    ----------
    coords : `~astropy.coordinates.SkyCoord`
        1-D array of positions.
    radius : `~astropy.units.Quantity`, optional
        Match radius; default 5 arcsec.

    Returns
    -------
    petro_r90 : `~astropy.units.Quantity`
        arcsec; NaN where no radius was found.
    flags : `~numpy.ndarray` of object
        ``''``, ``'no_petrosian_radius'`` or ``'fetch_failed: ...'``.
    """
    from astropy.coordinates import SkyCoord
    from astroquery.sdss import SDSS

    radius = _CROSSID_RADIUS if radius is None else u.Quantity(radius, u.arcsec)
    n = len(coords)
    r90 = np.full(n, np.nan)
    flags = np.full(n, "", dtype=object)
    if n == 0:
        return r90 * u.arcsec, flags

    def batch(start):
        sub = coords[start:start + _CROSSID_BATCH]

        def attempt():
            with warnings.catch_warnings():
                # astroquery warns when the server has no field list (fDocColumns); the
                # fields we ask for are standard PhotoObj columns, so this is harmless.
                warnings.filterwarnings("ignore", message="Field info are not available")
                response = SDSS.query_crossid_async(
                    sub, radius=radius, photoobj_fields=["ra", "dec", "petroR90_r"],
                    timeout=float(conf.timeout), data_release=int(conf.data_release),
                    cache=False)
            status = response.status_code
            if status in _RETRY_STATUS or status >= 500:
                raise _Retryable(f"HTTP {status}")
            if status >= 400:
                raise FetchError(f"HTTP {status}")
            try:
                return SDSS._parse_result(response)
            except Exception as exc:
                raise FetchError(f"cross-id failed: {type(exc).__name__}") from exc

        return start, _with_retries(attempt, "cross-id")

    with ThreadPoolExecutor(max(1, int(conf.max_workers))) as pool:
        futures = [pool.submit(batch, s) for s in range(0, n, _CROSSID_BATCH)]
        for future, start in zip(futures, range(0, n, _CROSSID_BATCH)):
            stop = min(start + _CROSSID_BATCH, n)
            try:
                _, result = future.result()
            except Exception as exc:  # noqa: BLE001
                flags[start:stop] = _flag_from_error(exc)
                continue
            if result is None or len(result) == 0:
                continue
            lower = {c.lower(): c for c in result.colnames}
            if not {"ra", "dec", "petror90_r"} <= set(lower):
                flags[start:stop] = "fetch_failed: cross-id answered without petroR90_r"
                continue
            found = SkyCoord(np.asarray(result[lower["ra"]], float) * u.deg,
                             np.asarray(result[lower["dec"]], float) * u.deg)
            values = np.asarray(result[lower["petror90_r"]], dtype=float)
            sub = coords[start:stop]
            # each input takes the nearest returned object within the radius
            idx, sep, _ = sub.match_to_catalog_sky(found)
            ok = sep <= radius
            r90[start:stop][ok] = values[idx[ok]]
    bad = (flags == "") & ~(np.isfinite(r90) & (r90 > 0))
    flags[bad] = "no_petrosian_radius"
    r90[flags != ""] = np.nan
    return r90 * u.arcsec, flags
