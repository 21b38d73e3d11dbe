"""Cutout stores: building (resumable), reading, JPEG folders."""

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from astro_metallicity.train import (
    LabelledCutouts,
    build_dataset,
    dataset_from_images,
    read_dataset,
)
from astro_metallicity.train.dataset import (
    _concat_cutouts,
    _split_indices,
    _write_dataset,
)


def _catalog(n=10):
    return Table({"objID": np.arange(n, dtype=np.int64), "ra": np.linspace(10, 11, n) * u.deg,
                  "dec": np.linspace(-1, 1, n) * u.deg, "oh_p50": np.linspace(8.5, 9.2, n) * u.dex,
                  "lgm_tot_p50": np.linspace(9, 11, n) * u.dex(u.Msun)})


class _FakeCutouts:
    """A cutout_func that paints each image with its RA and can fail once."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, coords, rows, *, source, scale, size):
        self.calls.append(len(self.calls))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError("simulated crash")
        images = np.zeros((len(coords), size, size, 3), dtype=np.uint8)
        images[...] = (np.round(coords.ra.deg * 10) % 256).astype(np.uint8)[:, None, None, None]
        flags = np.where(np.asarray(rows["objID"]) == 3, "fetch_failed: test", "")
        return images, flags


def test_build_dataset_resumes_after_crash(tmp_path):
    catalog = _catalog(10)
    path = tmp_path / "set.h5"
    crashing = _FakeCutouts(fail_at=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_dataset(catalog, path, size=8, chunk_size=3, cutout_func=crashing, progress=False)
    with pytest.raises(ValueError, match="incomplete"):
        read_dataset(path)
    resumed = _FakeCutouts()
    build_dataset(catalog, path, size=8, chunk_size=3, cutout_func=resumed, progress=False)
    assert len(resumed.calls) == 2  # chunks 0 and 1 were kept, 2 and 3 fetched
    full = read_dataset(path, good_only=False)
    assert len(full) == 10 and full.images.shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(full.images[:, 0, 0, 0],
                                  np.round(np.linspace(10, 11, 10) * 10).astype(np.uint8))
    assert list(full.flags).count("fetch_failed: test") == 1
    good = read_dataset(path)
    assert len(good) == 9 and 3 not in list(good.catalog["objID"])
    assert good.catalog["oh_p50"].unit == u.dex
    assert good.meta["source"] == "jpeg" and good.meta["scale"] == "adaptive"
    # a finished store is not fetched again
    again = _FakeCutouts()
    build_dataset(catalog, path, size=8, chunk_size=3, cutout_func=again, progress=False)
    assert again.calls == []
    # another catalogue of the same length refuses to resume (no stale cutouts)
    shifted = catalog.copy()
    shifted["ra"][0] += 0.01  # degrees
    with pytest.raises(ValueError, match="other settings"):
        build_dataset(shifted, path, size=8, chunk_size=3, cutout_func=again, progress=False)
    # other settings refuse to resume
    with pytest.raises(ValueError, match="other settings"):
        build_dataset(catalog, path, size=16, chunk_size=3, cutout_func=again, progress=False)
    build_dataset(catalog, path, size=16, chunk_size=3, cutout_func=again, progress=False,
                  overwrite=True)
    assert read_dataset(path).images.shape[1] == 16


def test_build_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="'ra' column"):
        build_dataset(Table({"x": [1.0]}), tmp_path / "a.h5", cutout_func=_FakeCutouts())
    with pytest.raises(ValueError, match="source must be"):
        build_dataset(_catalog(), tmp_path / "a.h5", source="fits", cutout_func=_FakeCutouts())
    with pytest.raises(ValueError, match="chunk_size"):
        build_dataset(_catalog(), tmp_path / "a.h5", chunk_size=0, cutout_func=_FakeCutouts())
    with pytest.raises(FileNotFoundError, match="build it with"):
        read_dataset(tmp_path / "missing.h5")


def test_labelled_cutouts_targets_and_split(tmp_path):
    catalog = _catalog(6)
    catalog["lgm_tot_p50"][2] = -9999.0
    cut = LabelledCutouts(np.zeros((6, 4, 4, 3), np.uint8), catalog)
    y = cut.targets(["metallicity", "log_mstar"])
    assert y.shape == (6, 2) and np.isnan(y[2, 1]) and np.isfinite(y[:, 0]).all()
    assert np.isnan(LabelledCutouts(cut.images, catalog[["oh_p50"]]).targets(["log_mstar"])).all()
    parts = _split_indices(100, (0.8, 0.1, 0.1), seed=3)
    assert [len(p) for p in parts] == [80, 10, 10]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    np.testing.assert_array_equal(parts[2], _split_indices(100, (0.8, 0.1, 0.1), seed=3)[2])
    with pytest.raises(ValueError, match="sum to 1"):
        _split_indices(10, (0.5, 0.2))
    # the method: the same permutation, applied to the rows
    big = LabelledCutouts(np.zeros((100, 2, 2, 3), np.uint8), _catalog(100))
    train, val, test = big.split((0.8, 0.1, 0.1), seed=3)
    np.testing.assert_array_equal(test.catalog["objID"], parts[2])
    assert (len(train), len(val)) == (80, 10)
    with pytest.raises(ValueError, match=r"fractions must be non-negative and sum to 1, got "
                                         r"\[0.5, 0.2\]"):
        big.split((0.5, 0.2))
    with pytest.raises(ValueError, match="catalog has 5 rows"):
        LabelledCutouts(cut.images, catalog[:5])
    path = _write_dataset(cut, tmp_path / "w.h5")
    back = read_dataset(path)
    np.testing.assert_array_equal(back.targets(["metallicity"]), cut.targets(["metallicity"]))


def test_resample_follows_the_weights():
    n = 1000
    images = np.zeros((n, 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256  # each row's pixels travel with its catalogue row
    cut = LabelledCutouts(images, _catalog(n))
    # weight 3 on the first 100 rows, 1 on the rest: they should make 3 * 100 / 1200 = 25 %
    weights = np.where(np.arange(n) < 100, 3.0, 1.0)
    drawn = cut.resample(weights, size=20000, seed=1)
    ids = np.asarray(drawn.catalog["objID"])
    assert len(drawn) == 20000 and np.all(np.diff(ids) >= 0)
    assert abs(np.mean(ids < 100) - 0.25) < 0.015  # binomial sd 0.003
    np.testing.assert_array_equal(drawn.images[:, 0, 0, 0], ids % 256)
    # zero weight: never drawn; same seed: same rows; default size: as many rows
    weights[:500] = 0.0
    again = cut.resample(weights, seed=4)
    assert len(again) == n and np.asarray(again.catalog["objID"]).min() >= 500
    np.testing.assert_array_equal(again.catalog["objID"],
                                  cut.resample(weights, seed=4).catalog["objID"])
    with pytest.raises(ValueError, match=r"one value per row \(1000\), got shape \(3,\)"):
        cut.resample([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        cut.resample(np.full(n, -1.0))
    with pytest.raises(ValueError, match="finite and >= 0"):
        cut.resample(np.zeros(n))


def test_dataset_from_images_and_its_store(tmp_path):
    from PIL import Image

    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for ident in (11, 12, 13):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"{ident}.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("objID,Z\n11,8.7\n12,8.9\n13,9.1\n14,9.0\n")
    cut = dataset_from_images(folder, labels, tmp_path / "s.h5", label_columns={"Z": "oh_p50"},
                              pattern="{id}.png")
    assert len(cut) == 3  # 14 has no image
    np.testing.assert_allclose(cut.targets(["metallicity"])[:, 0], [8.7, 8.9, 9.1])
    stored = read_dataset(tmp_path / "s.h5")  # the store written alongside reads back the same
    np.testing.assert_array_equal(stored.images, cut.images)
    targets = stored.targets(["metallicity", "log_mstar"])
    np.testing.assert_allclose(targets[:, 0], [8.7, 8.9, 9.1])
    assert np.isnan(targets[:, 1]).all()  # no mass column in the labels
    with pytest.raises(ValueError, match="no id_column"):
        dataset_from_images(folder, labels, id_column="id")


def test_dataset_from_real_jpegs(shared_data):
    root = shared_data / "sdss-gri-jpeg-400"
    cut = dataset_from_images(root / "images", root / "labels.csv")
    assert len(cut) == 400 and cut.images.shape == (400, 128, 128, 3)
    z = cut.targets(["metallicity"])[:, 0]
    assert np.mean(z) == pytest.approx(8.90, abs=0.02) and np.std(z) == pytest.approx(0.20, abs=0.02)


def test_build_dataset_through_mock_sdss(tmp_path):
    """The default route: the pipeline's make_cutouts against the local SDSS server."""
    from astro_metallicity.mock import MockSDSS

    with MockSDSS(n_galaxies=150, seed=11) as server:
        catalog = Table(server.catalog[:4])
        path = build_dataset(catalog, tmp_path / "mock.h5", source="jpeg", chunk_size=2,
                             progress=False)
        n_requests = len(server.requests)
        build_dataset(catalog, path, source="jpeg", chunk_size=2, progress=False)
        assert len(server.requests) == n_requests  # resumed: nothing fetched again
    cut = read_dataset(path)
    assert len(cut) == 4 and cut.images.shape == (4, 128, 128, 3)
    # a galaxy sits at the centre: the middle is brighter than the corners
    centre = cut.images[:, 56:72, 56:72].mean(axis=(1, 2, 3))
    corner = cut.images[:, :16, :16].mean(axis=(1, 2, 3))
    assert np.all(centre > corner + 10)


def test_concat_cutouts_keeps_labels_and_parts():
    a = LabelledCutouts(np.zeros((2, 4, 4, 3), np.uint8), _catalog(2))
    b_catalog = _catalog(3)
    b_catalog.remove_column("lgm_tot_p50")  # like the real JPEG set: metallicity only
    b = LabelledCutouts(np.full((3, 4, 4, 3), 7, np.uint8), b_catalog)
    both = _concat_cutouts([a, b, a])
    assert len(both) == 7 and both.images[2:5].min() == 7
    np.testing.assert_array_equal(both.catalog["part"], [0, 0, 1, 1, 1, 2, 2])
    mass = both.targets(["log_mstar"])[:, 0]
    assert np.isnan(mass[2:5]).all() and np.isfinite(mass[[0, 1, 5, 6]]).all()
    np.testing.assert_allclose(both.targets(["metallicity"])[2:5, 0],
                               b.targets(["metallicity"])[:, 0])
    with pytest.raises(ValueError, match="one shape"):
        _concat_cutouts([a, LabelledCutouts(np.zeros((1, 5, 5, 3), np.uint8), _catalog(1))])
    with pytest.raises(ValueError, match="at least one"):
        _concat_cutouts([])
