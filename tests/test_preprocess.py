"""Tests of astro_metallicity.preprocess: reprojection, mosaics, background, cutouts."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from astro_metallicity.preprocess import (
    SDSS_JPEG_STRETCH,
    SDSS_PIXEL_SCALE,
    adaptive_scale,
    cutout_wcs,
    header_wcs,
    make_cutout,
    subtract_background,
)

PIX = 0.396 / 3600.0  # deg


def _frame_wcs(center, shape, angle_deg, crpix=None):
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [center.ra.deg, center.dec.deg]
    w.wcs.crpix = crpix if crpix is not None else [(nx + 1) / 2.0, (ny + 1) / 2.0]
    a = np.deg2rad(angle_deg)
    w.wcs.cd = PIX * np.array([[-np.cos(a), np.sin(a)], [np.sin(a), np.cos(a)]])
    return w


def _gaussian_frame(wcs, shape, source, flux, sigma_arcsec, background=0.0):
    """Frame (nanomaggies/pixel) with a circular Gaussian of total ``flux`` at ``source``."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    x0, y0 = wcs.world_to_pixel(source)
    sigma = sigma_arcsec / 0.396
    img = flux / (2 * np.pi * sigma ** 2) * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))
    return (img + background).astype(np.float32)


def _bands(frames):
    """Same frames in g, r (unchanged) and i, i 4x brighter than g after the stretch's band scales."""
    scales = SDSS_JPEG_STRETCH["band_scales"]
    factors = {"g": 0.5 * scales[1] / scales[0], "r": 1.0, "i": 2.0 * scales[1] / scales[2]}
    return {band: [(data * factors[band], wcs) for data, wcs in frames] for band in "gri"}


def test_adaptive_scale_follows_the_paper():
    # 2 * petroR90_r / (0.396 * 128): a 25.344" radius gives exactly 1"/px
    assert adaptive_scale(25.344 * u.arcsec).to_value(u.arcsec / u.pix) == pytest.approx(1.0)
    # a 64 px cutout keeps the same angular extent
    assert adaptive_scale(25.344 * u.arcsec, size=64).value == pytest.approx(2.0)
    assert adaptive_scale(0.1 * u.arcmin).value == pytest.approx(2 * 6.0 / (0.396 * 128))


def test_cutout_wcs_is_north_up_east_left():
    center = SkyCoord(150.0, 2.0, unit="deg")
    w = cutout_wcs(center, 64, 0.5 * u.arcsec / u.pix)
    x, y = w.world_to_pixel(center)
    assert (x, y) == pytest.approx((31.5, 31.5))
    east = center.spherical_offsets_by(5 * u.arcsec, 0 * u.arcsec)
    north = center.spherical_offsets_by(0 * u.arcsec, 5 * u.arcsec)
    assert w.world_to_pixel(east)[0] == pytest.approx(31.5 - 10, abs=1e-3)
    assert w.world_to_pixel(north)[1] == pytest.approx(31.5 + 10, abs=1e-3)
    with pytest.raises(ValueError, match="scale must be a positive"):
        cutout_wcs(center, 64, -1 * u.arcsec / u.pix)


def test_cutout_centred_and_flux_conserved_on_rotated_frame():
    center = SkyCoord(180.0, 0.5, unit="deg")
    shape = (300, 400)
    wcs = _frame_wcs(center, shape, angle_deg=30.0)
    galaxy = center.spherical_offsets_by(8 * u.arcsec, -5 * u.arcsec)
    flux = 500.0
    data = _gaussian_frame(wcs, shape, galaxy, flux, sigma_arcsec=2.0, background=0.05)
    for scale in (0.396, 0.9):  # native, and coarser (supersampled then averaged)
        rgb, bands, coverage = make_cutout(_bands([(data, wcs)]), galaxy, size=64,
                                           scale=scale * u.arcsec / u.pix, return_bands=True)
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        assert coverage.min() == 1.0
        r = bands["r"]
        peak = np.unravel_index(np.argmax(r), r.shape)
        assert abs(peak[0] - 31.5) <= 1 and abs(peak[1] - 31.5) <= 1
        # images are per native pixel: total flux = sum * (scale / 0.396)**2
        recovered = r.sum() * (scale / 0.396) ** 2
        assert recovered == pytest.approx(flux, rel=0.03)
        # the background (0.05 nmgy/px) was removed
        assert abs(np.median(r[:8, :8])) < 0.01
        # i (red) is 4x g (blue) after the band scales: red dominates at the centre
        assert int(rgb[32, 32, 0]) > int(rgb[32, 32, 2])


def test_galaxy_on_frame_edge_gets_complete_mosaic():
    # two overlapping frames (as consecutive SDSS fields): the galaxy sits on
    # the edge of the first, so a cutout needs both.
    center = SkyCoord(30.0, -1.0, unit="deg")
    shape = (200, 300)
    w1 = _frame_wcs(center, shape, angle_deg=0.0)
    w2 = _frame_wcs(center, shape, angle_deg=0.0, crpix=[150.5 - 250, 100.5])  # shifted 250 px
    x_edge = 299.0
    galaxy = w1.pixel_to_world(x_edge, 100.0)
    flux = 300.0
    d1 = _gaussian_frame(w1, shape, galaxy, flux, sigma_arcsec=1.5)
    d2 = _gaussian_frame(w2, shape, galaxy, flux, sigma_arcsec=1.5)
    _, bands1, cov1 = make_cutout(_bands([(d1, w1)]), galaxy, size=48,
                                  scale=SDSS_PIXEL_SCALE, return_bands=True)
    assert cov1.min() == 0.0  # one frame alone leaves a hole
    rgb, bands, cov = make_cutout(_bands([(d1, w1), (d2, w2)]), galaxy, size=48,
                                  scale=SDSS_PIXEL_SCALE, return_bands=True)
    assert cov.min() == 1.0
    assert not np.any(np.all(rgb == 0, axis=2)[20:28, 20:28])  # no empty region at the galaxy
    assert bands["r"].sum() == pytest.approx(flux, rel=0.03)
    assert bands1["r"].sum() < 0.7 * flux


def test_subtract_background_ignores_sources():
    rng = np.random.default_rng(1)
    img = rng.normal(0.2, 0.01, (64, 64))
    yy, xx = np.mgrid[0:64, 0:64]
    img += 5.0 * np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / (2 * 6.0 ** 2))
    out, level = subtract_background(img)
    assert level == pytest.approx(0.2, abs=0.005)
    assert np.median(out[:10, :10]) == pytest.approx(0.0, abs=0.005)
    # an empty patch of sky is fine (no warning, level ~ mean)
    out, level = subtract_background(rng.normal(1.0, 0.01, (32, 32)))
    assert level == pytest.approx(1.0, abs=0.005)
    # uncovered pixels stay zero
    cov = np.ones((32, 32))
    cov[:, :5] = 0
    out, _ = subtract_background(rng.normal(1.0, 0.01, (32, 32)), coverage=cov)
    assert np.all(out[:, :5] == 0)


def test_make_cutout_input_errors():
    center = SkyCoord(0, 0, unit="deg")
    with pytest.raises(ValueError, match="lacks band"):
        make_cutout({"g": [], "r": [], "i": []}, center)
    with pytest.raises(TypeError, match="HDU/HDUList or a"):
        make_cutout({"g": ["x"], "r": ["x"], "i": ["x"]}, center)


def test_preprocess_is_pure_image_maths():
    """Importing preprocess loads no network code and no target handling."""
    import subprocess
    import sys

    code = ("import sys, astro_metallicity.preprocess; "
            "print(sorted(m for m in ('astro_metallicity.acquire', 'astro_metallicity.targets', "
            "'astroquery', 'requests', 'pyvo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_make_cutout_on_real_sdss_frame(shared_data):
    """Real corrected frame: the cutout of a bright object keeps its flux and centre."""
    frames = {}
    for band in "gri":
        with fits.open(shared_data / "sdss-frames" / f"frame-{band}-003918-3-0213.fits.bz2") as hdul:
            frames[band] = [(hdul[0].data.astype(np.float32), hdul[0].header.copy())]
    data, header = frames["r"][0]
    wcs = header_wcs(header)
    # brightest compact object away from the edges
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(data, 2.0)
    inner = smooth[100:-100, 100:-100]
    y, x = np.unravel_index(np.argmax(inner), inner.shape)
    y, x = y + 100, x + 100
    position = wcs.pixel_to_world(x, y)
    rgb, bands, coverage = make_cutout(frames, position, size=64, scale=SDSS_PIXEL_SCALE,
                                       return_bands=True)
    assert coverage.min() == 1.0
    r = bands["r"]
    peak = np.unravel_index(np.argmax(ndimage.gaussian_filter(r, 2.0)), r.shape)
    assert abs(peak[0] - 31.5) <= 1.5 and abs(peak[1] - 31.5) <= 1.5
    # aperture flux (radius 12 px) agrees with the frame's, after each one's background
    yy, xx = np.mgrid[0:64, 0:64]
    in_cut = (xx - 31.5) ** 2 + (yy - 31.5) ** 2 < 12 ** 2
    fy, fx = np.mgrid[y - 40:y + 41, x - 40:x + 41]
    box = data[y - 40:y + 41, x - 40:x + 41].astype(float)
    in_frame = (fx - x) ** 2 + (fy - y) ** 2 < 12 ** 2
    frame_flux = box[in_frame].sum() - np.median(box[~in_frame]) * in_frame.sum()
    assert r[in_cut].sum() == pytest.approx(frame_flux, rel=0.05)
    assert rgb[29:35, 29:35].mean() > rgb[:8, :8].mean() + 20


@pytest.mark.parametrize("radesys", ["ICRS", "FK5"])
def test_make_cutout_equals_reproject_interp_per_band(radesys):
    """make_cutout computes the output grid's sky positions once for the three bands and
    samples each frame itself (exact frame positions at nodes 16 pixels apart, a spline
    between); the bands equal reproject_interp's to 1e-8 of the peak, and the coverage
    pixel for pixel, also where the cutout runs off the frame (edge rule) and for frames
    whose WCS differ slightly between bands, as SDSS's do. ICRS frames (SDSS's) take the direct
    ``all_world2pix`` path, others (FK5) astropy's frame-aware ``world_to_pixel``."""
    from reproject import reproject_interp

    center = SkyCoord(150.0, 2.0, unit="deg")
    shape = (200, 260)
    wcs = {"g": _frame_wcs(center, shape, 12.0, crpix=[130.8, 100.3]),
           "r": _frame_wcs(center, shape, 12.0),
           "i": _frame_wcs(center, shape, 12.01, crpix=[129.9, 100.6])}
    for w in wcs.values():
        w.wcs.radesys = radesys
        w.wcs.equinox = 2000.0
        w.wcs.set()
    galaxy = center.spherical_offsets_by(-40 * u.arcsec, 25 * u.arcsec)  # near a corner
    data = {b: _gaussian_frame(wcs[b], shape, galaxy, 300.0, 1.5, background=0.02)
            for b in "gri"}
    frames = {b: [(data[b], wcs[b])] for b in "gri"}
    for scale in (0.25, 0.9):  # oversampled, and supersampled then averaged (f = 3)
        f = 3 if scale > 0.5 else 1
        _, bands, coverage = make_cutout(frames, galaxy, size=64, scale=scale * u.arcsec / u.pix,
                                         background=False, return_bands=True)
        out_wcs = cutout_wcs(galaxy, 64 * f, scale / f * u.arcsec / u.pix)
        cov_min = np.ones((64, 64))
        for b in "gri":
            ref, foot = reproject_interp((data[b], wcs[b]), out_wcs, shape_out=(64 * f, 64 * f),
                                         order="bilinear", roundtrip_coords=False)
            ref = np.where(foot > 0, np.nan_to_num(ref), 0.0)
            ref = ref.reshape(64, f, 64, f).mean(axis=(1, 3))
            cov_min = np.minimum(cov_min, foot.reshape(64, f, 64, f).mean(axis=(1, 3)))
            np.testing.assert_allclose(bands[b], ref, rtol=0, atol=1e-8 * np.abs(ref).max())
        assert coverage.min() < 1.0 == coverage.max()  # the cutout crosses the frame's edge
        np.testing.assert_array_equal(coverage, cov_min)
