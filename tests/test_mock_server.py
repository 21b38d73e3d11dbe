"""The mock SDSS server, exercised with the unmodified astroquery client."""

import io
import time

import numpy as np
import pytest
import requests
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from astro_metallicity.mock import Faults, MockSDSS


@pytest.fixture(scope="module")
def mock():
    with MockSDSS(n_galaxies=60, seed=31) as m:
        yield m


def _sdss():
    from astroquery.sdss import SDSS

    return SDSS


def test_conf_is_set_and_restored():
    from astroquery.sdss import conf as aq_conf

    from astro_metallicity import conf

    before = (aq_conf.skyserver_baseurl, aq_conf.sas_baseurl, conf.skyserver_baseurl, conf.sas_baseurl)
    with MockSDSS(n_galaxies=5, seed=1) as m:
        assert aq_conf.skyserver_baseurl == conf.skyserver_baseurl == m.url
        assert aq_conf.sas_baseurl == conf.sas_baseurl == m.url + "/sas"
        assert m.url.startswith("http://127.0.0.1:")
    after = (aq_conf.skyserver_baseurl, aq_conf.sas_baseurl, conf.skyserver_baseurl, conf.sas_baseurl)
    assert before == after


def test_query_sql_training_query(mock):
    from astro_metallicity.train.catalog import training_catalog_sql

    result = _sdss().query_sql(training_catalog_sql(), cache=False)
    cat = mock.catalog
    passes = (cat["oh_p50"].value != -9999) & (cat["rChi2"] < 2)
    assert len(result) == passes.sum()
    assert set(np.asarray(result["objID"])) == set(np.asarray(cat["objid"][passes]))
    row = cat[np.flatnonzero(cat["objid"] == result["objID"][0])[0]]
    assert result["oh_p50"][0] == pytest.approx(row["oh_p50"].value, abs=1e-6)
    assert result["z"][0] == pytest.approx(row["z"], rel=1e-6)
    top = _sdss().query_sql(training_catalog_sql(top=7), cache=False)
    assert len(top) == 7


def test_field_lookup_sql(mock):
    from astro_metallicity.acquire._sdss import FIELD_SQL

    ra, dec = mock.catalog["ra"][3].value, mock.catalog["dec"][3].value
    d = 1 / 3600
    res = _sdss().query_sql(FIELD_SQL.format(ra1=ra - d, ra2=ra + d, dec1=dec - d, dec2=dec + d), cache=False)
    assert len(res) >= 1
    assert np.all((res["raMin"] < ra) & (res["raMax"] > ra) & (res["decMin"] < dec) & (res["decMax"] > dec))
    assert mock.catalog["field"][3] in list(res["field"])


def test_get_images_wcs_points_at_galaxy(mock, tmp_path, monkeypatch):
    import tempfile

    # astroquery's get_images(cache=False) leaves each downloaded frame in the temporary
    # directory (astropy's download_file); keep them in the test's own folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cat = mock.catalog
    j = int(np.argmin(cat["modelMag_r"].value))
    coord = SkyCoord(cat["ra"][j], cat["dec"][j])
    images = _sdss().get_images(coordinates=coord, band="gri", cache=False, show_progress=False)
    assert len(images) == 3
    assert [im[0].header["FILTER"].strip() for im in images] == ["g", "r", "i"]
    for im in images:
        data = im[0].data
        x, y = WCS(im[0].header).world_to_pixel(coord)
        ix, iy = round(float(x)), round(float(y))
        stamp = data[iy - 3:iy + 4, ix - 3:ix + 4]
        py, px = np.unravel_index(np.argmax(stamp), stamp.shape)
        assert abs(px - 3) <= 1 and abs(py - 3) <= 1  # the brightest pixel is at the galaxy
        assert stamp.max() > 10 * np.std(data[:100, :100])


def test_query_region_and_crossid(mock):
    cat = mock.catalog
    coord = SkyCoord(cat["ra"][10], cat["dec"][10])
    xid = _sdss().query_crossid(coord, photoobj_fields=["objID", "ra", "dec", "run", "camcol", "field"],
                                cache=False)
    assert len(xid) == 1 and xid["objID"][0] == cat["objid"][10]
    region = _sdss().query_region(coord, radius=2 * u.arcsec, cache=False)
    assert cat["objid"][10] in list(region["objid"])
    rect = _sdss().query_region(coord, width=5 * u.arcsec, cache=False)
    assert cat["objid"][10] in list(rect["objid"])
    # two positions, one in empty sky far from the footprint: one match only
    both = _sdss().query_crossid(SkyCoord([cat["ra"][10].value, 10.0], [cat["dec"][10].value, 40.0], unit="deg"),
                                 cache=False)
    assert len(both) == 1 and both["name"][0] == "obj_0"


def test_getjpeg_size_and_content(mock):
    cat = mock.catalog
    j = int(np.argmin(cat["modelMag_r"].value))
    url = f"{mock.url}/dr17/SkyServerWS/ImgCutout/getjpeg"
    r = requests.get(url, params={"ra": cat["ra"][j].value, "dec": cat["dec"][j].value,
                                  "scale": 0.3, "width": 96, "height": 64}, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    from PIL import Image

    im = Image.open(io.BytesIO(r.content))
    assert im.format == "JPEG" and im.mode == "RGB" and im.size == (96, 64)
    a = np.asarray(im, dtype=float).sum(axis=2)
    assert a[28:36, 44:52].mean() > 3 * a[:8, :8].mean() + 10  # galaxy at the centre
    bad = requests.get(url, params={"dec": 1.0}, timeout=30)
    assert bad.status_code == 400


def test_unknown_sql_gives_skyserver_error(mock):
    from astroquery.exceptions import RemoteServiceError

    with pytest.raises(RemoteServiceError, match="Invalid object name 'NoSuchTable'"):
        _sdss().query_sql("SELECT objID FROM NoSuchTable", cache=False)
    with pytest.raises(RemoteServiceError, match="Invalid column name 'bogus'"):
        _sdss().query_sql("SELECT G.bogus FROM Galaxy AS G", cache=False)
    with pytest.raises(RemoteServiceError, match="Incorrect syntax"):
        _sdss().query_sql("DROP TABLE Galaxy", cache=False)
    # the server is still alive
    assert len(_sdss().query_sql("SELECT TOP 2 objID FROM Galaxy", cache=False)) == 2


def test_request_log_counts_downloads(mock_sdss):
    n0 = len(mock_sdss.requests)
    res = _sdss().query_sql("SELECT TOP 1 objID FROM PhotoObj", cache=False)
    assert res["objID"][0] in mock_sdss.catalog["objid"]
    assert len(mock_sdss.requests) == n0 + 1
    method, path = mock_sdss.requests[-1]
    assert method == "GET" and path.startswith("/dr17/en/tools/search/x_results.aspx?")


def _statuses(m, n, path="/dr17/en/tools/search/x_results.aspx?cmd=SELECT+TOP+1+objID+FROM+Galaxy&format=csv"):
    out = []
    for k in range(n):
        try:
            r = requests.get(m.url + path + f"&k={k}", timeout=10)
            out.append(r.status_code if len(r.content) == int(r.headers["Content-Length"]) else "short")
        except requests.exceptions.ConnectionError:
            out.append("drop")
        except requests.exceptions.ChunkedEncodingError:
            out.append("short")
    return out


def test_faults_are_deterministic():
    faults = Faults(error_rate=0.3, drop_rate=0.1, truncate_rate=0.1, seed=4)
    with MockSDSS(n_galaxies=5, seed=1, faults=faults) as m:
        first = _statuses(m, 30)
    with MockSDSS(n_galaxies=5, seed=1, faults=faults) as m:
        second = _statuses(m, 30)
    assert first == second
    assert {500, 503, 200} <= set(first) and "drop" in first and "short" in first
    assert 10 < first.count(200) < 25
    with MockSDSS(n_galaxies=5, seed=1, faults=Faults(error_rate=0.3, seed=5)) as m:
        assert _statuses(m, 30) != first


def test_fail_first_latency_and_match():
    with MockSDSS(n_galaxies=5, seed=1, faults={"fail_first": 2, "latency": 0.2, "match": "getjpeg"}) as m:
        url = f"{m.url}/dr17/SkyServerWS/ImgCutout/getjpeg?ra=185&dec=1&scale=0.4&width=16&height=16"
        t0 = time.perf_counter()
        codes = [requests.get(url, timeout=10).status_code for _ in range(3)]
        assert time.perf_counter() - t0 > 0.55
        assert codes == [503, 503, 200]
        # faults only on matching paths
        assert _statuses(m, 2) == [200, 200]
    with pytest.raises(ValueError, match="error_rate must be a fraction"):
        Faults(error_rate=1.5)
    with pytest.raises(TypeError, match="faults must be a Faults"):
        MockSDSS(n_galaxies=5, faults="bad")


def test_serve_blocking_entry_point():
    """``serve()`` (behind ``astro-metallicity mock-sdss``) answers SkyServer queries until stopped."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"from astro_metallicity.mock import serve; serve(port={port}, n_galaxies=20, seed=2)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/dr17/en/tools/search/x_results.aspx"
        for _ in range(100):
            try:
                r = requests.get(url, params={"cmd": "SELECT COUNT(*) FROM Galaxy", "format": "csv"}, timeout=5)
                break
            except requests.exceptions.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("serve() did not start")
        assert r.status_code == 200 and r.text == "#Table1\nColumn1\n20\n"
        r = requests.get(url, params={"cmd": "SELECT objID FROM Galaxy", "format": "csv"}, timeout=5)
        assert r.text.startswith("#Table1\nobjID\n") and len(r.text.strip().splitlines()) == 22
        r = requests.get(url, params={"cmd": "SELECT objID FROM Nowhere", "format": "csv"}, timeout=5)
        assert r.status_code == 200 and r.text == "#Table1\nerror_message\nSQL error: Invalid object name 'Nowhere'.\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_url_prefix_identifies_the_sky():
    """Different skies get different URL prefixes, so URL-keyed caches never mix them."""
    a, b = MockSDSS(n_galaxies=5, seed=1), MockSDSS(n_galaxies=5, seed=1)
    c, d = MockSDSS(n_galaxies=5, seed=2), MockSDSS(n_galaxies=5, seed=1, galaxies_per_field=2)
    assert a.token == b.token
    assert len({a.token, c.token, d.token}) == 3
