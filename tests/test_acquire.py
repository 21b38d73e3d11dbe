"""Tests of astro_metallicity.acquire (fetch_cutouts and its private modules) against the mock SDSS."""

from collections import Counter

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from astro_metallicity import conf
from astro_metallicity.acquire import FetchError, fetch_cutouts
from astro_metallicity.acquire import _fields, _http, _sdss
from astro_metallicity.mock import MockSDSS
from astro_metallicity.preprocess import make_cutout

SCALE = 0.5 * u.arcsec / u.pix


@pytest.fixture(scope="module")
def sdss():
    """A small sky: 3 overlapping fields (3 camcols), 60 galaxies."""
    with MockSDSS(n_galaxies=60, seed=11, galaxies_per_field=20) as server:
        yield server


pytestmark = pytest.mark.usefixtures("fast_retries")


def _frame_downloads(requests):
    return Counter(path for method, path in requests if "/photoObj/frames/" in path)


def _galaxies(sdss, n, camcol=None):
    cat = sdss.catalog
    sel = np.ones(len(cat), bool) if camcol is None else np.asarray(cat["camcol"]) == camcol
    idx = np.flatnonzero(sel)[:n]
    return SkyCoord(cat["ra"][idx], cat["dec"][idx]), idx


def _edge_galaxy(sdss, size):
    """The galaxy nearest the boundary of camcols 1 and 2, and a pixel scale at which its
    cutout crosses both frame edges of their 64-column overlap (so it needs both frames)."""
    fp = sdss.sky.footprint
    k = fp.index(1, int(fp.field[0]))
    cat = sdss.catalog
    col, row = fp.wcs(k).world_to_pixel(SkyCoord(cat["ra"], cat["dec"]))
    inside = (row > 100) & (row < 1389)
    middle = 2015.5  # middle of the overlap, in camcol 1 columns
    i = np.flatnonzero(inside)[np.argmin(np.abs(col[inside] - middle))]
    half = abs(col[i] - middle) + 60.0  # native pixels
    scale = half * 0.396 / (size / 2)
    return SkyCoord(cat["ra"][i], cat["dec"][i]), scale


def test_fetch_cutouts_argument_errors():
    coords = SkyCoord([1.0], [2.0], unit="deg")
    with pytest.raises(TypeError, match="must be an astropy SkyCoord"):
        fetch_cutouts([(1.0, 2.0)])
    with pytest.raises(ValueError, match="source must be 'frames' or 'jpeg'"):
        fetch_cutouts(coords, source="fits")
    with pytest.raises(ValueError, match="size must be at least 2 pixels"):
        fetch_cutouts(coords, source="jpeg", size=1)
    with pytest.raises(ValueError, match="scale must be 'adaptive' or an angle"):
        fetch_cutouts(coords, scale="big", source="jpeg")
    with pytest.raises(ValueError, match="scale has 2 values for 1 targets"):
        fetch_cutouts(coords, scale=[1.0, 2.0] * u.arcsec / u.pix, source="jpeg")


def test_frame_url_uses_astroquery_template_and_conf(sdss):
    url = _sdss.frame_url(4294, 3, 11, "r")
    assert url == (f"{sdss.url}/sas/dr17/eboss/photoObj/frames/301/4294/3/"
                   "frame-r-004294-3-0011.fits.bz2")
    with conf.set_temp("data_release", 12):
        assert "/dr12/boss/photoObj/" in _sdss.frame_url(4294, 3, 11, "g")


def test_query_fields_finds_the_field_of_each_galaxy(sdss):
    coords, idx = _galaxies(sdss, 5)
    for c, i in zip(coords, idx):
        fields = _sdss.query_fields(c.ra.deg - 0.001, c.ra.deg + 0.001,
                                    c.dec.deg - 0.001, c.dec.deg + 0.001)
        pairs = {(int(r["camcol"]), int(r["field"])) for r in fields}
        assert (int(sdss.catalog["camcol"][i]), int(sdss.catalog["field"][i])) in pairs
    empty = _sdss.query_fields(10.0, 10.01, 50.0, 50.01)
    assert len(empty) == 0


def test_frames_cache_fetch_once_rerun_and_corruption(sdss):
    coords, _ = _galaxies(sdss, 4, camcol=2)
    # An interrupted run: it got through the first two targets, and the process
    # was killed in the middle of a download, leaving a temporary file behind.
    before = len(sdss.requests)
    fetch_cutouts(coords[:2], source="frames", scale=SCALE, size=48)
    first = _frame_downloads(sdss.requests[before:])
    assert set(first.values()) == {1}  # every frame once, shared by the targets
    assert {p.split("/frame-")[1][0] for p in first} == set("gri")
    cached = sorted(_http.cache_dir().rglob("frame-*.fits.bz2"))
    assert len(cached) == len(first)
    leftover = cached[0].parent / (cached[0].name + ".x1y2z3.part")
    leftover.write_bytes(cached[0].read_bytes()[:1000])
    # The rerun (a new process: nothing in memory) downloads none of those frames again.
    _sdss.clear_memory_cache()
    before = len(sdss.requests)
    second = fetch_cutouts(coords, source="frames", scale=SCALE, size=48)
    assert list(second.flags) == [""] * 4
    assert not set(_frame_downloads(sdss.requests[before:])) & set(first)
    # and a third run downloads nothing at all
    _sdss.clear_memory_cache()
    before = len(sdss.requests)
    third = fetch_cutouts(coords, source="frames", scale=SCALE, size=48)
    assert _frame_downloads(sdss.requests[before:]) == Counter()
    np.testing.assert_array_equal(second.images, third.images)
    # only complete, valid files carry final names
    for path in _http.cache_dir().rglob("frame-*.fits.bz2"):
        _sdss.parse_frame(path.read_bytes())
    # A cache file corrupted on disk is detected, deleted and fetched again (only it).
    target = min(_http.cache_dir().rglob("frame-r-*.fits.bz2"))
    content = target.read_bytes()
    target.write_bytes(content[: len(content) // 3])
    _sdss.clear_memory_cache()
    before = len(sdss.requests)
    fourth = fetch_cutouts(coords, source="frames", scale=SCALE, size=48)
    downloads = _frame_downloads(sdss.requests[before:])
    assert len(downloads) == 1 and target.name in next(iter(downloads))
    assert target.read_bytes() == content
    np.testing.assert_array_equal(fourth.images, third.images)
    # The ImgCutout JPEGs of the same galaxies look the same (one input domain).
    jpeg = fetch_cutouts(coords, source="jpeg", scale=SCALE, size=48)
    assert list(jpeg.flags) == [""] * 4
    diff = np.abs(jpeg.images.astype(float) - third.images.astype(float)).mean(axis=(1, 2, 3))
    assert np.all(diff < 8.0), diff


def test_galaxy_near_frame_edge_gets_complete_cutout(sdss):
    size = 64
    position, scale = _edge_galaxy(sdss, size)
    half = _fields.half_width_deg(np.array([scale]), size)[0]
    fields = _sdss.query_fields(position.ra.deg - half, position.ra.deg + half,
                                position.dec.deg - half, position.dec.deg + half)
    frames, complete = _fields.frames_for_target(position, scale, size, fields)
    assert complete
    assert len(frames["r"]) >= 2  # a mosaic of the two camcols
    _, bands, coverage = make_cutout(frames, position, size=size,
                                     scale=scale * u.arcsec / u.pix, return_bands=True)
    assert coverage.min() == 1.0
    # compare with the mock's own resampling of the same frames (the truth)
    truth = sdss.sky.cutout(position.ra.deg, position.dec.deg, scale, size, size, bands="r")[0]
    assert np.corrcoef(bands["r"].ravel(), truth.ravel())[0, 1] > 0.9
    bright = truth > np.percentile(truth, 95)
    assert bands["r"][bright].sum() == pytest.approx(truth[bright].sum(), rel=0.05)
    # through the public path: flagged OK, and the same picture as the ImgCutout JPEG
    coords = SkyCoord([position.ra], [position.dec])
    via_frames = fetch_cutouts(coords, source="frames", scale=scale * u.arcsec / u.pix,
                               size=size)
    via_jpeg = fetch_cutouts(coords, source="jpeg", scale=scale * u.arcsec / u.pix, size=size)
    assert list(via_frames.flags) == [""]
    diff = np.abs(via_frames.images.astype(float) - via_jpeg.images.astype(float))
    assert diff.mean() < 6.0
    for half_image in (via_frames.images[0, :, : size // 2], via_frames.images[0, :, size // 2:]):
        assert half_image.mean() > 0.5 * via_jpeg.images[0].mean()


def test_single_frame_edge_without_neighbour_is_flagged_partial(sdss):
    fp = sdss.sky.footprint
    k = fp.index(1, int(fp.field[0]))
    outer_edge = fp.wcs(k).pixel_to_world(5.0, 744.0)  # the survey's outer boundary
    result = fetch_cutouts(SkyCoord([outer_edge.ra], [outer_edge.dec]), source="frames",
                           scale=SCALE, size=48)
    assert list(result.flags) == ["partial_coverage"]
    assert not result.images.any()


def test_outside_footprint_and_bad_rows_are_flags(sdss):
    coords, _ = _galaxies(sdss, 1)
    targets = SkyCoord([coords[0].ra.deg, 40.0, np.nan], [coords[0].dec.deg, 40.0, 0.0], unit="deg")
    for source in ("frames", "jpeg"):
        result = fetch_cutouts(targets, source=source, scale=SCALE, size=32)
        assert result.flags[0] == ""
        assert result.flags[1] == "outside_footprint"
        assert result.flags[2].startswith("bad_coordinates")
        assert result.images[0].any() and not result.images[1:].any()


def test_jpeg_route_adaptive_scale_uses_petrosian_radius(sdss):
    coords, idx = _galaxies(sdss, 5)
    empty = SkyCoord(coords[0].ra + 30 * u.arcsec, coords[0].dec)  # no galaxy within 5"
    r90, flags = _sdss.lookup_petro_r90(SkyCoord([*coords, empty]))
    expected = sdss.catalog["petroR90_r"][idx].to_value(u.arcsec)
    np.testing.assert_allclose(r90[:5].to_value(u.arcsec), expected, rtol=1e-4)
    assert list(flags) == [""] * 5 + ["no_petrosian_radius"]
    result = fetch_cutouts(coords, source="jpeg", size=64)
    np.testing.assert_allclose(result.scales.value, 2 * expected / (0.396 * 64), rtol=1e-4)
    assert result.images.shape == (5, 64, 64, 3) and result.images.dtype == np.uint8
    jpeg_paths = sorted(_http.cache_dir().rglob("*.jpg"))
    assert len(jpeg_paths) == 5


def test_injected_errors_drops_and_truncations_are_survived():
    faults = {"error_rate": 0.25, "drop_rate": 0.1, "truncate_rate": 0.15, "seed": 3}
    with MockSDSS(n_galaxies=20, seed=11, galaxies_per_field=20, faults=faults) as sdss, \
            conf.set_temp("max_retries", 8):
        coords, _ = _galaxies(sdss, 4)
        jpeg = fetch_cutouts(coords, source="jpeg", size=32)
        frames = fetch_cutouts(coords, source="frames", scale=SCALE, size=32)
        requests = list(sdss.requests)
    assert list(jpeg.flags) == [""] * 4
    assert list(frames.flags) == [""] * 4
    # every fault kind was met and retried: more requests than distinct URLs
    assert len(requests) > len(set(requests))
    decisions = {sdss.faults.decide(path, 0) for _, path in requests}
    assert {"truncate", "drop"} <= decisions
    assert decisions & {"error500", "error503"}


def test_fail_first_503_is_retried_with_backoff():
    with MockSDSS(n_galaxies=20, seed=11, galaxies_per_field=20,
                  faults={"fail_first": 2, "match": "getjpeg"}) as sdss:
        coords, _ = _galaxies(sdss, 2)
        result = fetch_cutouts(coords, source="jpeg", scale=SCALE, size=32)
        jpeg_requests = [p for _, p in sdss.requests if "getjpeg" in p]
    assert list(result.flags) == ["", ""]
    assert len(jpeg_requests) == 6  # two 503s then success, per target


def test_timeouts_and_dead_servers_become_flags():
    with MockSDSS(n_galaxies=20, seed=11, galaxies_per_field=20,
                  faults={"latency": 1.0, "match": "getjpeg"}) as sdss, \
            conf.set_temp("timeout", 0.2), conf.set_temp("max_retries", 1):
        coords, _ = _galaxies(sdss, 2)
        result = fetch_cutouts(coords, source="jpeg", scale=SCALE, size=32)
    assert all(f.startswith("fetch_failed: timeout") for f in result.flags), result.flags
    with conf.set_temp("skyserver_baseurl", "http://127.0.0.1:9"), \
            conf.set_temp("max_retries", 1):
        result = fetch_cutouts(coords, source="jpeg", scale=SCALE, size=32)
    assert all(f.startswith("fetch_failed: connection error") for f in result.flags)
    assert not result.images.any()


def test_frames_route_across_ra_zero():
    """A field straddling RA = 0 serves targets on both sides of it."""
    with MockSDSS(n_galaxies=10, seed=4, galaxies_per_field=10, ra0=0.0) as sdss:
        ra = sdss.catalog["ra"].to_value(u.deg) % 360.0
        west, east = np.flatnonzero(ra > 180)[:2], np.flatnonzero(ra < 180)[:2]
        assert len(west) and len(east)
        idx = np.concatenate([west, east])
        coords = SkyCoord(ra[idx] * u.deg, sdss.catalog["dec"][idx])
        result = fetch_cutouts(coords, source="frames", scale=SCALE, size=32)
        downloads = _frame_downloads(sdss.requests)
    assert list(result.flags) == [""] * len(idx)
    assert len(downloads) == 3  # one field, g, r and i


_CHILD = """
import sys
import astroquery.sdss
from astropy.coordinates import SkyCoord
from astro_metallicity import conf
from astro_metallicity.acquire import fetch_cutouts
url, cache = sys.argv[1], sys.argv[2]
ra = [float(x) for x in sys.argv[3].split(",")]
dec = [float(x) for x in sys.argv[4].split(",")]
for c in (conf, astroquery.sdss.conf):
    c.skyserver_baseurl = url
    c.sas_baseurl = url + "/sas"
conf.cache_dir = cache
conf.max_workers = 1
fetch_cutouts(SkyCoord(ra, dec, unit="deg"), source="frames", scale="0.5 arcsec/pix", size=32)
"""


def test_rerun_after_killed_process_reuses_its_downloads(tmp_path):
    """Kill a real run (SIGKILL) in the middle of its downloads, then rerun."""
    import subprocess
    import sys
    import time

    with MockSDSS(n_galaxies=60, seed=11, galaxies_per_field=20,
                  faults={"latency": 0.3, "match": "photoObj"}) as sdss:
        cat = sdss.catalog
        idx = [int(np.flatnonzero(np.asarray(cat["camcol"]) == c)[0]) for c in (1, 3)]
        ra = ",".join(f"{v:.7f}" for v in cat["ra"][idx].to_value(u.deg))
        dec = ",".join(f"{v:.7f}" for v in cat["dec"][idx].to_value(u.deg))
        cache = _http.cache_dir()
        child = subprocess.Popen([sys.executable, "-c", _CHILD, sdss.url, str(cache), ra, dec])
        try:
            deadline = time.monotonic() + 120
            while len(_frame_downloads(sdss.requests)) < 3 and time.monotonic() < deadline:
                assert child.poll() is None, "the run ended before it could be killed"
                time.sleep(0.05)
        finally:
            child.kill()
            child.wait()
        killed_run = set(_frame_downloads(sdss.requests))
        assert 3 <= len(killed_run) < 6
        complete = {p.name for p in cache.rglob("frame-*.fits.bz2")}
        for path in cache.rglob("frame-*.fits.bz2"):  # final names only for complete files
            _sdss.parse_frame(path.read_bytes())
        assert complete
        before = len(sdss.requests)
        result = fetch_cutouts(SkyCoord(cat["ra"][idx], cat["dec"][idx]), source="frames",
                               scale=SCALE, size=32)
        rerun = set(_frame_downloads(sdss.requests[before:]))
    assert list(result.flags) == [""] * 2
    assert not any(path.rsplit("/", 1)[1] in complete for path in rerun)
    assert len(rerun) + len(complete) == 6  # every frame fetched exactly once overall


def test_field_lookup_through_pyvo_tap(sdss):
    """With a TAP URL the Field query goes through pyvo (a minimal TAP /sync in front of the mock)."""
    import io
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs

    from astropy.io.votable import from_table
    from astropy.table import Table

    from astro_metallicity.mock._sql import execute_sql

    queries, fail = [], {"left": 1}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            params = {k: v[0] for k, v in parse_qs(body).items()}
            queries.append(params)
            if fail["left"]:  # the first request meets a server error and is retried
                fail["left"] -= 1
                self.send_response(503)
                self.end_headers()
                return
            names, columns = execute_sql(sdss.sky, params["QUERY"])
            buf = io.BytesIO()
            from_table(Table(list(columns), names=names)).to_xml(buf)
            payload = buf.getvalue()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-votable+xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        coords, idx = _galaxies(sdss, 2)
        c, i = coords[0], idx[0]
        with conf.set_temp("tap_url", f"http://127.0.0.1:{server.server_port}/tap"):
            fields = _sdss.query_fields(c.ra.deg - 0.001, c.ra.deg + 0.001,
                                        c.dec.deg - 0.001, c.dec.deg + 0.001)
    finally:
        server.shutdown()
        server.server_close()
    assert len(queries) == 2 and queries[-1]["LANG"] == "ADQL"
    assert queries[-1]["QUERY"].startswith("SELECT run, rerun, camcol, field")
    pairs = {(int(r["camcol"]), int(r["field"])) for r in fields}
    assert (int(sdss.catalog["camcol"][i]), int(sdss.catalog["field"][i])) in pairs


def test_timeouts_are_retried_and_survived(sdss, monkeypatch):
    """The first request of every URL times out (injected client-side); retries succeed."""
    import requests

    real_get = _http.get
    seen = Counter()

    def flaky_get(url, params=None):
        key = (url, tuple(sorted((params or {}).items())))
        seen[key] += 1
        if seen[key] == 1:
            raise requests.Timeout("injected timeout")
        return real_get(url, params)

    monkeypatch.setattr(_http, "get", flaky_get)
    coords, _ = _galaxies(sdss, 2, camcol=3)
    jpeg = fetch_cutouts(coords, source="jpeg", scale=SCALE, size=32)
    frames = fetch_cutouts(coords, source="frames", scale=SCALE, size=32)
    assert list(jpeg.flags) == list(frames.flags) == ["", ""]
    assert seen and set(seen.values()) == {2}  # each URL: one timeout, one success


def test_mirror_set_in_conf_alone_serves_every_request(sdss):
    """Regression: a mirror set only in ``astro_metallicity.conf`` is used for the SQL and
    cross-id look-ups too (they went through astroquery's own ``skyserver_baseurl``)."""
    import astroquery.sdss

    from astro_metallicity.train import query_training_catalog

    dead = "http://127.0.0.1:9"
    coords, idx = _galaxies(sdss, 3)
    with astroquery.sdss.conf.set_temp("skyserver_baseurl", dead), \
            astroquery.sdss.conf.set_temp("sas_baseurl", dead + "/sas"), \
            conf.set_temp("max_retries", 0):
        before = len(sdss.requests)
        frames = fetch_cutouts(coords, source="frames", scale=SCALE, size=32)
        jpeg = fetch_cutouts(coords, source="jpeg", size=32)  # adaptive scale: cross-id
        catalog = query_training_catalog(top=3)
        served = [path for _, path in sdss.requests[before:]]
        # astroquery's own setting is back once the calls are done
        assert astroquery.sdss.conf.skyserver_baseurl == dead
    assert list(frames.flags) == list(jpeg.flags) == ["", "", ""]
    r90 = sdss.catalog["petroR90_r"][idx].to_value(u.arcsec)
    np.testing.assert_allclose(jpeg.scales.value, 2 * r90 / (0.396 * 32), rtol=1e-4)
    assert 0 < len(catalog) <= 3
    assert set(np.asarray(catalog["objID"])) <= set(np.asarray(sdss.catalog["objid"]))
    assert catalog.meta["skyserver"] == sdss.url
    assert any("FROM+Field" in path for path in served)
    assert any(path.lower().startswith("/dr17/en/tools/search/x_results") for path in served)


def test_astroquery_urls_are_shared_by_threads_and_restored(sdss):
    """Overlapping blocks on many threads leave astroquery's setting as they found it."""
    import threading

    import astroquery.sdss

    before = astroquery.sdss.conf.skyserver_baseurl
    barrier = threading.Barrier(4)
    seen = []

    def use():
        with _http.astroquery_sdss() as urls:
            barrier.wait(timeout=10)  # all four inside at once
            seen.append((urls.skyserver, astroquery.sdss.conf.skyserver_baseurl))
            barrier.wait(timeout=10)

    with astroquery.sdss.conf.set_temp("skyserver_baseurl", "http://127.0.0.1:9"):
        threads = [threading.Thread(target=use) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert astroquery.sdss.conf.skyserver_baseurl == "http://127.0.0.1:9"
    assert seen == [(sdss.url, sdss.url)] * 4
    assert astroquery.sdss.conf.skyserver_baseurl == before


@pytest.mark.parametrize("status, retried", [(408, True), (429, True), (500, True),
                                             (503, True), (400, False), (404, False)])
def test_http_status_check(status, retried):
    error = _http._Retryable if retried else FetchError
    with pytest.raises(error, match=f"^HTTP {status}$"):
        _http.raise_for_status(status)
    _http.raise_for_status(200)  # success passes


def test_rejected_sql_is_an_error_at_once(sdss):
    """SkyServer answers a bad query with status 200 and an error text: not retried."""
    before = len(sdss.requests)
    with pytest.raises(FetchError, match="SQL failed: .*NoSuchTable"):
        _sdss.query_sql("SELECT run FROM NoSuchTable")
    assert len(sdss.requests) - before == 1


def test_astroquery_urls_nested_conflict_is_refused_not_a_hang(sdss):
    """A thread inside a block that asks for other URLs gets an error instead of waiting on
    itself; the outer block still restores astroquery's setting, also after an exception."""
    import astroquery.sdss

    before = astroquery.sdss.conf.skyserver_baseurl
    with pytest.raises(ZeroDivisionError):
        with _http.astroquery_sdss() as urls:
            assert astroquery.sdss.conf.skyserver_baseurl == urls.skyserver == sdss.url
            with _http.astroquery_sdss():  # same URLs: nesting is fine
                pass
            with conf.set_temp("skyserver_baseurl", "http://127.0.0.1:9"), \
                    pytest.raises(RuntimeError, match="already pointed at other SDSS servers"):
                with _http.astroquery_sdss():
                    pass
            1 / 0
    assert astroquery.sdss.conf.skyserver_baseurl == before
    with _http.astroquery_sdss():  # nothing left held
        assert astroquery.sdss.conf.skyserver_baseurl == sdss.url


def _straightforward_cutout(position, scale, size, fields):
    """One target's cutout the plain way: the fields frames_for_target chooses, their frames
    read with their headers, each band through reproject_interp (reproject_band), the
    per-cutout background and the composite."""
    from astro_metallicity.preprocess import (cutout_wcs, gri_composite, reproject_band,
                                              subtract_background)

    idents = [(int(r["run"]), int(r["camcol"]), int(r["field"])) for r in fields]
    # the sky has 3 fields (9 frames): all stay in memory, so a frame is one array
    field_of = {id(_sdss.load_frame(*ident, "r")[0]): ident for ident in idents}
    chosen, complete = _fields.frames_for_target(position, scale, size, fields)
    assert complete
    chosen = [field_of[id(data)] for data, _ in chosen["r"]]
    f = max(1, int(np.ceil(scale / 0.396 - 0.25)))
    out_wcs = cutout_wcs(position, size * f, scale / f * u.arcsec / u.pix)
    bands = {}
    for band in "gri":
        frames = [_sdss.load_frame(*ident, band) for ident in chosen]  # (data, header)
        image, cov = reproject_band(frames, out_wcs, (size * f, size * f))
        image = image.reshape(size, f, size, f).mean(axis=(1, 3))
        cov = cov.reshape(size, f, size, f).mean(axis=(1, 3))
        bands[band], _ = subtract_background(image, coverage=cov)
    return gri_composite(bands["g"], bands["r"], bands["i"]), len(chosen)


def test_fast_frames_route_equals_the_straightforward_computation(sdss, pipeline_model):
    """The frames route (targets ordered by field, frames decompressed and their WCS parsed
    once, the output grid transformed once per cutout) gives the cutouts and predictions of
    the plain per-target computation; a mosaic target included."""
    from astro_metallicity import predict_metallicity_from_images

    size = 64
    coords, _ = _galaxies(sdss, 3, camcol=1)  # the fields of the edge galaxy's mosaic
    edge, edge_scale = _edge_galaxy(sdss, size)
    coords = SkyCoord([*coords, edge])
    scales = np.array([0.3, 0.9, 0.2, edge_scale])  # the 0.9 cutout is supersampled (f = 3)
    fast = fetch_cutouts(coords, source="frames", scale=scales * u.arcsec / u.pix, size=size)
    assert list(fast.flags) == [""] * 4
    table = _sdss.query_fields(0.0, 360.0, -90.0, 90.0)
    assert len(table) == 3
    plain, n_fields = zip(*[_straightforward_cutout(c, s, size, table)
                            for c, s in zip(coords, scales)])
    plain = np.stack(plain)
    assert n_fields[-1] == 2  # the edge galaxy's cutout is a mosaic
    diff = np.abs(fast.images.astype(int) - plain.astype(int))
    assert diff.max() <= 1 and diff.mean() < 1e-3
    got = predict_metallicity_from_images(fast.images, model=pipeline_model)["metallicity"]
    want = predict_metallicity_from_images(plain, model=pipeline_model)["metallicity"]
    assert np.max(np.abs(got - want)).to_value(u.dex) <= 1e-4


def test_frames_route_decompresses_each_frame_once(sdss, monkeypatch):
    """Targets in random order over three fields, four download threads: every frame is
    downloaded and decompressed once (targets are run field by field, and threads asking
    for a frame another thread is loading wait for it instead of decompressing it again)."""
    coords, _ = _galaxies(sdss, 24)
    coords = coords[np.random.default_rng(3).permutation(len(coords))]
    parsed = Counter()
    real_parse = _sdss.parse_frame

    def parse_frame(content, band=None):
        data, header = real_parse(content, band)
        parsed[(header["RUN"], header["CAMCOL"], header["FIELD"], band)] += 1
        return data, header

    monkeypatch.setattr(_sdss, "parse_frame", parse_frame)
    before = len(sdss.requests)
    with conf.set_temp("max_workers", 4):
        result = fetch_cutouts(coords, source="frames", scale=SCALE, size=32)
    assert np.all(result.good)
    downloads = _frame_downloads(sdss.requests[before:])
    assert set(downloads.values()) == {1}
    assert len(parsed) == len(downloads) >= 6
    assert set(parsed.values()) == {1}


def test_frames_in_memory_bounds_the_frame_memo(sdss, monkeypatch):
    """conf.frames_in_memory is how many decompressed frames are kept: with 1, a target
    list over several fields decompresses some frame again (the frames of a field and its
    neighbours do not fit), and the memo never holds more than one."""
    # two galaxies in each of two fields: at least six frames, each target needing several
    cat = sdss.catalog
    field_of = list(zip(np.asarray(cat["camcol"]), np.asarray(cat["field"])))
    fields = list(dict.fromkeys(field_of))[:2]
    idx = [i for f in fields for i in [j for j, g in enumerate(field_of) if g == f][:2]]
    coords = SkyCoord(cat["ra"][idx], cat["dec"][idx])
    parsed = Counter()
    real_parse = _sdss.parse_frame

    def parse_frame(content, band=None):
        data, header = real_parse(content, band)
        parsed[(header["RUN"], header["CAMCOL"], header["FIELD"], band)] += 1
        assert len(_sdss._frames._values) <= 1
        return data, header

    monkeypatch.setattr(_sdss, "parse_frame", parse_frame)
    with conf.set_temp("max_workers", 1), conf.set_temp("frames_in_memory", 1):
        result = fetch_cutouts(coords, source="frames", scale=SCALE, size=32)
    assert np.all(result.good)
    assert len(parsed) >= 6 and max(parsed.values()) > 1
    assert len(_sdss._frames._values) == 1


def test_sky_order_puts_neighbours_together():
    """Targets of one 0.5 deg cell follow each other (by RA), cells row by row in Dec;
    ties keep their input order. predict_metallicity chunks tables in this order."""
    ra = np.array([150.30, 10.10, 150.10, 10.40, 150.20, 10.10, 200.0])
    dec = np.array([2.10, -0.20, 2.20, -0.30, 2.40, -0.20, 2.30])
    order = _fields.sky_order(SkyCoord(ra, dec, unit="deg"))
    assert list(order) == [1, 5, 3, 2, 4, 0, 6]
    assert sorted(order) == list(range(7))
    assert _fields.sky_order(SkyCoord([], [], unit="deg")).size == 0


def test_astroquery_writes_no_disk_cache(sdss, tmp_path, monkeypatch):
    """The cross-id's own look-ups (astroquery fetches the column lists by itself) leave no
    astroquery pickle behind: Dask workers on one machine shared those files, and one worker
    reading a pickle another was writing failed the row with an EOFError."""
    from astroquery.sdss import field_names

    monkeypatch.setattr(_sdss._SDSS, "_cache_location", tmp_path)
    # astroquery keeps the column lists in memory too: forget them so they are fetched again
    monkeypatch.setattr(field_names, "_cached_table_fields", {})
    c = sdss.catalog[:3]
    r90, flags = _sdss.lookup_petro_r90(SkyCoord(c["ra"], c["dec"]))
    assert list(flags) == ["", "", ""]
    np.testing.assert_allclose(r90.to_value(u.arcsec), c["petroR90_r"].to_value(u.arcsec),
                               rtol=1e-4)
    assert list(tmp_path.rglob("*.pickle")) == []
