"""HTTP for acquisition: sessions, retries, the status check, the validating disk cache.

This is also the one place that reads the server URLs from
``astro_metallicity.conf`` (`sdss_urls`) and points astroquery at them
(`astroquery_sdss`), so a mirror set in ``conf`` is used for every request.

Cache layout (under ``conf.cache_dir``, default
``<astropy cache dir>/astro_metallicity``), one folder per server so a mock
sky never mixes with real SDSS::

    <host_port>/dr17/frames/301/<run>/<camcol>/frame-<band>-<run>-<camcol>-<field>.fits.bz2
    <host_port>/dr17/jpeg/<ra>_<dec>_<scale>_<w>x<h>.jpg

Files are written to a temporary name and renamed when complete and valid,
so an interrupted run never leaves a partial file; a cached file that does
not validate (truncated, corrupted) is deleted and fetched again.
"""

import os
import random
import tempfile
import threading
import time
from collections import namedtuple
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import requests
from astropy.config import get_cache_dir
from astroquery.sdss import conf as astroquery_sdss_conf

from .. import __version__
from .._config import conf
from ..logger import log

__all__ = ["FetchError", "SdssUrls", "astroquery_sdss", "cache_dir", "cached_download", "get",
           "raise_for_status", "sdss_urls", "server_dir", "session", "transient_status",
           "with_retries"]

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class FetchError(Exception):
    """A download failed for good (after retries, or with a non-retryable error).

    Parameters
    ----------
    reason : str
        Short text, used in the ``fetch_failed: <reason>`` flag.
    retryable : bool
        Whether the failure was transient.
    """

    def __init__(self, reason, *, retryable=False):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class _Retryable(Exception):
    """A transient failure that is worth retrying."""


# --------------------------------------------------------------------------- URLs

SdssUrls = namedtuple("SdssUrls", ["skyserver", "sas", "tap"])


def sdss_urls():
    """The server URLs, read from ``astro_metallicity.conf`` when called.

    Returns
    -------
    urls : SdssUrls
        ``skyserver`` and ``sas`` base URLs without a trailing slash, and
        ``tap`` (``''`` when the Field look-up uses the SkyServer SQL search).
    """
    return SdssUrls(str(conf.skyserver_baseurl).rstrip("/"), str(conf.sas_baseurl).rstrip("/"),
                    str(conf.tap_url or ""))


_sync = threading.Condition()
_sync_state = {"users": 0, "urls": None, "saved": None}
_held = threading.local()  # the URLs this thread is inside a block for, if any


@contextmanager
def astroquery_sdss():
    """Point ``astroquery.sdss.conf`` at the servers of ``astro_metallicity.conf`` for a block.

    astroquery reads its own ``skyserver_baseurl`` when it sends a query; without
    this a mirror set in ``astro_metallicity.conf`` would be bypassed. Unlike a
    bare ``set_temp``, this is safe from many threads at once: the first block in
    sets the values and the last one out restores them; a block that wants other
    URLs waits until the current ones are released (at most ten request
    timeouts). Keep blocks to the astroquery call itself.

    Yields
    ------
    urls : SdssUrls
        The URLs in force for the block.

    Raises
    ------
    RuntimeError
        When a thread already inside a block asks for other URLs (it would wait
        for itself).
    FetchError
        When blocks for other URLs did not finish in time.
    """
    urls = sdss_urls()
    outer = getattr(_held, "urls", None)
    if outer is not None and outer != urls:
        msg = ("astroquery is already pointed at other SDSS servers by this thread; the server "
               "URLs in astro_metallicity.conf changed inside an astroquery call")
        raise RuntimeError(msg)
    entered = False
    try:
        with _sync:
            deadline = time.monotonic() + 10.0 * float(conf.timeout)
            while _sync_state["users"] and _sync_state["urls"] != urls:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _sync.wait(remaining):
                    msg = "timed out waiting for astroquery queries to other SDSS servers"
                    raise FetchError(msg)
            if not _sync_state["users"]:
                _sync_state["saved"] = (astroquery_sdss_conf.skyserver_baseurl,
                                        astroquery_sdss_conf.sas_baseurl)
                astroquery_sdss_conf.skyserver_baseurl = urls.skyserver
                astroquery_sdss_conf.sas_baseurl = urls.sas
                _sync_state["urls"] = urls
            _sync_state["users"] += 1
            entered = True
        _held.urls = urls
        yield urls
    finally:
        if entered:
            _held.urls = outer
            with _sync:
                _sync_state["users"] -= 1
                if not _sync_state["users"]:
                    skyserver, sas = _sync_state["saved"]
                    astroquery_sdss_conf.skyserver_baseurl = skyserver
                    astroquery_sdss_conf.sas_baseurl = sas
                    _sync_state["urls"] = None
                    _sync.notify_all()


# --------------------------------------------------------------------------- HTTP

def transient_status(status):
    """Whether an HTTP status is worth retrying (timeouts, throttling, 5xx).

    Parameters
    ----------
    status : int

    Returns
    -------
    transient : bool
    """
    return status in _RETRY_STATUS or status >= 500


def raise_for_status(status, what="HTTP"):
    """The one HTTP status check: pass 1xx-3xx, else raise.

    Parameters
    ----------
    status : int
        HTTP status code.
    what : str
        Prefix of the error text.

    Raises
    ------
    _Retryable
        For a transient status (see `transient_status`).
    FetchError
        For any other status of 400 or more.
    """
    if transient_status(status):
        raise _Retryable(f"{what} {status}")
    if status >= 400:
        raise FetchError(f"{what} {status}")


_thread_local = threading.local()


def session():
    """This thread's `requests.Session` (User-Agent names the package and its version).

    Returns
    -------
    session : `requests.Session`
    """
    current = getattr(_thread_local, "session", None)
    if current is None:
        current = requests.Session()
        current.headers["User-Agent"] = f"astro-metallicity/{__version__}"
        _thread_local.session = current
    return current


def with_retries(func, what):
    """Call ``func()``; retry `_Retryable` and transient network errors with backoff.

    Parameters
    ----------
    func : callable
        Takes no arguments.
    what : str
        Name of the operation, for the debug log.

    Returns
    -------
    value
        What ``func`` returned.

    Raises
    ------
    FetchError
        When ``func`` raises it, or when every attempt failed.
    """
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
    msg = f"{last} after {retries + 1} attempts"
    raise FetchError(msg)


def get(url, params=None):
    """GET with the status and length checks.

    Parameters
    ----------
    url : str
    params : dict, optional
        Query parameters.

    Returns
    -------
    content : bytes

    Raises
    ------
    _Retryable
        For a transient status or a truncated body.
    FetchError
        For a permanent HTTP error.
    """
    response = session().get(url, params=params, timeout=float(conf.timeout))
    try:
        raise_for_status(response.status_code)
        content = response.content
        expected = response.headers.get("Content-Length")
        encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
        if (not encoded and expected is not None and expected.isdigit()
                and int(expected) != len(content)):
            msg = f"truncated ({len(content)} of {expected} bytes)"
            raise _Retryable(msg)
        return content
    finally:
        response.close()


# --------------------------------------------------------------------------- disk cache

def cache_dir():
    """Root of the download cache.

    Returns
    -------
    path : `~pathlib.Path`
        ``conf.cache_dir`` when set, else ``<astropy cache dir>/astro_metallicity``.
    """
    if conf.cache_dir:
        return Path(conf.cache_dir).expanduser()
    return Path(get_cache_dir()) / "astro_metallicity"


def server_dir(url):
    """Cache folder of a server: host, port and path prefix (e.g. a mock sky's token).

    Parameters
    ----------
    url : str
        Base URL of the server.

    Returns
    -------
    path : `~pathlib.Path`
        ``cache_dir() / <key>``.
    """
    parts = urlsplit(url)
    key = (parts.hostname or "local").replace(":", "_")
    if parts.port:
        key += f"_{parts.port}"
    path = parts.path.strip("/")
    if path:
        key += "_" + "".join(c if c.isalnum() or c in "-." else "_" for c in path)
    return cache_dir() / key


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


def cached_download(path, url, params, parse, what):
    """``parse(bytes)`` of a cached or freshly downloaded file.

    A cached file that fails ``parse`` is deleted and fetched again. A
    download that fails ``parse`` (truncated, corrupted) is retried; only
    one that parses is written, atomically, to ``path``.

    Parameters
    ----------
    path : `~pathlib.Path`
        Place of the file in the cache.
    url : str
    params : dict or None
        Query parameters.
    parse : callable
        Validates and decodes the bytes; raises on a bad file.
    what : str
        Name of the file, for messages.

    Returns
    -------
    value
        What ``parse`` returned.

    Raises
    ------
    FetchError
        If no valid file could be downloaded.
    """
    with _lock_for(str(path)):
        if path.is_file():
            try:
                return parse(path.read_bytes())
            except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
                log.warning(f"cached {path.name} is invalid ({exc}); fetching it again")
                path.unlink(missing_ok=True)

        def attempt():
            content = get(url, params)
            try:
                value = parse(content)
            except FetchError:
                raise
            except Exception as exc:
                msg = f"invalid file ({type(exc).__name__}: {exc})"
                raise _Retryable(msg) from exc
            _atomic_write(path, content)
            return value

        return with_retries(attempt, what)
