"""SDSS services: Field and cross-id look-ups, corrected frames, ImgCutout JPEGs.

Queries go through astroquery's public ``SDSS.query_sql_async`` and
``SDSS.query_crossid_async`` (the raw response, so that the HTTP status can
be classified as transient or not), on the package's own
``astroquery.sdss.SDSSClass`` client whose session (`._http.DeadlineSession`)
ends each query within ``conf.timeout`` as a whole, and are parsed with
`astropy.table.Table.read`; with ``conf.tap_url`` set the Field look-up runs
as ADQL through `pyvo.dal.TAPService`. Every URL comes from `.sdss_urls`.
"""

import bz2
import io
import threading
import warnings
from collections import OrderedDict

import numpy as np
import pyvo
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table, unique, vstack
from astroquery.sdss import SDSS, SDSSClass
from PIL import Image

from .._config import conf
from ..preprocess import header_wcs
from ._http import (
    DeadlineSession,
    FetchError,
    _Retryable,
    astroquery_sdss,
    cached_download,
    raise_for_status,
    sdss_urls,
    server_dir,
    session,
    thread_pool,
    transient_status,
    with_retries,
)

__all__ = ["FIELD_SQL", "FRAME_SHAPE", "clear_memory_cache", "fetch_jpeg", "flag_from_error",
           "frame_url", "jpeg_url", "load_frame", "load_frame_wcs", "lookup_petro_r90",
           "parse_frame", "query_fields", "query_sql"]

#: SQL used to find the fields around a position (SkyServer ``Field`` table); valid ADQL too.
FIELD_SQL = ("SELECT run, rerun, camcol, field, raMin, raMax, decMin, decMax FROM Field "
             "WHERE raMax > {ra1} AND raMin < {ra2} AND decMax > {dec1} AND decMin < {dec2}")

_FIELD_COLUMNS = ["run", "rerun", "camcol", "field", "raMin", "raMax", "decMin", "decMax"]
FRAME_SHAPE = (1489, 2048)
_CROSSID_BATCH = 500
_CROSSID_RADIUS = 5.0 * u.arcsec
_ID_COLUMNS = ("objid", "specobjid")


class _DeadlineSDSS(SDSSClass):
    """astroquery's SDSS client, whose requests end within their timeout as a whole.

    A separate instance, so that astroquery's shared ``SDSS`` object is left as
    it is. Its session (`._http.DeadlineSession`) keeps the User-Agent and the
    response hook astroquery set. It never uses astroquery's disk cache: our
    own calls pass ``cache=False`` (`._http` keeps the validated cache), and the
    column lists astroquery looks up by itself would otherwise be written as
    pickles that processes on one machine (Dask workers) read while another
    writes them, an ``EOFError`` for the reader.
    """

    def _request(self, *args, **kwargs):
        kwargs["cache"] = False
        return super()._request(*args, **kwargs)

    def __init__(self):
        super().__init__()
        plain = self._session
        self._session = DeadlineSession()
        self._session.headers.update(plain.headers)
        self._session.hooks["response"] = list(plain.hooks["response"])
        plain.close()

    @property
    def TIMEOUT(self):  # noqa: N802 - astroquery's name
        # astroquery's cross-id first looks up the column lists with ``self.TIMEOUT``
        # (60 s by default), which must follow conf.timeout too
        return float(conf.timeout)


_SDSS = _DeadlineSDSS()


def _release(data_release):
    return int(conf.data_release if data_release is None else data_release)


# --------------------------------------------------------------------------- SQL, TAP, cross-id

def _parse_csv(response, what):
    """Table of a SkyServer CSV answer (None when it has no rows)."""
    text = response.text
    lines = text.strip().splitlines()
    if "error_message" in text:  # SkyServer reports a rejected query with status 200
        msg = f"{what} failed: {lines[-1][:200]}"
        raise FetchError(msg)
    try:
        table = Table.read(text, format="ascii.csv", comment="#")
    except Exception as exc:
        msg = f"{what} failed: {type(exc).__name__}: {lines[0][:200] if lines else ''}"
        raise FetchError(msg) from exc
    # 64-bit identifiers: keep them exact (a CSV reader may pick int32 or text)
    for name in table.colnames:
        if name.lower() in _ID_COLUMNS:
            table[name] = table[name].astype(np.uint64)
    return table if len(table) else None


def _astroquery_table(request, what):
    """Send ``request()`` (an astroquery ``*_async`` call) with retries; parse the CSV."""

    def attempt():
        with astroquery_sdss():
            response = request()
        raise_for_status(response.status_code)
        return _parse_csv(response, what)

    return with_retries(attempt, what)


def query_sql(sql, *, data_release=None, timeout=None):
    """Run SQL on SkyServer through astroquery, with retries.

    Parameters
    ----------
    sql : str
    data_release : int, optional
        Default ``conf.data_release``.
    timeout : float, optional
        Seconds per HTTP request, the whole request (a server that trickles
        its answer is abandoned then); default ``conf.timeout``.

    Returns
    -------
    table : `~astropy.table.Table` or None
        None when the answer has no rows.

    Raises
    ------
    FetchError
        If the query fails after retries or is rejected.
    """
    dr = _release(data_release)
    timeout = float(conf.timeout if timeout is None else timeout)
    return _astroquery_table(
        lambda: _SDSS.query_sql_async(sql, timeout=timeout, data_release=dr, cache=False), "SQL")


def _query_tap(url, adql):
    """Run ADQL on a TAP service with pyvo, with retries; returns a Table."""

    def attempt():
        service = pyvo.dal.TAPService(url, session=session())
        try:
            return service.run_sync(adql).to_table()
        except pyvo.dal.DALQueryError as exc:
            msg = f"TAP query failed: {exc}"
            raise FetchError(msg) from exc
        except pyvo.dal.DALServiceError as exc:
            if exc.code is not None and exc.code >= 400 and not transient_status(exc.code):
                msg = f"TAP HTTP {exc.code}"
                raise FetchError(msg) from exc
            msg = f"TAP service error ({exc})"
            raise _Retryable(msg) from exc

    return with_retries(attempt, "TAP query")


def _query_fields_box(ra_min, ra_max, dec_min, dec_max):
    sql = FIELD_SQL.format(ra1=f"{ra_min:.6f}", ra2=f"{ra_max:.6f}",
                           dec1=f"{dec_min:.6f}", dec2=f"{dec_max:.6f}")
    tap = sdss_urls().tap
    result = _query_tap(tap, sql) if tap else query_sql(sql)
    if result is None or len(result) == 0:
        return _empty_fields()
    lower = {n.lower(): n for n in result.colnames}
    missing = [n for n in _FIELD_COLUMNS if n.lower() not in lower]
    if missing:
        msg = f"Field query answered without columns {missing}"
        raise FetchError(msg)
    return Table([np.asarray(result[lower[n.lower()]]) for n in _FIELD_COLUMNS],
                 names=_FIELD_COLUMNS)


def _empty_fields():
    return Table(names=_FIELD_COLUMNS, dtype=[int] * 4 + [float] * 4)


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
    if len(boxes) == 1:
        return _query_fields_box(ra_min, ra_max, dec_min, dec_max)
    parts = [_query_fields_box(lo, hi, dec_min, dec_max) for lo, hi in boxes]
    parts = [t for t in parts if len(t)]
    if not parts:
        return _empty_fields()
    return unique(vstack(parts), keys=["run", "rerun", "camcol", "field"])


def lookup_petro_r90(coords, *, radius=None):
    """Look up the r-band Petrosian 90 per cent radius of the galaxy at each position.

    Uses astroquery's ``SDSS.query_crossid`` (nearest primary object) in
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
    radius = _CROSSID_RADIUS if radius is None else u.Quantity(radius, u.arcsec)
    n = len(coords)
    r90 = np.full(n, np.nan)
    flags = np.full(n, "", dtype=object)
    if n == 0:
        return r90 * u.arcsec, flags

    def request(sub):
        with warnings.catch_warnings():
            # astroquery warns when the server has no field list (fDocColumns); the
            # fields we ask for are standard PhotoObj columns, so this is harmless.
            warnings.filterwarnings("ignore", message="Field info are not available")
            return _SDSS.query_crossid_async(
                sub, radius=radius, photoobj_fields=["ra", "dec", "petroR90_r"],
                timeout=float(conf.timeout), data_release=int(conf.data_release), cache=False)

    def batch(start):
        sub = coords[start:start + _CROSSID_BATCH]
        return _astroquery_table(lambda: request(sub), "cross-id")

    starts = range(0, n, _CROSSID_BATCH)
    with thread_pool() as pool:  # a Ctrl-C cancels the queued batches
        futures = [pool.submit(batch, s) for s in starts]
        for future, start in zip(futures, starts):
            stop = min(start + _CROSSID_BATCH, n)
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - becomes a flag
                flags[start:stop] = flag_from_error(exc)
                continue
            if result is None:
                continue
            lower = {c.lower(): c for c in result.colnames}
            if not {"ra", "dec", "petror90_r"} <= set(lower):
                flags[start:stop] = "fetch_failed: cross-id answered without petroR90_r"
                continue
            found = SkyCoord(np.asarray(result[lower["ra"]], float) * u.deg,
                             np.asarray(result[lower["dec"]], float) * u.deg)
            values = np.asarray(result[lower["petror90_r"]], dtype=float)
            # each input takes the nearest returned object within the radius
            idx, sep, _ = coords[start:stop].match_to_catalog_sky(found)
            ok = sep <= radius
            r90[start:stop][ok] = values[idx[ok]]
    bad = (flags == "") & ~(np.isfinite(r90) & (r90 > 0))
    flags[bad] = "no_petrosian_radius"
    r90[flags != ""] = np.nan
    return r90 * u.arcsec, flags


def flag_from_error(exc):
    """The ``fetch_failed: ...`` flag of an exception.

    Parameters
    ----------
    exc : Exception

    Returns
    -------
    flag : str
    """
    if isinstance(exc, FetchError):
        return f"fetch_failed: {exc.reason}"
    return f"fetch_failed: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- frames

def _instrument(data_release):
    if data_release > 17:
        return "prior-surveys/sdss4-dr17-eboss"
    return "eboss" if data_release > 12 else "boss"


def frame_url(run, camcol, field, band, *, rerun=301, data_release=None):
    """URL of an SDSS corrected frame on the SAS.

    Built with astroquery's ``SDSS.IMAGING_URL_SUFFIX`` and the SAS URL of
    `.sdss_urls`.

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
    dr = _release(data_release)
    return SDSS.IMAGING_URL_SUFFIX.format(
        base=sdss_urls().sas, dr=dr, instrument=_instrument(dr), rerun=int(rerun),
        run=int(run), camcol=int(camcol), field=int(field), band=band)


def parse_frame(content, band=None):
    """Decompress and check a corrected frame file.

    Parameters
    ----------
    content : bytes
        The ``.fits.bz2`` (or plain FITS) file.
    band : str, optional
        Expected ``FILTER``.

    Returns
    -------
    data : `~numpy.ndarray`
        float32 image.
    header : `~astropy.io.fits.Header`

    Raises
    ------
    ValueError
        If the file is not a corrected frame of the expected band.
    """
    raw = bz2.decompress(content) if content[:3] == b"BZh" else content
    with fits.open(io.BytesIO(raw), memmap=False) as hdul:
        hdu = hdul[0]
        data = hdu.data
        header = hdu.header.copy()
        if data is None or data.ndim != 2 or data.shape != FRAME_SHAPE:
            shape = None if data is None else data.shape
            msg = f"HDU0 has shape {shape}, expected {FRAME_SHAPE}"
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


class _FrameMemo:
    """Decompressed frames (~12 MB each) of the last few fields, with their WCS.

    The frames route reads the r frame of a field to check its coverage, then
    g, r and i for the cutout, and neighbouring targets share fields (the route
    orders its targets by field). Thread-safe, and each frame is decompressed
    once even when several download threads ask for it at the same time
    (`functools.lru_cache` would let each of them decompress it). The key
    holds the cache path, so a changed cache directory or server never
    returns another's frame.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._values = OrderedDict()
        self._loading = {}  # key -> Lock held by the thread loading it

    @property
    def maxsize(self):
        """How many frames are kept (``conf.frames_in_memory``, read at each insertion)."""
        return max(1, int(conf.frames_in_memory))

    def get(self, key, load):
        while True:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    return self._values[key]
                pending = self._loading.get(key)
                if pending is None:
                    pending = self._loading[key] = threading.Lock()
                    pending.acquire()
                    break
            with pending:  # another thread is loading it: wait, then look again
                pass
        try:
            value = load()
            with self._lock:
                self._values[key] = value
                maxsize = self.maxsize
                while len(self._values) > maxsize:
                    self._values.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._loading[key]
            pending.release()

    def clear(self):
        with self._lock:
            self._values.clear()


_frames = _FrameMemo()


def _parse_frame_wcs(content, band):
    data, header = parse_frame(content, band)
    return data, header, header_wcs(header)


def clear_memory_cache():
    """Forget the decompressed frames kept in memory (the disk cache stays)."""
    _frames.clear()


def load_frame_wcs(run, camcol, field, band, *, rerun=301, data_release=None):
    """Like `load_frame`, and the frame's celestial WCS (parsed once per frame).

    Returns
    -------
    data : `~numpy.ndarray`
    header : `~astropy.io.fits.Header`
    wcs : `~astropy.wcs.WCS`
        The caller's own copy (astropy's WCS objects are not safe to share
        between threads); the header is parsed once per frame.
    """
    dr = _release(data_release)
    name = f"frame-{band}-{int(run):06d}-{int(camcol)}-{int(field):04d}.fits.bz2"
    path = (server_dir(sdss_urls().sas) / f"dr{dr}" / "frames" / str(rerun)
            / str(int(run)) / str(int(camcol)) / name)
    url = frame_url(run, camcol, field, band, rerun=rerun, data_release=dr)
    data, header, wcs = _frames.get((path, url, band), lambda: cached_download(
        path, url, None, lambda content: _parse_frame_wcs(content, band), f"frame {path.name}"))
    return data, header, wcs.deepcopy()


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
    data, header, _ = load_frame_wcs(run, camcol, field, band, rerun=rerun,
                                     data_release=data_release)
    return data, header


# --------------------------------------------------------------------------- JPEGs

def jpeg_url(data_release=None):
    """URL of the ImgCutout ``getjpeg`` service.

    Parameters
    ----------
    data_release : int, optional
        Default ``conf.data_release``.

    Returns
    -------
    url : str
        ``{skyserver}/dr{N}/SkyServerWS/ImgCutout/getjpeg``.
    """
    return f"{sdss_urls().skyserver}/dr{_release(data_release)}/SkyServerWS/ImgCutout/getjpeg"


def _parse_jpeg(content, width, height):
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
    dr = _release(data_release)
    params = {"ra": f"{ra:.7f}", "dec": f"{dec:.7f}", "scale": f"{scale:.6f}",
              "width": int(width), "height": int(height)}
    name = f"{params['ra']}_{params['dec']}_{params['scale']}_{width}x{height}.jpg"
    path = server_dir(sdss_urls().skyserver) / f"dr{dr}" / "jpeg" / name
    return cached_download(path, jpeg_url(dr), params,
                           lambda content: _parse_jpeg(content, int(width), int(height)),
                           f"cutout {name}")
