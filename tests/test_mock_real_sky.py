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


#: Rows by which the donor's g and i frames are offset from its r frame (the real field in
#: ../shared has g ~9 rows and i ~3.5 rows off r, along the scan).
G_SHIFT, I_SHIFT = 5, -3


@pytest.fixture(scope="module")
def donor_files(tmp_path_factory):
    """Frame files of one field of a simulated sky: r as rendered, g and i made from the same
    pixels shifted by whole rows, with their WCS shifted to match (so aligned, they equal r)."""
    donor = MockSky(60, seed=41, appearance="sdss")
    run, camcol, field = _field(donor)
    folder = tmp_path_factory.mktemp("frames")
    paths = []
    for band, shift in (("g", G_SHIFT), ("r", 0), ("i", I_SHIFT)):
        hdul = donor.frame_hdulist(run, camcol, field, "r")
        hdul[0].data = np.roll(hdul[0].data, shift, axis=0)
        hdul[0].header["CRPIX2"] += shift
        hdul[0].header["FILTER"] = band
        path = folder / f"frame-{band}-{run:06d}-{camcol}-{field:04d}.fits"
        hdul.writeto(path)
        paths.append(path)
    return donor, paths


@pytest.fixture(scope="module")
def sky_frames(donor_files):
    return SkyFrames(donor_files[1])


def test_sky_frames_read_align_and_crop_the_bands(donor_files, sky_frames):
    donor, paths = donor_files
    run, camcol, field = _field(donor)
    assert len(sky_frames.fields) == 1 and sky_frames.names == [f"{run:06d}-{camcol}-{field:04d}"]
    r_native = fits.getdata(paths[1])
    # only the rows all three bands cover are kept: I_SHIFT rows at the start, G_SHIFT at the end
    kept = slice(-I_SHIFT, r_native.shape[0] - G_SHIFT)
    aligned = sky_frames.fields[0]
    np.testing.assert_array_equal(aligned["r"], r_native[kept])
    # g and i, resampled onto the r grid through their WCS, are the r pixels again
    scale = np.abs(r_native).max()
    for band in "gi":
        assert aligned[band].shape == aligned["r"].shape == (1489 - G_SHIFT + I_SHIFT, 2048)
        np.testing.assert_allclose(aligned[band], aligned["r"], atol=1e-5 * scale)
        assert np.abs(aligned[band] - fits.getdata(paths["gri".index(band)])[kept]).max() > 0.1 * scale


def test_region_is_a_slice_of_the_placed_frame(sky_frames):
    whole = sky_frames.region(5, 3, "i")
    assert whole.shape == (1489, 2048)
    height = sky_frames.fields[0]["i"].shape[0]
    part = sky_frames.region(5, 3, "i", (2000, 2048, 1400, 1489))
    np.testing.assert_array_equal(part, whole[1400:1489, 2000:2048])
    # the real field is a few rows shorter than a frame: it wraps around
    np.testing.assert_array_equal(whole[height:], whole[:1489 - height])
    # a placement is a shift and flips of the real frame: one period holds its pixels, rearranged
    np.testing.assert_array_equal(np.sort(whole[:height], axis=None),
                                  np.sort(sky_frames.fields[0]["i"], axis=None))
    assert sky_frames.placement(5, 3) == sky_frames.placement(5, 3)
    assert len({sky_frames.placement(5, k)[1:] for k in range(6)}) == 6


def test_injected_frames_are_galaxies_on_the_real_sky(sky_frames):
    sky = MockSky(60, seed=42, appearance="sdss", sky_frames=sky_frames)
    assert len(sky.stars["ra"]) == 0  # the real frame brings its own
    assert len(sky._render_gal["ra"]) == len(sky.catalog)  # and its own faint galaxies
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


def test_sky_frames_are_part_of_the_server_token(sky_frames):
    """Another real sky behind the same galaxies serves other pixels: caches keyed by URL must
    not mix them."""
    other = SkyFrames.__new__(SkyFrames)
    other.fields = [{b: -image for b, image in sky_frames.fields[0].items()}]
    other.names, other.digest = sky_frames.names, "0123456789ab"
    tokens = {MockSDSS(n_galaxies=30, seed=43, appearance="sdss", sky_frames=frames).token
              for frames in (sky_frames, other, sky_frames)}
    assert len(tokens) == 2


def test_sky_frames_errors(donor_files, tmp_path):
    _, paths = donor_files
    with pytest.raises(ValueError, match=r"no frame for band\(s\) i \(need gri\)"):
        SkyFrames(paths[:2])
    with pytest.raises(ValueError, match="no sky frames given"):
        SkyFrames([])
    small = tmp_path / "frame-r-000001-1-0001.fits"
    fits.PrimaryHDU(np.zeros((10, 10), np.float32)).writeto(small)
    with pytest.raises(ValueError, match=r"not an SDSS corrected frame \(HDU0 has shape \(10, 10\), "
                                         r"expected \(1489, 2048\)\)"):
        SkyFrames([small])


def test_real_sdss_frame_as_sky(shared_data):
    """The real corrected frame in ../shared: bands aligned, sky noise as SDSS's."""
    paths = sorted((shared_data / "sdss-frames").glob("frame-*-003918-3-0213.fits.bz2"))
    frames = SkyFrames(paths)
    assert frames.names == ["003918-3-0213"]
    # the bands of the field are offset along the scan by a few rows: those rows are cut
    height, width = frames.fields[0]["r"].shape
    assert 1470 < height < 1489 and 2040 < width <= 2048
    for band in "gi":
        assert (frames.fields[0][band] == 0).mean() < 1e-3  # no blank strips left
    for band, (lo, hi) in {"g": (0.005, 0.02), "r": (0.01, 0.04), "i": (0.01, 0.04)}.items():
        image = frames.fields[0][band]
        noise = 1.4826 * np.median(np.abs(image - np.median(image)))
        assert lo < noise < hi, band
