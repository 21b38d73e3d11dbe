"""Appearance presets of the simulated sky: "classic" unchanged, "sdss" as documented."""

import hashlib
import io

import numpy as np
import pytest
from astropy import units as u

from astro_metallicity.mock import MockSky, simulate_galaxies
from astro_metallicity.mock import appearance as app
from astro_metallicity.relations import tremonti_mzr

# sha256 of the classic outputs, computed with the committed code (HEAD 3ac8d3b, before the
# appearance presets existed) in a clean copy of the package. The bundled model was trained on
# this sky: the default must stay byte-identical.
CLASSIC_CATALOG_SHA256 = "d52fa5123f7cc9536e4685065921fbf85a2f746d16e00f400bd488b2f0a0fc6f"
CLASSIC_JPEG_SHA256 = "b7fb737e3a53c3fd9b14c7347001c36ebcf61a78fb35c8ca8cdb258c87ce0243"
CLASSIC_CUTOUT_SHA256 = "300cbdbf14caf1e24ef2fb522916fc68f09af6ab8d4bf9e24835433db43748e2"


def _catalog_sha256(cat):
    h = hashlib.sha256()
    for name in cat.colnames:
        value = cat[name]
        h.update(name.encode())
        h.update(np.ascontiguousarray(getattr(value, "value", value)).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def sdss_catalog():
    return simulate_galaxies(4000, seed=31, appearance="sdss")


@pytest.fixture(scope="module")
def classic_catalog():
    return simulate_galaxies(4000, seed=31)


@pytest.fixture(scope="module")
def sdss_sky():
    return MockSky(40, seed=32, appearance="sdss")


def _scale(cat, j):
    return 2 * cat["petroR90_r"][j].to_value(u.arcsec) / (0.396 * 128)


def test_classic_catalogue_is_unchanged():
    cat = simulate_galaxies(300, seed=5)
    assert _catalog_sha256(cat) == CLASSIC_CATALOG_SHA256
    assert _catalog_sha256(simulate_galaxies(300, seed=5, appearance="classic")) == CLASSIC_CATALOG_SHA256
    assert "appearance" not in cat.meta


def test_classic_cutouts_are_unchanged():
    sky = MockSky(60, seed=3)
    assert sky.appearance == "classic"
    c = sky.catalog
    data = sky.cutout_jpeg(c["ra"][0].value, c["dec"][0].value, scale=0.3, width=64, height=64)
    assert hashlib.sha256(data).hexdigest() == CLASSIC_JPEG_SHA256
    r = sky.cutout(c["ra"][1].value, c["dec"][1].value, 0.396, 48, 48, bands="r")[0]
    assert hashlib.sha256(r.tobytes()).hexdigest() == CLASSIC_CUTOUT_SHA256


def test_invalid_appearance():
    with pytest.raises(ValueError, match="appearance must be one of"):
        simulate_galaxies(10, seed=1, appearance="hubble")
    with pytest.raises(ValueError, match="appearance must be one of"):
        MockSky(10, seed=1, appearance="realistic")


def test_sdss_catalogue_columns_and_meta(sdss_catalog, sdss_sky):
    for name in ("lopsided_amp", "lopsided_phase", "clump_n", "clump_frac", "clump_seed",
                 "light_offset_ra", "light_offset_dec"):
        assert name in sdss_catalog.colnames
    assert sdss_catalog.meta["appearance"] == "sdss"
    # a sky made from an "sdss" catalogue renders it as "sdss"
    assert MockSky(catalog=sdss_sky.catalog).appearance == "sdss"
    assert len(sdss_sky.stars["ra"]) > len(MockSky(40, seed=32).stars["ra"])


def test_sdss_thin_disks_and_inclinations(sdss_catalog, classic_catalog):
    q = np.asarray(sdss_catalog["axis_ratio"])
    assert q.min() >= app.SDSS_DISK_THICKNESS - 1e-9
    assert q.min() < app.SDSS_DISK_THICKNESS + 0.02  # edge-on thin disks are there
    assert np.mean(q < 0.3) > np.mean(np.asarray(classic_catalog["axis_ratio"]) < 0.3)


def test_sdss_structure_distributions(sdss_catalog):
    c = sdss_catalog
    a1 = np.asarray(c["lopsided_amp"])
    assert np.mean(a1) == pytest.approx(app.SDSS_LOPSIDED_MEAN, rel=0.1)
    assert 0.1 < np.mean(a1 > 0.2) < 0.3  # ~20-30 % of disks strongly lopsided (Zaritsky & Rix 1997)
    m = np.asarray(c["arm_m"])
    assert np.mean(m % 2 == 1) > 0.35  # odd-numbered arms: not symmetric under 180 deg rotation
    for name in ("light_offset_ra", "light_offset_dec"):
        off = c[name].to_value(u.arcsec)
        assert np.std(off) == pytest.approx(app.SDSS_POSITION_SCATTER, rel=0.1)
        assert abs(np.mean(off)) < 0.01
    # clumps brighter above the star-forming sequence
    dssfr = np.asarray(c["sfr_tot_p50"].value - c["logm_true"].value)
    dssfr -= -0.35 * (c["logm_true"].value - 10) - 9.83
    assert np.corrcoef(dssfr, np.asarray(c["clump_frac"]))[0, 1] > 0.3


def test_sdss_bulges_redder_than_disks(sdss_catalog, classic_catalog):
    def bulge_colour_gap(cat):
        fg, fi = np.asarray(cat["bulge_frac_g"]), np.asarray(cat["bulge_frac_i"])
        ok = (fg > 0.05) & (fg < 0.95)
        return np.median(fi[ok] / fg[ok])
    assert bulge_colour_gap(sdss_catalog) > bulge_colour_gap(classic_catalog) > 1.0


def test_sdss_metallicity_still_follows_relations(sdss_catalog, classic_catalog):
    for cat in (sdss_catalog, classic_catalog):
        ok = cat["oh_p50"].value > 0
        logm = cat["logm_true"].value[ok]
        oh = cat["oh_p50"].value[ok]
        fit = (logm > 8.5) & (logm < 11.0)
        resid = oh[fit] - tremonti_mzr(logm[fit])
        assert abs(np.median(resid)) < 0.03
        assert np.corrcoef(logm, oh)[0, 1] > 0.6
    # the metal-poor end of the labels is populated
    oh_s = sdss_catalog["oh_p50"].value
    oh_c = classic_catalog["oh_p50"].value
    assert np.mean(oh_s[oh_s > 0] < 8.5) > np.mean(oh_c[oh_c > 0] < 8.5)


def test_sdss_light_is_offset_from_catalogue_position():
    sky = MockSky(20, seed=33, appearance="sdss", stars_per_field=0, noise=False)
    c = sky.catalog
    offsets, expected = [], []
    for j in range(8):
        r = sky.cutout(c["ra"][j].value, c["dec"][j].value, 0.396, 65, 65, bands="r")[0].astype(float)
        yy, xx = np.mgrid[0:65, 0:65] - 32.0
        w = np.clip(r, 0, None) * (np.hypot(xx, yy) < 12)
        # east is to the left (-x), north up (+y)
        offsets.append((-(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()))
        expected.append((c["light_offset_ra"][j].to_value(u.arcsec) / 0.396,
                         c["light_offset_dec"][j].to_value(u.arcsec) / 0.396))
    offsets, expected = np.array(offsets), np.array(expected)
    # centroids follow the catalogue offsets (lopsidedness and clumps add to them)
    assert np.corrcoef(offsets.ravel(), expected.ravel())[0, 1] > 0.5
    assert np.abs(offsets).max() > 0.05


def test_sdss_jpeg_sky_and_compression(sdss_sky):
    from PIL import Image

    c = sdss_sky.catalog
    border = np.ones((128, 128), bool)
    border[16:-16, 16:-16] = False
    means, black = [], []
    for j in range(6):
        data = sdss_sky.cutout_jpeg(c["ra"][j].value, c["dec"][j].value, scale=_scale(c, j))
        img = Image.open(io.BytesIO(data))
        assert img.quantization[0][0] == 3  # the IJG quality-92 luminance table
        x = np.asarray(img.convert("RGB"), dtype=float)
        means.append(np.median(x[border], axis=0))
        black.append(np.mean(x[border].max(axis=1) == 0))
    means = np.median(means, axis=0)
    # real SDSS ImgCutout border (sky) medians ~ R 4.6, G 2.8, B 2.9 (docs/realism.rst)
    assert means[0] == pytest.approx(4.6, abs=1.5)
    assert means[1] == pytest.approx(2.8, abs=1.2)
    assert means[2] == pytest.approx(2.9, abs=1.2)
    assert np.median(black) < 0.08


def test_server_and_cli_accept_appearance(monkeypatch):
    from astro_metallicity import mock
    from astro_metallicity.cli import main
    from astro_metallicity.mock import MockSDSS

    assert MockSDSS(n_galaxies=20, seed=2, appearance="sdss").sky.appearance == "sdss"
    assert MockSDSS(n_galaxies=20, seed=2).sky.appearance == "classic"
    seen = {}
    monkeypatch.setattr(mock, "serve", lambda **kwargs: seen.update(kwargs))
    assert main(["mock-sdss", "--galaxies", "20", "--appearance", "sdss"]) == 0
    assert seen["appearance"] == "sdss"
