"""The same pipeline calls against the real SDSS (SkyServer and SAS).

Skipped by default; run with ``pytest --remote-data=any tests/remote`` (tox env
``test-remote``). The target is a bright galaxy in the real field whose frames
are in ``../shared/data/sdss-frames`` (run 3918, camcol 3, field 213).
"""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from astro_metallicity import conf
from astro_metallicity.acquire import _sdss, fetch_cutouts

pytestmark = pytest.mark.remote_data

# A galaxy in frame 003918-3-0213 (its brightest extended object).
TARGET = SkyCoord(229.58776, 42.76898, unit="deg")


@pytest.fixture(autouse=True)
def _real_sdss():
    with conf.set_temp("skyserver_baseurl", "https://skyserver.sdss.org"), \
            conf.set_temp("sas_baseurl", "https://data.sdss.org/sas"), \
            conf.set_temp("data_release", 17), conf.set_temp("max_retries", 3):
        yield


def test_field_lookup_finds_the_known_field():
    fields = _sdss.query_fields(TARGET.ra.deg - 0.01, TARGET.ra.deg + 0.01,
                                TARGET.dec.deg - 0.01, TARGET.dec.deg + 0.01)
    ids = {(int(r["run"]), int(r["camcol"]), int(r["field"])) for r in fields}
    assert (3918, 3, 213) in ids


def test_downloaded_frame_matches_the_shared_copy(shared_data):
    from astropy.io import fits

    data, header = _sdss.load_frame(3918, 3, 213, "r")
    assert header["FILTER"].strip() == "r"
    local = fits.getdata(shared_data / "sdss-frames" / "frame-r-003918-3-0213.fits.bz2")
    np.testing.assert_array_equal(data, local)


def test_petrosian_radius_lookup():
    r90, flags = _sdss.lookup_petro_r90(SkyCoord([TARGET.ra], [TARGET.dec]))
    assert list(flags) == [""]
    assert 1 * u.arcsec < r90[0] < 60 * u.arcsec


def test_both_routes_give_similar_cutouts():
    coords = SkyCoord([TARGET.ra, TARGET.ra + 1 * u.deg], [TARGET.dec, -80 * u.deg])
    frames = fetch_cutouts(coords[:1], source="frames", size=128)
    jpeg = fetch_cutouts(coords[:1], source="jpeg", size=128)
    assert list(frames.flags) == list(jpeg.flags) == [""]
    np.testing.assert_allclose(frames.scales, jpeg.scales)
    assert frames.images[0, 56:72, 56:72].mean() > frames.images[0, :16, :16].mean() + 20
    diff = np.abs(frames.images.astype(float) - jpeg.images.astype(float)).mean()
    assert diff < 20.0
    outside = fetch_cutouts(coords[1:], source="frames", size=64, scale=0.4 * u.arcsec / u.pix)
    assert outside.flags[0] == "outside_footprint"


def test_predict_with_bundled_model():
    from astro_metallicity import predict_metallicity
    from astro_metallicity.model import bundled_model_path

    if not bundled_model_path().is_file():
        pytest.skip("bundled model not installed")
    result = predict_metallicity(Table({"ra": [TARGET.ra.deg, np.nan], "dec": [TARGET.dec.deg, 0]}))
    assert result["flag"][0] == "ok" and result["flag"][1].startswith("bad_coordinates")
    assert 7.5 * u.dex < result["metallicity"][0].unmasked < 9.8 * u.dex
