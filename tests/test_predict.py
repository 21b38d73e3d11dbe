"""Tests of predict_metallicity / predict_metallicity_from_images against the mock SDSS."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import QTable, Table
from astropy.utils.masked import Masked

from astro_metallicity import conf, predict_metallicity, predict_metallicity_from_images
from astro_metallicity.mock import MockSDSS
from astro_metallicity.model import load_model


@pytest.fixture(scope="module")
def sdss():
    with MockSDSS(n_galaxies=40, seed=21, galaxies_per_field=40) as server:
        yield server


pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture(scope="module")
def model(pipeline_model):
    return load_model(pipeline_model, device="cpu")


def _targets_table(sdss, n=4):
    """A table of n catalogue galaxies in shuffled order, plus a NaN row and an outside row."""
    cat = sdss.catalog
    rng = np.random.default_rng(5)
    idx = rng.permutation(len(cat))[:n]
    ra = list(cat["ra"][idx].to_value(u.deg)) + [np.nan, 20.0]
    dec = list(cat["dec"][idx].to_value(u.deg)) + [1.0, 20.0]
    names = [f"gal{k}" for k in range(n)] + ["nan_row", "outside"]
    return Table({"name": names, "RA": ra, "DEC": dec, "extra": np.arange(n + 2) * 1.5}), idx


def _masked_values(column):
    assert isinstance(column, Masked)
    return np.asarray(column.unmasked.value), np.asarray(column.mask)


@pytest.mark.parametrize("source", ["jpeg", "frames"])
def test_table_input_units_order_flags_and_masks(sdss, model, source):
    table, idx = _targets_table(sdss)
    result, cutouts = predict_metallicity(table, source=source, model=model, return_cutouts=True)
    assert isinstance(result, QTable)
    # input columns first, unchanged and in order; then the predictions
    assert result.colnames[:4] == ["name", "RA", "DEC", "extra"]
    assert list(result["name"]) == list(table["name"])
    np.testing.assert_array_equal(result["extra"], table["extra"])
    assert result["metallicity"].unit == u.dex
    assert result["metallicity_err"].unit == u.dex
    assert result["log_mstar"].unit == u.dex(u.solMass)
    flags = list(result["flag"])
    assert flags[:4] == ["ok"] * 4
    assert flags[4].startswith("bad_coordinates")
    assert flags[5] == "outside_footprint"
    z, zmask = _masked_values(result["metallicity"])
    np.testing.assert_array_equal(zmask, [False] * 4 + [True, True])
    assert np.all(np.isfinite(z[:4])) and np.all((z[:4] > 6) & (z[:4] < 11))
    err, errmask = _masked_values(result["metallicity_err"])
    assert np.all(err[:4] > 0) and errmask[4:].all()
    # the predictions are the model's on exactly these cutouts, row by row
    direct = model.predict(cutouts.images[:4])
    np.testing.assert_allclose(z[:4], direct["metallicity"], rtol=1e-6)
    assert cutouts.images.shape == (6, 64, 64, 3)
    assert not cutouts.images[4:].any()
    # adaptive scale from the model metadata: 2 * petroR90_r / (0.396 * 64)
    r90 = sdss.catalog["petroR90_r"][idx].to_value(u.arcsec)
    np.testing.assert_allclose(cutouts.scales[:4].value, 2 * r90 / (0.396 * 64), rtol=1e-4)
    meta = result.meta["astro_metallicity"]
    assert meta["cutout_source"] == source
    assert meta["sdss_data_release"] == conf.data_release
    assert len(meta["model"]["sha256"]) == 64
    assert meta["pixel_scale"] == "adaptive"


def test_skycoord_inputs_scalar_and_array(sdss, model):
    cat = sdss.catalog
    coords = SkyCoord(cat["ra"][:3], cat["dec"][:3])
    result = predict_metallicity(coords[::-1], source="jpeg", model=model)
    assert result.colnames[0] == "coord"
    assert np.all(result["coord"].separation(coords[::-1]) < 1e-6 * u.arcsec)  # order kept
    single = predict_metallicity(coords[0], source="jpeg", model=model)
    assert len(single) == 1
    z_single, _ = _masked_values(single["metallicity"])
    z_array, _ = _masked_values(result["metallicity"])
    assert z_single[0] == pytest.approx(z_array[2])


def test_fixed_scale_and_all_bad_rows(sdss, model):
    cat = sdss.catalog
    coords = SkyCoord(cat["ra"][:2], cat["dec"][:2])
    result, cutouts = predict_metallicity(coords, source="jpeg", model=model,
                                          scale=0.3 * u.arcsec / u.pix, return_cutouts=True)
    np.testing.assert_allclose(cutouts.scales.value, 0.3)
    assert result.meta["astro_metallicity"]["pixel_scale"].startswith("0.3 arcsec")
    bad = predict_metallicity(Table({"ra": [np.nan], "dec": [0.0]}), model=model)
    assert bad["flag"][0].startswith("bad_coordinates")
    assert bool(bad["metallicity"].mask[0])


def test_argument_errors(sdss, model):
    coords = SkyCoord([1.0], [2.0], unit="deg")
    with pytest.raises(ValueError, match="source must be 'frames' or 'jpeg'"):
        predict_metallicity(coords, source="png", model=model)
    with pytest.raises(u.UnitsError, match="scale needs a unit"):
        predict_metallicity(coords, scale=0.5, model=model)
    with pytest.raises(TypeError, match="model must be None"):
        predict_metallicity(coords, model=42)
    with pytest.raises(ValueError, match="already has column"):
        predict_metallicity(Table({"ra": [1.0], "dec": [2.0], "flag": ["x"]}), model=model,
                            source="jpeg")


def test_predict_from_image_arrays_and_files(tmp_path, sdss, model):
    from PIL import Image

    cat = sdss.catalog
    coords = SkyCoord(cat["ra"][:2], cat["dec"][:2])
    table, cutouts = predict_metallicity(coords, source="jpeg", model=model, return_cutouts=True)
    from_arrays = predict_metallicity_from_images(cutouts.images, model=model)
    z_from_sky, _ = _masked_values(table["metallicity"])
    z_arrays, _ = _masked_values(from_arrays["metallicity"])
    np.testing.assert_allclose(z_arrays, z_from_sky, rtol=1e-6)
    paths = []
    for k, image in enumerate(cutouts.images):
        path = tmp_path / f"cut{k}.png"  # PNG: lossless, so the same pixels
        Image.fromarray(image).save(path)
        paths.append(path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = predict_metallicity_from_images([*paths, broken], model=model)
    assert list(result["image"]) == [str(p) for p in [*paths, broken]]
    z, mask = _masked_values(result["metallicity"])
    np.testing.assert_allclose(z[:2], z_from_sky, rtol=1e-6)
    assert mask.tolist() == [False, False, True]
    assert result["flag"][2].startswith("unreadable_image")
    with pytest.raises(ValueError, match="names has 1 entries for 3 images"):
        predict_metallicity_from_images([*paths, broken], model=model, names=["a"])
    with pytest.raises(ValueError, match=r"shape \(N, H, W, 3\)"):
        predict_metallicity_from_images(np.zeros((2, 2)), model=model)


def test_predict_real_sdss_jpegs(shared_data, model):
    """Real ImgCutout JPEGs (128 px) are resized to the model's cutout size and predicted."""
    files = sorted((shared_data / "sdss-gri-jpeg-400" / "images").glob("*.jpg"))[:5]
    result = predict_metallicity_from_images(files, model=model)
    assert len(result) == 5 and np.all(result["flag"] == "ok")
    assert result["metallicity"].unit == u.dex


def test_long_tables_run_in_chunks_with_identical_results(sdss, model, monkeypatch):
    from astro_metallicity import predict

    table, _ = _targets_table(sdss, n=5)
    whole = predict_metallicity(table, source="jpeg", model=model)
    monkeypatch.setattr(predict, "_CHUNK", 2)
    chunked, cutouts = predict_metallicity(table, source="jpeg", model=model,
                                           return_cutouts=True, progress=True)
    assert list(chunked["flag"]) == list(whole["flag"])
    z1, m1 = _masked_values(whole["metallicity"])
    z2, m2 = _masked_values(chunked["metallicity"])
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_allclose(z2[~m2], z1[~m1], rtol=1e-6)
    assert cutouts.images[:5].any(axis=(1, 2, 3)).all()


def test_scale_of_the_wrong_length_raises_value_error(sdss, model):
    coords = SkyCoord(sdss.catalog["ra"][:3], sdss.catalog["dec"][:3])
    with pytest.raises(ValueError, match=r"scale has shape \(2,\) for 3 targets; give one scale "
                                         r"or one per target \(shape \(3,\)\)"):
        predict_metallicity(coords, source="jpeg", model=model, scale=[0.3, 0.4] * u.arcsec / u.pix)
    with pytest.raises(ValueError, match=r"scale has shape \(3, 1\) for 3 targets"):
        predict_metallicity(coords, source="jpeg", model=model,
                            scale=np.full((3, 1), 0.3) * u.arcsec / u.pix)
    per_target = predict_metallicity(coords, source="jpeg", model=model,
                                     scale=[0.3, 0.35, 0.4] * u.arcsec / u.pix)
    assert list(per_target["flag"]) == ["ok", "ok", "ok"]
    assert per_target.meta["astro_metallicity"]["pixel_scale"] == "per target"


def test_default_source_follows_the_model_metadata(sdss, pipeline_model):
    """source=None: the model's recorded training source, else conf.cutout_source."""
    bad_row = Table({"ra": [np.nan], "dec": [0.0]})  # no download needed to see the choice

    def used(model, **kwargs):
        result = predict_metallicity(bad_row, model=model, **kwargs)
        return result.meta["astro_metallicity"]["cutout_source"]

    model = load_model(pipeline_model, device="cpu")
    assert "cutout_source" not in model.metadata
    assert used(model) == conf.cutout_source == "frames"
    with conf.set_temp("cutout_source", "jpeg"):
        assert used(model) == "jpeg"
    model.metadata["cutout_source"] = "jpeg"
    assert used(model) == "jpeg"
    assert used(model, source="frames") == "frames"  # an explicit argument wins
    coords = SkyCoord(sdss.catalog["ra"][:1], sdss.catalog["dec"][:1])
    assert predict_metallicity(coords, model=model)["flag"].tolist() == ["ok"]


def test_non_finite_model_output_is_flagged_in_the_pipeline(sdss, model, monkeypatch):
    from astro_metallicity.model import MetallicityModel

    def nan_model(self, images, **kwargs):
        return {key: np.full(len(images), np.nan) for key in
                ("metallicity", "metallicity_err", "log_mstar", "log_mstar_err")}, None

    # the pipeline runs the network through _run (predictions and embedding together)
    monkeypatch.setattr(MetallicityModel, "_run", nan_model)
    table, _ = _targets_table(sdss, n=2)
    result = predict_metallicity(table, source="jpeg", model=model)
    assert list(result["flag"]) == ["model_failed: non-finite output"] * 2 + [
        "bad_coordinates: missing or not finite", "outside_footprint"]
    assert bool(np.all(result["metallicity"].mask))
