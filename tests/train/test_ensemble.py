"""Tests of astro_metallicity.train.ensemble_models: several networks run as one model."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from astro_metallicity import predict_metallicity
from astro_metallicity.model import MetallicityModel, _save_untrained_model, load_model, save_model
from astro_metallicity.train import TrainingConfig, ensemble_models, train_model


@pytest.fixture
def members(tmp_path):
    """Two untrained networks that differ in everything an ensemble must reconcile:
    input normalisation, label statistics and outputs."""
    a = _save_untrained_model(
        tmp_path / "a", seed=1, outputs=("metallicity", "log_mstar"),
        label_mean={"metallicity": 8.8, "log_mstar": 10.2},
        label_std={"metallicity": 0.15, "log_mstar": 0.5},
        normalization={"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]})
    b = _save_untrained_model(
        tmp_path / "b", seed=2, outputs=("metallicity",), label_mean={"metallicity": 9.0},
        label_std={"metallicity": 0.25})
    return load_model(a, device="cpu"), load_model(b, device="cpu")


@pytest.fixture
def images():
    return np.random.default_rng(5).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_ensemble_is_the_mixture_of_its_members(members, images):
    a, b = members
    ensemble = ensemble_models([a, b], names=["first", "second"])
    pa, pb, pe = (m.predict(images, tta=False) for m in (a, b, ensemble))
    assert ensemble.outputs == ["metallicity", "log_mstar"]
    # metallicity from both: mean of the means, mean variance + variance of the means
    assert pe["metallicity"] == pytest.approx((pa["metallicity"] + pb["metallicity"]) / 2,
                                              abs=1e-5)
    variance = ((pa["metallicity_err"] ** 2 + pb["metallicity_err"] ** 2) / 2
                + ((pa["metallicity"] - pb["metallicity"]) / 2) ** 2)
    assert pe["metallicity_err"] == pytest.approx(np.sqrt(variance), rel=1e-4)
    # log M* only from the member that predicts it
    assert pe["log_mstar"] == pytest.approx(pa["log_mstar"], abs=1e-5)
    assert pe["log_mstar_err"] == pytest.approx(pa["log_mstar_err"], rel=1e-4)
    # with test-time augmentation too (the views are averaged after combining)
    full = ensemble.predict(images)
    assert full["metallicity"] == pytest.approx(
        (a.predict(images)["metallicity"] + b.predict(images)["metallicity"]) / 2, abs=1e-5)


def test_ensemble_error_scale_multiplies_the_combined_error(members, images):
    ensemble = ensemble_models(members)
    before = ensemble.predict(images, tta=False)["metallicity_err"]
    ensemble.metadata["error_scale"]["metallicity"] = 0.5
    assert ensemble.predict(images, tta=False)["metallicity_err"] == pytest.approx(before / 2)


def test_ensemble_saves_and_loads_as_one_model(members, images, tmp_path):
    ensemble = ensemble_models(members, names=["first", "second"])
    path = save_model(ensemble.network, ensemble.metadata, tmp_path / "ens", half=False)
    loaded = load_model(path, device="cpu")
    assert loaded.metadata["arch"] == "ensemble"
    assert "ensemble[tiny, tiny]" in repr(loaded)
    np.testing.assert_allclose(loaded.predict(images)["metallicity"],
                               ensemble.predict(images)["metallicity"], atol=1e-6)
    # the members come back with their own metadata and share the ensemble's weights
    first, second = loaded.members
    assert isinstance(first, MetallicityModel) and first.outputs == ["metallicity", "log_mstar"]
    assert second.metadata["ensemble_member"] == "second"
    assert first.network is loaded.network.members[0]
    np.testing.assert_allclose(second.predict(images)["metallicity"],
                               members[1].predict(images)["metallicity"], atol=1e-6)
    # the weights file holds the members' weights only (the conversions come from metadata)
    state = torch.load(path, weights_only=True)
    assert all(key.startswith("members.") for key in state)
    # a single network is its own only member
    assert members[0].members == [members[0]]


def test_ensemble_metadata_errors_on_load(members, tmp_path):
    import json

    ensemble = ensemble_models(members)
    path = save_model(ensemble.network, ensemble.metadata, tmp_path / "ens", half=False)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["members"][1]["arch"] = "vgg"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="ensemble member 1 names unknown arch 'vgg'"):
        load_model(path)
    meta["members"] = []
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lists no members"):
        load_model(path)


def test_ensemble_rejects_members_that_read_other_cutouts(members, tmp_path):
    other = load_model(_save_untrained_model(tmp_path / "c", seed=3, input_size=48))
    with pytest.raises(ValueError, match="member 'member2' reads other cutouts than member "
                                         "'member0' \\(different input_size\\)"):
        ensemble_models([*members, other])
    with pytest.raises(ValueError, match="at least two models, got 1"):
        ensemble_models(members[:1])
    with pytest.raises(ValueError, match="names has 1 entries for 2 models"):
        ensemble_models(members, names=["x"])
    nested = ensemble_models(members)
    with pytest.raises(ValueError, match="is itself an ensemble"):
        ensemble_models([nested, members[0]])


def test_fine_tuning_an_ensemble_starts_from_its_named_member(members, tmp_path):
    from .conftest import make_labelled_set

    data = make_labelled_set(n=24, size=32)
    ensemble = ensemble_models(members, names=["first", "second"])
    config = TrainingConfig(epochs=1, batch_size=8, seed=0, device="cpu")
    with pytest.raises(ValueError, match="names no member to fine-tune"):
        train_model(data, None, config, init_from=ensemble)
    ensemble.metadata["ensemble"]["init_member"] = "first"
    result = train_model(data, None, config, init_from=ensemble)
    # the fine-tuned network is the first member's (both outputs, its label statistics)
    assert result.model.metadata["arch"] == "tiny"
    assert result.model.outputs == ["metallicity", "log_mstar"]
    assert result.model.metadata["label_mean"]["metallicity"] == pytest.approx(8.8)


def test_the_embedding_is_the_named_members(members, images):
    """The OOD score reads one member's embedding: the last by default, or the one named."""
    ensemble = ensemble_models(members, names=["first", "second"])
    for name, member in (("second", members[1]), ("first", members[0])):
        if name == "first":
            ensemble.metadata["ensemble"]["embedding_member"] = "first"
        _, embedding = ensemble._run(images, embed=True)
        _, expected = member._run(images, embed=True)
        np.testing.assert_allclose(embedding, expected, rtol=1e-4, atol=1e-5)
    ensemble.metadata["ensemble"]["embedding_member"] = "third"
    with pytest.raises(ValueError, match="embedding_member 'third' is not one of its members"):
        ensemble._run(images, embed=True)


def test_predict_metallicity_runs_an_ensemble(members, mock_sdss, tmp_path):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ensemble = ensemble_models(members)
    ensemble.metadata["error_scale"]["metallicity"] = 0.8
    path = save_model(ensemble.network, ensemble.metadata, tmp_path / "ens", half=True)
    targets = SkyCoord(mock_sdss.catalog["ra"][:3], mock_sdss.catalog["dec"][:3])
    result, cutouts = predict_metallicity(targets, model=path, source="jpeg",
                                          return_cutouts=True)
    assert result["metallicity"].unit == u.dex
    meta = result.meta["astro_metallicity"]["model"]
    assert meta["arch"] == "ensemble" and meta["members"] == ["member0: tiny", "member1: tiny"]
    # the pipeline's numbers are the (float16-stored) ensemble's on the same cutouts
    direct = ensemble.predict(cutouts.images)
    np.testing.assert_allclose(result["metallicity"].value, direct["metallicity"], atol=2e-3)
    np.testing.assert_allclose(result["metallicity_err"].value, direct["metallicity_err"],
                               rtol=2e-2)
