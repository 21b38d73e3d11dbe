"""Faults of the client side of acquisition: an unwritable cache, a trickling server, Ctrl-C."""

import errno
import http.server
import logging
import signal
import threading
import time
from collections import Counter

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from astro_metallicity import conf
from astro_metallicity.acquire import FetchError, fetch_cutouts
from astro_metallicity.acquire import _http, _routes, _sdss
from astro_metallicity.mock import MockSDSS

SCALE = 0.5 * u.arcsec / u.pix
CACHE_WARNING = "cannot write the download cache"

pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture(scope="module")
def sdss():
    """A small sky: 3 overlapping fields (3 camcols), 60 galaxies."""
    with MockSDSS(n_galaxies=60, seed=11, galaxies_per_field=20) as server:
        yield server


def _galaxies(sdss, n, camcol=None):
    cat = sdss.catalog
    sel = np.ones(len(cat), bool) if camcol is None else np.asarray(cat["camcol"]) == camcol
    idx = np.flatnonzero(sel)[:n]
    return SkyCoord(cat["ra"][idx], cat["dec"][idx])


def _cache_warnings(caplog):
    return [r for r in caplog.records
            if r.levelno == logging.WARNING and CACHE_WARNING in r.getMessage()]


# --------------------------------------------------------------------------- unwritable cache

@pytest.mark.parametrize("source", ["jpeg", "frames"])
def test_cache_below_a_regular_file_degrades_to_memory_with_one_warning(sdss, tmp_path, caplog,
                                                                        source):
    """Every download succeeds, so every target is good, although nothing can be cached.

    A path below a regular file cannot be created, not even by root (for whom a
    read-only directory would still be writable).
    """
    coords = _galaxies(sdss, 2, camcol=2)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with conf.set_temp("cache_dir", str(blocker / "cache")), caplog.at_level("WARNING"):
        result = fetch_cutouts(coords, source=source, scale=SCALE, size=32)
    assert list(result.flags) == ["", ""]
    assert all(int(image.max()) - int(image.min()) > 10 for image in result.images)
    if source == "jpeg":  # the same cutouts as with a working cache (cheap to check here)
        reference = fetch_cutouts(coords, source=source, scale=SCALE, size=32)
        np.testing.assert_array_equal(result.images, reference.images)
    warnings = _cache_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert str(blocker / "cache") in warnings[0].getMessage()
    assert blocker.read_text() == "not a directory"


def test_full_disk_cache_degrades_and_recovers(sdss, monkeypatch, caplog):
    """A cache write failing with ENOSPC costs the cache, not the targets; once writes work
    again the cache is used (and a later failure would warn again)."""
    real_write = _http._atomic_write
    full = threading.Event()
    full.set()

    def atomic_write(path, content):
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, content)

    monkeypatch.setattr(_http, "_atomic_write", atomic_write)
    coords = _galaxies(sdss, 4)
    with caplog.at_level("WARNING"):
        first = fetch_cutouts(coords[:2], source="jpeg", scale=SCALE, size=32)
        assert len(_cache_warnings(caplog)) == 1
        full.clear()
        second = fetch_cutouts(coords[2:], source="jpeg", scale=SCALE, size=32)
    assert list(first.flags) == list(second.flags) == ["", ""]
    assert len(_cache_warnings(caplog)) == 1
    cached = sorted(p.name for p in _http.cache_dir().rglob("*.jpg"))
    assert len(cached) == 2  # only the second pair, written once the disk had room
    assert str(_http.cache_dir()) not in _http._unwritable


# --------------------------------------------------------------------------- whole-request deadline

class _TrickleHandler(http.server.BaseHTTPRequestHandler):
    """Announces 2,000 bytes, sends one byte every 0.2 s for 12 s, then hangs up.

    GET and POST alike (a POST's body is read first), so it serves ImgCutout
    downloads as well as astroquery's SQL search and cross-id uploads.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "2000")
        self.end_headers()
        try:
            for _ in range(60):
                self.wfile.write(b"\xff")
                self.wfile.flush()
                if self.server.stop.wait(0.2):
                    return
        except OSError:  # the client gave up: what the test wants
            return

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()


@pytest.fixture
def trickle_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TrickleHandler)
    server.daemon_threads = True
    server.stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_trickling_server_is_cut_at_the_whole_request_deadline(trickle_url):
    """Each byte comes well within the 1 s socket timeout, so only a deadline on the whole
    request stops it (before, such a download ran for as long as the server trickled)."""
    with conf.set_temp("timeout", 1.0), conf.set_temp("max_retries", 0):
        start = time.monotonic()
        with pytest.raises(FetchError, match=r"^timeout \(no complete answer within 1 s\) "
                                             r"after 1 attempts$"):
            _http.with_retries(lambda: _http.get(f"{trickle_url}/slow"), "trickle")
        assert time.monotonic() - start < 8.0  # an upper bound on hanging, not a benchmark


def test_trickling_imgcutout_becomes_a_timeout_flag(trickle_url):
    coords = SkyCoord([10.0], [1.0], unit="deg")
    with conf.set_temp("timeout", 1.0), conf.set_temp("max_retries", 1), \
            conf.set_temp("skyserver_baseurl", trickle_url):
        start = time.monotonic()
        result = fetch_cutouts(coords, source="jpeg", scale=SCALE, size=32)
        assert time.monotonic() - start < 12.0  # two attempts of about 1 s, and a backoff
    assert list(result.flags) == ["fetch_failed: timeout (no complete answer within 1 s) "
                                  "after 2 attempts"]


def test_trickling_skyserver_cuts_astroquery_sql_at_the_whole_request_deadline(trickle_url):
    """The Field look-up's SQL goes through astroquery, which passed ``conf.timeout`` to
    requests as a per-read timeout only: before, the query ran for the whole 12 s trickle
    and failed as a broken connection; now it is cut once the request has run 1 s."""
    with conf.set_temp("timeout", 1.0), conf.set_temp("max_retries", 0), \
            conf.set_temp("skyserver_baseurl", trickle_url):
        start = time.monotonic()
        with pytest.raises(FetchError, match=r"^timeout \(no complete answer within 1 s\) "
                                             r"after 1 attempts$"):
            _sdss.query_sql("SELECT run FROM Field")
        assert time.monotonic() - start < 8.0  # an upper bound on hanging, not a benchmark


def test_trickling_crossid_becomes_a_timeout_flag(trickle_url):
    """The petroR90_r cross-id (an astroquery upload, POST) gets the same deadline."""
    coords = SkyCoord([10.0, 10.01], [1.0, 1.0], unit="deg")
    with conf.set_temp("timeout", 1.0), conf.set_temp("max_retries", 0), \
            conf.set_temp("skyserver_baseurl", trickle_url):
        start = time.monotonic()
        r90, flags = _sdss.lookup_petro_r90(coords)
        assert time.monotonic() - start < 8.0
    assert list(flags) == ["fetch_failed: timeout (no complete answer within 1 s) "
                           "after 1 attempts"] * 2
    assert np.isnan(r90.value).all()


def test_deadline_session_keeps_astroquery_answers_whole(sdss):
    """Through the deadline session astroquery still gets complete answers (a small SQL
    result and a cross-id upload against the mock SkyServer)."""
    assert isinstance(_sdss._SDSS._session, _http.DeadlineSession)
    cat = sdss.catalog
    fields = _sdss.query_sql("SELECT run, camcol, field FROM Field")
    assert len(fields) == len(sdss.sky.field_table())
    coords = SkyCoord(cat["ra"][:3], cat["dec"][:3])
    r90, flags = _sdss.lookup_petro_r90(coords)
    assert list(flags) == ["", "", ""]
    np.testing.assert_allclose(r90.to_value(u.arcsec),
                               np.asarray(cat["petroR90_r"][:3], dtype=float), rtol=1e-4)


# --------------------------------------------------------------------------- Ctrl-C

def test_interrupt_in_a_download_cancels_the_queued_targets(sdss, monkeypatch):
    """A KeyboardInterrupt raised by the 3rd download propagates at once; the queued targets
    never start, the two finished JPEGs are in the cache and a rerun starts from them."""
    coords = _galaxies(sdss, 8)
    real_fetch = _routes.fetch_jpeg
    calls = []
    released = threading.Event()

    def fetch(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        if len(calls) > 3:
            # started before the interrupt reached the pool; before the fix every queued
            # target came here and the test fails on its count (bounded wait: no hang)
            released.wait(2.0)
        return real_fetch(*args)

    monkeypatch.setattr(_routes, "fetch_jpeg", fetch)
    with conf.set_temp("max_workers", 1):
        try:
            with pytest.raises(KeyboardInterrupt):
                fetch_cutouts(coords, source="jpeg", scale=SCALE, size=32)
        finally:
            released.set()
    assert len(calls) <= 4  # the 3rd was interrupted; at most the next one had started
    cached = list(_http.cache_dir().rglob("*.jpg"))
    assert len(cached) == 2
    for path in cached:
        assert _sdss._parse_jpeg(path.read_bytes(), 32, 32).shape == (32, 32, 3)
    monkeypatch.setattr(_routes, "fetch_jpeg", real_fetch)
    before = len(sdss.requests)
    rerun = fetch_cutouts(coords, source="jpeg", scale=SCALE, size=32)
    jpeg_requests = [p for _, p in sdss.requests[before:] if "getjpeg" in p]
    assert list(rerun.flags) == [""] * 8
    assert len(jpeg_requests) == 6  # the two finished ones came from the cache


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_ctrl_c_in_the_main_thread_stops_the_frames_route(sdss, monkeypatch):
    """A real SIGINT to the main thread, sent while the 3rd target is being built, ends the
    call at once: no further target starts and the frames already downloaded stay valid."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT does not raise KeyboardInterrupt in this test process")
    coords = _galaxies(sdss, 5, camcol=2)
    real_frames_for_target = _routes.frames_for_target
    calls = []
    released = threading.Event()

    def frames_for_target(*args):
        calls.append(args)
        if len(calls) == 3:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            released.wait(2.0)  # still "downloading" when the interrupt lands
        return real_frames_for_target(*args)

    monkeypatch.setattr(_routes, "frames_for_target", frames_for_target)
    with conf.set_temp("max_workers", 1):
        try:
            with pytest.raises(KeyboardInterrupt):
                fetch_cutouts(coords, source="frames", scale=SCALE, size=32)
        finally:
            released.set()
    assert len(calls) == 3
    cached = list(_http.cache_dir().rglob("frame-*.fits.bz2"))
    assert cached  # the first targets' frames
    for path in cached:
        _sdss.parse_frame(path.read_bytes())
    monkeypatch.setattr(_routes, "frames_for_target", real_frames_for_target)
    _sdss.clear_memory_cache()
    before = len(sdss.requests)
    rerun = fetch_cutouts(coords, source="frames", scale=SCALE, size=32)
    fetched = Counter(p.rsplit("/", 1)[1] for _, p in sdss.requests[before:] if "/frames/" in p)
    assert list(rerun.flags) == [""] * 5
    assert not set(fetched) & {p.name for p in cached}  # the rerun starts from the cache
