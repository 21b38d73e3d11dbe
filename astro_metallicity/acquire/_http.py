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
not validate (truncated, corrupted) is deleted and fetched again. A cache
that cannot be written (read-only, full, a path through a regular file) is
skipped with one warning: the files are then used from memory only.

``conf.timeout`` bounds each request as a whole, not just each socket read:
`get` streams the body and gives up once the request has run for
``conf.timeout`` seconds, so a server that trickles bytes cannot hold a worker.
The SQL and cross-id queries sent through astroquery get the same deadline
from `DeadlineSession`, the session of the package's own astroquery client.
"""

import os
import random
import tempfile
import threading
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3
from astropy.config import get_cache_dir
from astroquery.sdss import conf as astroquery_sdss_conf

from .. import __version__
from .._config import conf
from ..logger import log

__all__ = ["DeadlineSession", "FetchError", "SdssUrls", "astroquery_sdss", "cache_dir",
           "cached_download", "get",
           "raise_for_status", "sdss_urls", "server_dir", "session", "thread_pool",
           "transient_status", "with_retries"]

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
_worker = threading.local()  # .cancelled: the Event of the thread_pool running this thread's task


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
        _raise_if_cancelled()
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
            cancelled = getattr(_worker, "cancelled", None)
            if cancelled is None:
                time.sleep(wait)
            else:
                cancelled.wait(wait)  # wakes at once when the run is interrupted
    msg = f"{last} after {retries + 1} attempts"
    raise FetchError(msg)


def _raise_if_cancelled():
    """Stop the task of this worker thread if its `thread_pool` was interrupted."""
    cancelled = getattr(_worker, "cancelled", None)
    if cancelled is not None and cancelled.is_set():
        raise FetchError("cancelled")


class _CancellablePool:
    """`~concurrent.futures.ThreadPoolExecutor` whose tasks can see that the run was interrupted."""

    def __init__(self, max_workers):
        self._pool = ThreadPoolExecutor(max_workers)
        self.cancelled = threading.Event()

    def submit(self, func, *args):
        return self._pool.submit(self._run, func, args)

    def _run(self, func, args):
        _worker.cancelled = self.cancelled
        try:
            return func(*args)
        finally:
            _worker.cancelled = None

    def shutdown(self, *, cancel):
        if cancel:
            self.cancelled.set()
            self._pool.shutdown(wait=False, cancel_futures=True)
        else:
            self._pool.shutdown(wait=True)


@contextmanager
def thread_pool():
    """Threads for concurrent downloads (``conf.max_workers``), stopped at once on an interrupt.

    A `~concurrent.futures.ThreadPoolExecutor` used as a context manager waits
    for every queued task when its block raises, so a Ctrl-C in a chunk of
    2,048 targets would wait for all their downloads. When the block raises
    anything (`KeyboardInterrupt` included), this one cancels the queued
    tasks and returns without waiting; tasks already running stop at their
    next retry or body read (``FetchError('cancelled')``). Files are written
    to the cache atomically, so what was downloaded stays valid and a rerun
    resumes from it.

    Yields
    ------
    pool
        Has ``submit(func, *args)``, returning a `~concurrent.futures.Future`.
    """
    pool = _CancellablePool(max(1, int(conf.max_workers)))
    try:
        yield pool
    except BaseException:
        pool.shutdown(cancel=True)
        raise
    pool.shutdown(cancel=False)


def get(url, params=None):
    """GET with the status and length checks, within ``conf.timeout`` for the whole request.

    ``conf.timeout`` is the socket timeout (a silent server is abandoned after
    that long) and also the deadline of the request as a whole: the body is
    read as it arrives and the request is abandoned once it has run
    ``conf.timeout`` seconds, so a server that trickles bytes cannot hold a
    download (and a worker) indefinitely. (Until the headers of the answer
    are in, only the socket timeout applies.)

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
        For a transient status, a truncated body or a request past its deadline.
    FetchError
        For a permanent HTTP error, or when the run was interrupted (``'cancelled'``).
    """
    timeout = float(conf.timeout)
    deadline = time.monotonic() + timeout
    response = session().get(url, params=params, timeout=timeout, stream=True)
    try:
        raise_for_status(response.status_code)
        content = _read_body(response.raw, deadline, timeout)
        expected = response.headers.get("Content-Length")
        encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
        if (not encoded and expected is not None and expected.isdigit()
                and int(expected) != len(content)):
            msg = f"truncated ({len(content)} of {expected} bytes)"
            raise _Retryable(msg)
        return content
    finally:
        response.close()


class DeadlineSession(requests.Session):
    """A `requests.Session` whose requests end within their ``timeout`` as a whole.

    astroquery passes its ``timeout`` to `requests`, where it bounds each
    socket read only: a server that trickles its answer holds a query for as
    long as it trickles. A request sent through this session (without
    ``stream=True``) is streamed instead, and its body read as in `get`,
    until ``timeout`` seconds after the request started; the response then
    carries the whole body, as a plain `requests` response does. Requests
    with ``stream=True`` or a ``(connect, read)`` timeout pass through as
    they are.
    """

    def request(self, method, url, *args, **kwargs):
        timeout = kwargs.get("timeout")
        if args or kwargs.get("stream") or not isinstance(timeout, (int, float)):
            return super().request(method, url, *args, **kwargs)
        timeout = float(timeout)
        deadline = time.monotonic() + timeout
        kwargs["stream"] = True
        response = super().request(method, url, **kwargs)
        try:
            content = _read_body(response.raw, deadline, timeout)
        finally:
            response.close()
        # what requests itself stores when it reads a non-streamed body
        response._content = content
        response._content_consumed = True
        return response


_READ_SIZE = 1 << 16


def _read_body(raw, deadline, timeout):
    """The decoded body of a streamed `urllib3.response.HTTPResponse`, read until ``deadline``."""
    # read1 returns what has arrived (urllib3 >= 2.3); read(n) waits for n bytes, so with
    # an older urllib3 the deadline is checked less often on a trickling server
    read = getattr(raw, "read1", None) or raw.read
    parts = []
    try:
        while True:
            _raise_if_cancelled()
            if time.monotonic() > deadline:
                msg = f"timeout (no complete answer within {timeout:g} s)"
                raise _Retryable(msg)
            part = read(_READ_SIZE, decode_content=True)
            if not part:
                return b"".join(parts)
            parts.append(part)
    except urllib3.exceptions.ReadTimeoutError:
        raise _Retryable("timeout") from None
    except urllib3.exceptions.HTTPError as exc:  # broken or incomplete body, bad encoding
        msg = f"connection error ({type(exc).__name__})"
        raise _Retryable(msg) from exc


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


# cache roots where a write failed and the user was warned (guarded by _locks_guard)
_unwritable = set()


def _store(path, content):
    """Write a downloaded file to the cache; an unwritable cache is skipped with one warning.

    Downloads are kept in memory by the caller, so a cache that cannot be
    written (read-only, full, below a regular file) costs only the re-use of
    files, never the download itself. The warning is given once per cache
    directory, until a write there succeeds again.
    """
    root = str(cache_dir())
    try:
        _atomic_write(path, content)
    except OSError as exc:
        with _locks_guard:
            first = root not in _unwritable
            _unwritable.add(root)
        if first:
            log.warning(f"cannot write the download cache {root} ({type(exc).__name__}: {exc}); "
                        "going on without it: downloads are kept in memory only and will be "
                        "fetched again next time. Set conf.cache_dir to a writable directory.")
        return
    if root in _unwritable:
        with _locks_guard:
            _unwritable.discard(root)


def _read_cached(path, parse):
    """``(True, parse(bytes))`` of a valid cached file, else ``(False, None)``."""
    try:
        if not path.is_file():
            return False, None
        content = path.read_bytes()
    except OSError as exc:  # unreadable cache: a miss, not a failed target
        log.debug(f"cannot read cached {path.name} ({exc}); fetching it")
        return False, None
    try:
        return True, parse(content)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
        log.warning(f"cached {path.name} is invalid ({exc}); fetching it again")
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache: the fresh download is then kept in memory only
        return False, None


def cached_download(path, url, params, parse, what):
    """``parse(bytes)`` of a cached or freshly downloaded file.

    A cached file that fails ``parse`` is deleted and fetched again. A
    download that fails ``parse`` (truncated, corrupted) is retried; only
    one that parses is written, atomically, to ``path``. When the cache
    cannot be written the download is used all the same, with one warning
    per cache directory.

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
        found, value = _read_cached(path, parse)
        if found:
            return value

        def attempt():
            content = get(url, params)
            try:
                value = parse(content)
            except FetchError:
                raise
            except Exception as exc:
                msg = f"invalid file ({type(exc).__name__}: {exc})"
                raise _Retryable(msg) from exc
            _store(path, content)
            return value

        return with_retries(attempt, what)
