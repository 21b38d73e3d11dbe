"""Simulated SDSS frames: PSF, flux, noise, WCS and file layout (astro_metallicity.mock)."""

import math

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS

from astro_metallicity.mock import MockSky
from astro_metallicity.mock.render import NMGY_PER_COUNT, moffat_kernel


@pytest.fixture(scope="module")
def sky():
    # One field, no stars, so that galaxies are easy to isolate.
    return MockSky(40, seed=21, stars_per_field=0)


@pytest.fixture(scope="module")
def star_sky():
    return MockSky(5, seed=22, stars_per_field=40, noise=False)


def _half_max_diameter(image, x0, y0):
    """FWHM from the radius where the azimuthally averaged profile falls to half its peak."""
    yy, xx = np.indices(image.shape)
    r = np.hypot(xx - x0, yy - y0).ravel()
    v = image.ravel()
    bins = np.arange(0, 15, 0.25)
    idx = np.digitize(r, bins)
    prof = np.array([v[idx == k].mean() if np.any(idx == k) else np.nan for k in range(1, len(bins))])
    centres = 0.5 * (bins[1:] + bins[:-1])
    ok = np.isfinite(prof)
    prof, centres = prof[ok], centres[ok]
    peak = image[round(y0), round(x0)]
    below = np.flatnonzero(prof < peak / 2)[0]
    # linear interpolation between the last point above and the first below half max
    r1, r2, p1, p2 = centres[below - 1], centres[below], prof[below - 1], prof[below]
    return 2 * (r1 + (p1 - peak / 2) / (p1 - p2) * (r2 - r1))


@pytest.mark.parametrize("fwhm", [2.5, 3.5, 5.0])
def test_psf_kernel_fwhm(fwhm):
    k = moffat_kernel(fwhm, size=61, oversample=9)
    assert k.sum() == pytest.approx(1.0)
    # the peak pixel average lowers the apparent maximum a little; use a finely sampled kernel
    fine = moffat_kernel(fwhm * 5, size=301, oversample=1)
    assert _half_max_diameter(fine, 150, 150) / 5 == pytest.approx(fwhm, rel=0.03)


def test_star_fwhm_in_frame(star_sky):
    """Stars in a rendered (noise-free) frame have the configured seeing."""
    s = star_sky
    fp = s.footprint
    run, camcol, field = fp.run, fp.camcol[0], fp.field[0]
    img = s.frame(run, camcol, field, "r")
    wcs = s.wcs(run, camcol, field, "r")
    x, y = wcs.wcs_world2pix(s.stars["ra"], s.stars["dec"], 0)
    expected = s.fwhm(run, camcol, field, "r") / 0.396
    measured = []
    for j in np.argsort(s.stars["r"]):
        if not (30 < x[j] < 2018 and 30 < y[j] < 1459) or s.stars["r"][j] > 19:
            continue
        others = np.hypot(x - x[j], y - y[j])
        if np.sort(others)[1] < 40:
            continue
        ix, iy = round(x[j]), round(y[j])
        stamp = np.asarray(img[iy - 20:iy + 21, ix - 20:ix + 21], dtype=float)
        # broadening of the half-max by pixel sampling is < 3 per cent for FWHM > 2.5 px
        measured.append(_half_max_diameter(stamp, 20 + x[j] - ix, 20 + y[j] - iy))
        if len(measured) == 5:
            break
    assert len(measured) >= 3
    assert np.median(measured) == pytest.approx(expected, rel=0.08)


def test_galaxy_flux_matches_catalog(sky):
    """Total flux around isolated galaxies equals the catalogue flux within the noise."""
    c = sky.catalog
    fp = sky.footprint
    run, camcol, field = fp.run, fp.camcol[0], fp.field[0]
    for band in "gri":
        img = np.asarray(sky.frame(run, camcol, field, band), dtype=float)
        wcs = sky.wcs(run, camcol, field, band)
        x, y = wcs.wcs_world2pix(c["ra"].value, c["dec"].value, 0)
        sigma_pix = np.std(img[:200, :200][np.abs(img[:200, :200]) < 5 * np.std(img[:200, :200])])
        checked = 0
        for j in range(len(c)):
            radius = 6 * c["r50_disk"][j].to_value(u.arcsec) / 0.396 + 4 * sky.fwhm(run, camcol, field, band) / 0.396 + 3
            d = np.hypot(x - x[j], y - y[j])
            if np.sort(d)[1] < 2.5 * radius or not (radius < x[j] < 2047 - radius and radius < y[j] < 1488 - radius):
                continue
            ix, iy, h = int(x[j]), int(y[j]), int(radius) + 2
            yy, xx = np.mgrid[iy - h:iy + h + 1, ix - h:ix + h + 1]
            ap = np.hypot(xx - x[j], yy - y[j]) < radius
            total = img[iy - h:iy + h + 1, ix - h:ix + h + 1][ap].sum()
            expected = 10 ** (-0.4 * (c[f"modelMag_{band}"][j].value - 22.5))
            # sky noise + Poisson noise of the galaxy itself
            err = math.sqrt(ap.sum() * sigma_pix ** 2 + expected * NMGY_PER_COUNT[band] / 4.0)
            assert abs(total - expected) < 5 * err, (band, j, total, expected, err)
            checked += 1
        assert checked >= 5


def test_sky_noise_level(sky):
    """Background noise equals the Poisson + read noise of the sky of a 53.9 s exposure."""
    fp = sky.footprint
    run, camcol, field = fp.run, fp.camcol[0], fp.field[0]
    for band in "gri":
        img = np.asarray(sky.frame(run, camcol, field, band), dtype=float)
        corner = img[:300, :300]
        clipped = corner[np.abs(corner - np.median(corner)) < 4 * corner.std()]
        counts = sky.sky_level(run, camcol, field, band) / NMGY_PER_COUNT[band]
        from astro_metallicity.mock.render import GAIN, READ_NOISE

        expected = math.sqrt(counts / GAIN[band] + READ_NOISE[band] ** 2) * NMGY_PER_COUNT[band]
        assert np.median(clipped) == pytest.approx(0.0, abs=0.2 * expected)
        assert clipped.std() == pytest.approx(expected, rel=0.1)


def test_band_offsets_and_centroids():
    """g, r, i WCS differ by sub-pixel offsets, and each band's WCS puts galaxies at their light."""
    sky = MockSky(40, seed=21, stars_per_field=0, noise=False)
    c = sky.catalog
    fp = sky.footprint
    run, camcol, field = fp.run, fp.camcol[0], fp.field[0]
    pos = {}
    for band in "gri":
        wcs = sky.wcs(run, camcol, field, band)
        pos[band] = np.array(wcs.wcs_world2pix(c["ra"].value, c["dec"].value, 0))
    shift = max(np.abs(pos["g"] - pos["r"]).max(), np.abs(pos["i"] - pos["r"]).max())
    assert 0.05 < shift < 1.0
    checked = 0
    for band in "gri":
        img = np.asarray(sky.frame(run, camcol, field, band), dtype=float)
        for j in np.argsort(c["r50_disk"].value)[:10]:
            x, y = pos[band][:, j]
            d = np.hypot(*(pos[band] - pos[band][:, j:j + 1]))
            if np.sort(d)[1] < 80 or not (40 < x < 2008 and 40 < y < 1449):
                continue
            ix, iy = round(x), round(y)
            st = img[iy - 30:iy + 31, ix - 30:ix + 31]
            yy, xx = np.mgrid[-30:31, -30:31]
            cx, cy = (st * xx).sum() / st.sum() + ix, (st * yy).sum() / st.sum() + iy
            # 0.1 px: asymmetric spiral arms (m = 3) move the light centroid slightly
            assert abs(cx - x) < 0.1 and abs(cy - y) < 0.1
            checked += 1
    assert checked >= 3


def test_frame_hdulist_layout(sky):
    fp = sky.footprint
    run, camcol, field = fp.run, fp.camcol[0], fp.field[0]
    hdul = fits.HDUList.fromstring(__import__("bz2").decompress(sky.frame_file(run, camcol, field, "i")))
    assert len(hdul) == 4
    h = hdul[0].header
    assert hdul[0].data.shape == (1489, 2048) and hdul[0].data.dtype.kind == "f"
    assert h["FILTER"].strip() == "i" and h["RUN"] == run and h["CAMCOL"] == camcol and h["FIELD"] == field
    assert h["BUNIT"] == "nanomaggy" and h["NMGY"] > 0
    assert h["CTYPE1"] == "RA---TAN" and h["CTYPE2"] == "DEC--TAN"
    assert WCS(h).pixel_scale_matrix.std() > 0
    scale = np.sqrt(abs(np.linalg.det(WCS(h).pixel_scale_matrix))) * 3600
    assert scale == pytest.approx(0.396, rel=1e-6)
    assert hdul[1].data.shape == (2048,)
    assert hdul[2].columns.names == ["ALLSKY", "XINTERP", "YINTERP"]
    assert hdul[2].data["ALLSKY"].shape == (1, 192, 256)
    assert len(hdul[3].columns.names) == 31 and hdul[3].data["FIELD"][0] == field


def test_frame_layout_matches_real_sdss(sky, shared_data):
    """Structure of a simulated frame equals that of the real DR17 frame in ../shared."""
    real = fits.open(shared_data / "sdss-frames" / "frame-r-003918-3-0213.fits.bz2")
    fp = sky.footprint
    mock = sky.frame_hdulist(fp.run, fp.camcol[0], fp.field[0], "r")
    assert len(mock) == len(real)
    assert mock[0].data.shape == real[0].data.shape and mock[0].data.dtype == np.float32
    assert mock[1].data.shape == real[1].data.shape
    for k in (2, 3):
        assert mock[k].columns.names == real[k].columns.names
        assert [c.format for c in mock[k].columns] == [c.format for c in real[k].columns]
    for key in ("FILTER", "RUN", "CAMCOL", "NMGY", "BUNIT", "EXPTIME", "CTYPE1", "CD1_2", "RERUN"):
        assert key in mock[0].header and key in real[0].header
    # noise of the real frame and of the simulated one agree within 30 per cent
    sig = []
    for d in (real[0].data, mock[0].data):
        corner = np.asarray(d[:400, :400], dtype=float)
        sig.append(np.std(corner[np.abs(corner) < 4 * np.std(corner)]))
    assert sig[1] == pytest.approx(sig[0], rel=0.3)


def test_region_render_is_identical_to_frame(sky):
    """ImgCutout renders only the pixels it needs; they equal the full frame's pixels."""
    fp = sky.footprint
    run, camcol, field = fp.run, fp.camcol[0], fp.field[0]
    full = sky.frame(run, camcol, field, "g")
    k = fp.index(camcol, field)
    for region in [(0, 77, 0, 50), (1000, 1133, 700, 901), (1948, 2048, 1400, 1489)]:
        part = sky._render(k, "g", region=region)
        np.testing.assert_array_equal(part, full[region[2]:region[3], region[0]:region[1]])
    with pytest.raises(ValueError, match="region must lie within"):
        sky._render(k, "g", region=(0, 3000, 0, 10))
    # a cutout from a sky whose frames are not cached equals one from cached frames
    c = sky.catalog
    fresh = MockSky(catalog=c, seed=21, stars_per_field=0)
    a = fresh.cutout(c["ra"][0].value, c["dec"][0].value, 0.25, 40, 30)
    fresh.frame(run, camcol, field, "g"), fresh.frame(run, camcol, field, "r"), fresh.frame(run, camcol, field, "i")
    b = fresh.cutout(c["ra"][0].value, c["dec"][0].value, 0.25, 40, 30)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a[0].shape == (30, 40)


def test_cutout_across_ra_zero():
    """A sky straddling RA 0/360 (Field raMin < 0) still yields cutouts of galaxies at RA ~ 359.9."""
    sky = MockSky(30, seed=23, stars_per_field=0, noise=False, ra0=0.0)
    c = sky.catalog
    assert sky.field_table()["raMin"].min() < 0
    ra = c["ra"].to_value(u.deg)
    assert np.all((ra >= 0) & (ra < 360))
    checked = 0
    for j in np.flatnonzero(ra > 180)[:2]:
        r = sky.cutout(ra[j], c["dec"][j].value, 0.396, 41, 41, bands="r")[0]
        # the galaxy is at the centre: the central pixel is well above zero, and the
        # summed flux is a sizeable part of the catalogue flux
        assert r[20, 20] > 0
        expected = 10 ** (-0.4 * (c["modelMag_r"][j].value - 22.5))
        assert 0.2 * expected < r.sum() <= 1.01 * expected
        # the same position written as a negative RA gives the same pixels
        # (to float32 rounding: ra - 360 loses a few bits of the coordinate)
        np.testing.assert_allclose(
            sky.cutout(ra[j] - 360.0, c["dec"][j].value, 0.396, 41, 41, bands="r")[0], r,
            rtol=1e-5, atol=1e-5 * r.max())
        jpeg = sky.cutout_jpeg(ra[j], c["dec"][j].value, scale=0.396, width=41, height=41)
        from io import BytesIO

        from PIL import Image

        assert np.asarray(Image.open(BytesIO(jpeg))).max() > 30
        checked += 1
    assert checked == 2


def test_frame_cache_is_bounded_and_per_sky():
    """Frames are cached up to ``max_cached_frames``; the caches die with their sky."""
    import gc
    import weakref

    sky = MockSky(3, seed=24, stars_per_field=0, noise=False, max_cached_frames=1)
    fp = sky.footprint
    ids = (fp.run, int(fp.camcol[0]), int(fp.field[0]))
    g = sky.frame(*ids, "g")
    assert sky.frame(*ids, "g") is g
    sky.frame(*ids, "r")  # evicts g
    again = sky.frame(*ids, "g")
    assert again is not g
    np.testing.assert_array_equal(again, g)
    ref = weakref.ref(sky)
    del sky
    gc.collect()
    assert ref() is None
