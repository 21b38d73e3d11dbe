"""Real SDSS frames as the sky of simulated fields (``MockSky(sky_frames=...)``)."""

import numpy as np
import pytest
from astropy.io import fits

from astro_metallicity.mock import MockSDSS, MockSky
from astro_metallicity.mock.real_sky import SkyFrames
from astro_metallicity.mock.render import READ_NOISE, NMGY_PER_COUNT


def _field(sky, k=0):
    row = sky.field_table()[k]
    return int(row["run"]), int(row["camcol"]), int(row["field"])


@pytest.fixture(scope="module")
def donor_files(tmp_path_factory):
    """g, r, i frames of one field of a simulated sky, written as SDSS frame files."""
    donor = MockSky(60, seed=41, appearance="sdss")
    run, camcol, field = _field(donor)
    folder = tmp_path_factory.mktemp("frames")
    paths = []
    for band in "gri":
        path = folder / f"frame-{band}-{run:06d}-{camcol}-{field:04d}.fits"
        donor.frame_hdulist(run, camcol, field, band).writeto(path)
        paths.append(path)
    return donor, paths


@pytest.fixture(scope="module")
def sky_frames(donor_files):
    return SkyFrames(donor_files[1])


def test_sky_frames_read_and_align_the_bands(donor_files, sky_frames):
    donor, paths = donor_files
    run, camcol, field = _field(donor)
    assert len(sky_frames.fields) == 1 and sky_frames.names == [f"{run:06d}-{camcol}-{field:04d}"]
    # r is the reference grid, taken as is; g and i are resampled onto it
    np.testing.assert_array_equal(sky_frames.fields[0]["r"], fits.getdata(paths[1]))
    g_aligned = sky_frames.fields[0]["g"]
    g_native = fits.getdata(paths[0])
    assert g_aligned.shape == g_native.shape == (1489, 2048)
    # the donor's g frame sits a fraction of a pixel off r: aligned, the brightest g pixel is
    # where the brightest r pixel is
    r_peak = np.unravel_index(np.argmax(sky_frames.fields[0]["r"]), g_aligned.shape)
    g_peak = np.unravel_index(np.argmax(g_aligned), g_aligned.shape)
    assert max(abs(a - b) for a, b in zip(r_peak, g_peak)) <= 1


def test_region_is_a_slice_of_the_placed_frame(sky_frames):
    whole = sky_frames.region(5, 3, "i")
    assert whole.shape == (1489, 2048)
    part = sky_frames.region(5, 3, "i", (2000, 2048, 1400, 1489))
    np.testing.assert_array_equal(part, whole[1400:1489, 2000:2048])
    # a placement is a shift and flips of the real frame: the same pixels, rearranged
    np.testing.assert_array_equal(np.sort(whole, axis=None), np.sort(sky_frames.fields[0]["i"], axis=None))
    assert sky_frames.placement(5, 3) == sky_frames.placement(5, 3)
    assert len({sky_frames.placement(5, k)[1:] for k in range(6)}) == 6


def test_injected_frames_are_galaxies_on_the_real_sky(sky_frames):
    sky = MockSky(60, seed=42, appearance="sdss", sky_frames=sky_frames)
    assert len(sky.stars["ra"]) == 0  # the real frame brings its own
    run, camcol, field = _field(sky)
    k = sky._field_index(run, camcol, field)
    frame = sky.frame(run, camcol, field, "r")
    galaxies = frame - sky_frames.region(sky.seed, k, "r")
    # away from the galaxies only read noise is left (the sky noise is the real frame's)
    read = READ_NOISE["r"] * NMGY_PER_COUNT["r"]
    empty = np.abs(galaxies) < 10 * read
    assert empty.mean() > 0.9
    assert np.median(np.abs(galaxies[empty])) < 2 * read
    assert np.std(sky_frames.region(sky.seed, k, "r")) > 5 * read
    # and the galaxies are there: the brightest catalogue galaxy of the field adds its light
    assert galaxies.max() > 100 * read
    # a rendered region is the same pixels as the whole frame (cutouts of uncached frames)
    part = sky._render(k, "r", region=(100, 400, 50, 300))
    np.testing.assert_allclose(part, frame[50:300, 100:400], atol=1e-6)
    # the u and z frames keep the simulated sky
    assert np.std(sky.frame(run, camcol, field, "u")) > 0


def test_injected_sky_changes_the_server_token(sky_frames):
    plain = MockSDSS(n_galaxies=30, seed=43, appearance="sdss")
    injected = MockSDSS(n_galaxies=30, seed=43, appearance="sdss", sky_frames=sky_frames)
    assert plain.token != injected.token


def test_sky_frames_errors(donor_files, tmp_path):
    _, paths = donor_files
    with pytest.raises(ValueError, match=r"no frame for band\(s\) i \(need gri\)"):
        SkyFrames(paths[:2])
    with pytest.raises(ValueError, match="no sky frames given"):
        SkyFrames([])
    small = tmp_path / "frame-r-000001-1-0001.fits"
    fits.PrimaryHDU(np.zeros((10, 10), np.float32)).writeto(small)
    with pytest.raises(ValueError, match=r"expected a 1489 x 2048 SDSS frame, got \(10, 10\)"):
        SkyFrames([small])


def test_real_sdss_frame_as_sky(shared_data):
    """The real corrected frame in ../shared: bands aligned, sky noise as SDSS's."""
    paths = sorted((shared_data / "sdss-frames").glob("frame-*-003918-3-0213.fits.bz2"))
    frames = SkyFrames(paths)
    assert frames.names == ["003918-3-0213"]
    for band, (lo, hi) in {"g": (0.005, 0.02), "r": (0.01, 0.04), "i": (0.01, 0.04)}.items():
        image = frames.fields[0][band]
        noise = 1.4826 * np.median(np.abs(image - np.median(image)))
        assert lo < noise < hi, band
