"""cross_fit, stratified_folds, calibrate_out_of_fold: honest out-of-fold predictions."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from scipy import stats

from astro_metallicity.train import (
    TrainingConfig,
    calibrate_out_of_fold,
    cross_fit,
    stratified_folds,
    train_model,
)
from astro_metallicity.train import crossfit as crossfit_module

KW = {"arch": "tiny", "input_size": 16, "batch_size": 16, "max_lr": 1e-2, "device": "cpu"}


# ----------------------------------------------------------------------------- folds


def test_stratified_folds_cover_every_galaxy_once_and_span_the_labels():
    labels = np.random.default_rng(3).normal(8.9, 0.2, 103)
    folds = stratified_folds(labels, n_folds=5, seed=1)
    assert folds.shape == (103,) and set(folds.tolist()) == {0, 1, 2, 3, 4}
    counts = np.bincount(folds)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103
    # stratified: every run of 5 consecutive galaxies in label order sends one to each fold
    by_label = folds[np.argsort(labels)]
    for start in range(0, 100, 5):
        assert sorted(by_label[start:start + 5]) == [0, 1, 2, 3, 4]
    # so each fold's median label is close to the whole set's (a random split misses by ~0.04)
    for k in range(5):
        assert abs(np.median(labels[folds == k]) - np.median(labels)) < 0.03
    # fixed by the seed, not by the row order
    np.testing.assert_array_equal(stratified_folds(labels, 5, seed=1), folds)
    perm = np.random.default_rng(0).permutation(103)
    np.testing.assert_array_equal(stratified_folds(labels[perm], 5, seed=1), folds[perm])
    assert not np.array_equal(stratified_folds(labels, 5, seed=2), folds)


def test_stratified_folds_errors():
    with pytest.raises(ValueError, match="n_folds must be between 2 and the number of galaxies"):
        stratified_folds(np.arange(10.0), n_folds=1)
    with pytest.raises(ValueError, match="n_folds must be between 2 and the number of galaxies"):
        stratified_folds(np.arange(3.0), n_folds=4)
    with pytest.raises(ValueError, match="labels must be finite; 1 are not"):
        stratified_folds([8.5, np.nan, 9.0], n_folds=2)


# ----------------------------------------------------------------------------- calibration


def test_calibrate_out_of_fold_on_gaussian_residuals():
    rng = np.random.default_rng(5)
    n = 4000
    sigma = rng.uniform(0.05, 0.15, n)
    true = rng.normal(8.9, 0.2, n)
    pred = true + rng.normal(0, sigma)
    folds = stratified_folds(true, 5, seed=0)
    # the network claims errors half as large as they are
    cal = calibrate_out_of_fold(true, pred, 0.5 * sigma, folds)
    assert cal["scale"] == pytest.approx(2.0, rel=0.05)
    assert len(cal["fold_scales"]) == 5
    assert all(s == pytest.approx(2.0, rel=0.07) for s in cal["fold_scales"])
    # |z| < 0.5 for a unit Gaussian
    assert cal["coverage_uncalibrated"] == pytest.approx(2 * stats.norm.cdf(0.5) - 1, abs=0.02)
    assert cal["coverage_cross_validated"] == pytest.approx(0.6827, abs=0.02)
    assert cal["coverage_in_sample"] == pytest.approx(0.6827, abs=0.002)
    err = cal["err_cross_validated"]
    for k in range(5):
        np.testing.assert_allclose(err[folds == k], cal["fold_scales"][k] * 0.5 * sigma[folds == k])


def test_calibrate_out_of_fold_errors():
    with pytest.raises(ValueError, match="need at least two folds"):
        calibrate_out_of_fold([1.0, 2.0], [1.1, 2.1], [0.1, 0.1], [0, 0])
    with pytest.raises(ValueError, match="must have one length, got 2, 2, 2 and 3"):
        calibrate_out_of_fold([1.0, 2.0], [1.1, 2.1], [0.1, 0.1], [0, 1, 1])


# ----------------------------------------------------------------------------- leakage


class _LookupModel:
    """A perfect memoriser: the label of every image it was shown, 0 for any other."""

    def __init__(self, images, labels):
        self.memory = {im.tobytes(): y for im, y in zip(images, labels)}
        self.metadata = {"error_scale": {"metallicity": 7.0}}

    def predict(self, images, *, batch_size=None, tta=True):
        pred = np.array([self.memory.get(im.tobytes(), 0.0) for im in images])
        # raw sigma 0.1 times whatever error scale the metadata holds
        err = np.full(len(images), 0.1 * self.metadata["error_scale"]["metallicity"])
        return {"metallicity": pred, "metallicity_err": err}


@pytest.fixture
def memorising_training(monkeypatch):
    """Replace train_model in cross_fit by a memoriser that records what each fold saw."""
    calls = []

    class _Result:
        best_epoch, history = 0, [{}]

    def fake_train_model(train, val, config, *, init_from=None, checkpoint_dir=None,
                         metadata=None):
        seen = [train] + ([val] if val is not None else [])
        images = np.concatenate([s.images for s in seen])
        labels = np.concatenate([s.targets(["metallicity"])[:, 0] for s in seen])
        calls.append({"train": train, "val": val, "config": config, "metadata": metadata,
                      "init_from": init_from})
        result = _Result()
        result.model = _LookupModel(images, labels)
        return result

    monkeypatch.setattr(crossfit_module, "train_model", fake_train_model)
    return calls


def _image_keys(cutouts):
    return {im.tobytes() for im in cutouts.images}


def test_out_of_fold_predictions_come_from_models_that_never_saw_the_galaxy(
        memorising_training, labelled_set):
    data = labelled_set.subset(np.arange(100))
    result = cross_fit(data, TrainingConfig(**KW), n_folds=4, seed=3, baselines=False)
    # a memoriser predicts 0 for every galaxy it did not see: all 100 are unseen
    np.testing.assert_array_equal(result.predictions, 0.0)
    assert len(memorising_training) == 4
    everyone = np.arange(100)
    for k, call in enumerate(memorising_training):
        held = np.flatnonzero(result.folds == k)
        assert _image_keys(data.subset(held)).isdisjoint(
            _image_keys(call["train"]) | _image_keys(call["val"]))
        # the fold's network used all the other folds: 80 % to learn, 20 % to stop early
        fit, val = result.train_indices[k], result.val_indices[k]
        np.testing.assert_array_equal(np.sort(np.concatenate([fit, val])),
                                      np.setdiff1d(everyone, held))
        assert len(val) == pytest.approx(0.2 * (100 - len(held)), abs=1)
        assert call["config"].seed == KW.get("seed", 0) + k
        assert call["metadata"]["fold"] == {"k": k, "n_folds": 4, "seed": 3, "train_size": None}
        # ... and the memoriser is a real test: what a fold saw, it returns exactly
        seen = call["train"]
        np.testing.assert_array_equal(
            _LookupModel(seen.images, seen.targets(["metallicity"])[:, 0]).predict(
                seen.images)["metallicity"], seen.targets(["metallicity"])[:, 0])
    assert result.objids.tolist() == data.catalog["objID"].tolist()


def test_train_size_subsamples_each_fold_and_nests(memorising_training, labelled_set):
    data = labelled_set
    small = cross_fit(data, TrainingConfig(**KW), n_folds=4, seed=1, train_size=30,
                      baselines=False)
    large = cross_fit(data, TrainingConfig(**KW), n_folds=4, seed=1, train_size=60,
                      baselines=False)
    whole = cross_fit(data, TrainingConfig(**KW), n_folds=4, seed=1, train_size=500,
                      baselines=False)
    np.testing.assert_array_equal(small.folds, whole.folds)
    for k in range(4):
        held = np.flatnonzero(whole.folds == k)
        used_small = np.concatenate([small.train_indices[k], small.val_indices[k]])
        used_large = np.concatenate([large.train_indices[k], large.val_indices[k]])
        assert len(used_small) == 30 and len(used_large) == 60
        assert len(small.val_indices[k]) == 6
        assert not np.isin(used_large, held).any()
        assert np.isin(used_small, used_large).all()  # nested sizes
        # a size above the training part uses all of it
        assert len(whole.train_indices[k]) + len(whole.val_indices[k]) == 160 - len(held)
    # every galaxy is still scored, whatever the training size
    assert np.bincount(small.folds).sum() == 160
    assert small.settings["train_size"] == 30 and whole.metrics["n"] == 160
    with pytest.raises(ValueError, match="train_size must be at least 2 galaxies, got 1"):
        cross_fit(data, TrainingConfig(**KW), n_folds=4, train_size=1)
    with pytest.raises(ValueError, match="too few for an inner validation fraction of 0.2"):
        cross_fit(data, TrainingConfig(**KW), n_folds=4, train_size=6)


def test_replay_and_repeat_join_every_fold_and_are_never_scored(memorising_training,
                                                                labelled_set):
    data, replay = labelled_set.subset(np.arange(60)), labelled_set.subset(np.arange(60, 85))
    result = cross_fit(data, TrainingConfig(**KW), n_folds=3, seed=0, replay=replay,
                       real_repeat=2, val_fraction=0, init_from="pretrained.pt",
                       baselines=False)
    assert len(result.predictions) == 60
    for k, call in enumerate(memorising_training):
        assert call["val"] is None and len(result.val_indices[k]) == 0
        assert len(call["train"]) == 2 * len(result.train_indices[k]) + 25
        assert _image_keys(replay) <= _image_keys(call["train"])
        assert call["init_from"] == "pretrained.pt"
    assert result.settings["n_replay"] == 25 and result.settings["real_repeat"] == 2


def test_cross_fit_errors(memorising_training, labelled_set):
    data = labelled_set.subset(np.arange(40))
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        cross_fit(data, TrainingConfig(**KW), val_fraction=1.0)
    with pytest.raises(TypeError, match="replay must be a LabelledCutouts, got ndarray"):
        cross_fit(data, TrainingConfig(**KW), replay=np.zeros(3))
    with pytest.raises(TypeError, match=r"unknown settings \['epoch'\]"):
        cross_fit(data, TrainingConfig(**KW), epoch=3)
    data.catalog["oh_p50"][3] = np.nan
    with pytest.raises(ValueError,
                       match="every galaxy needs a metallicity label to be cross-fitted; 1 have"):
        cross_fit(data, TrainingConfig(**KW))
    assert memorising_training == []


def test_calibration_compare_table_and_report(memorising_training, labelled_set):
    data = labelled_set.subset(np.arange(60))
    result = cross_fit(data, TrainingConfig(**KW), n_folds=3, seed=0)
    # the raw sigma is the network's own (0.1), not the starting metadata's scale of 7
    np.testing.assert_allclose(result.raw_errors, 0.1)
    truth = data.targets(["metallicity"])[:, 0]
    expected = calibrate_out_of_fold(truth, np.zeros(60), np.full(60, 0.1), result.folds)
    assert result.calibration["scale"] == pytest.approx(expected["scale"])
    np.testing.assert_allclose(result.errors, expected["err_cross_validated"])
    assert result.metrics["coverage_1sigma"] == pytest.approx(
        expected["coverage_cross_validated"])
    assert result.metrics["rmse"] == pytest.approx(np.sqrt(np.mean(truth**2)))
    assert {"training_mean", "image_colours", "gri_photometry"} <= set(result.metrics["baselines"])
    # the baselines were fitted on the folds: beating a memoriser that predicts 0 is easy
    assert result.metrics["rmse_gain_over_baselines"]["training_mean"]["difference"] < -8
    assert len(result.metrics["per_fold"]) == 3
    for model in result.models:
        assert model.metadata["error_scale"]["metallicity"] == result.calibration["scale"]
    table = result.to_table()
    assert table.colnames[:4] == ["objID", "oh_p50", "fold", "oof_metallicity"]
    assert "oof_image_colours" in table.colnames and len(table) == 60
    report = json.loads(json.dumps(result.report()))
    assert report["folds"]["n_held_out"] == [20, 20, 20]
    # paired bootstrap: the fold-fitted mean beats the memoriser, by the same amount both ways
    mean_only = cross_fit(data, TrainingConfig(**KW), n_folds=3, seed=0, baselines=False)
    mean_only.predictions = result.baseline_predictions["training_mean"]
    gain = mean_only.compare(result, n_boot=200)
    assert gain["difference"] > 8 and gain["ci95"][0] > 0 and gain["n"] == 60
    other = cross_fit(labelled_set.subset(np.arange(60, 120)), TrainingConfig(**KW),
                      n_folds=3, baselines=False)
    with pytest.raises(ValueError, match="not of the same galaxies"):
        result.compare(other)


# ----------------------------------------------------------------------------- real networks


def test_cross_fit_tiny_network_learns_and_resumes(labelled_set, tmp_path):
    config = TrainingConfig(epochs=8, seed=0, patience=10, **KW)
    result = cross_fit(labelled_set, config, n_folds=2, seed=0, checkpoint_dir=tmp_path,
                       baselines=False)
    truth = labelled_set.targets(["metallicity"])[:, 0]
    assert np.all(np.isfinite(result.predictions)) and np.all(result.raw_errors > 0)
    # out of fold, the network beats predicting the mean by far (0.076 against 0.16 dex)
    assert result.metrics["rmse"] < 0.7 * np.std(truth)
    for k, path in enumerate(result.model_paths):
        assert path == tmp_path / f"fold{k}" / "best.pt" and path.is_file()
        stage = result.models[k].metadata["training"][-1]
        assert stage["n_train"] == len(result.train_indices[k])
        assert stage["n_val"] == len(result.val_indices[k])
    # a rerun resumes every finished fold: same predictions, no training
    again = cross_fit(labelled_set, config, n_folds=2, seed=0, checkpoint_dir=tmp_path,
                      baselines=False)
    np.testing.assert_allclose(again.predictions, result.predictions, atol=1e-6)
    with pytest.raises(ValueError, match="holds a cross-fit of other galaxies, folds or sizes"):
        cross_fit(labelled_set, config, n_folds=2, seed=1, checkpoint_dir=tmp_path)


def test_cross_fit_fine_tunes_a_pretrained_network_with_replay(labelled_set):
    sim = labelled_set.subset(np.arange(96))
    pretrained = train_model(sim, None, TrainingConfig(epochs=1, seed=0, **KW)).model
    real = labelled_set.subset(np.arange(96, 160))
    real.catalog.remove_column("lgm_tot_p50")  # real galaxies: metallicity labels only
    result = cross_fit(real, TrainingConfig(epochs=1, freeze_batchnorm=True, max_lr=1e-3,
                                            device="cpu", batch_size=16),
                       n_folds=2, seed=0, init_from=pretrained, replay=sim.subset(np.arange(32)),
                       real_repeat=2, baselines=False)
    assert np.all(np.isfinite(result.predictions))
    for k, model in enumerate(result.models):
        stages = model.metadata["training"]
        assert len(stages) == 2 and stages[1]["freeze_batchnorm"] is True
        assert stages[1]["n_train"] == 2 * len(result.train_indices[k]) + 32
        assert model.outputs == ["metallicity", "log_mstar"]
    # the starting model is left as it was
    assert len(pretrained.metadata["training"]) == 1


# ----------------------------------------------------------------------------- the recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "crossfit.py"


def _load_recipe():
    if not RECIPE.is_file():
        pytest.skip(f"{RECIPE} is not there (not a source checkout)")
    spec = importlib.util.spec_from_file_location("crossfit_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def test_mass_tilt_weights_lean_to_low_masses():
    from astro_metallicity.train import LabelledCutouts

    recipe = _load_recipe()
    catalog = Table({"objID": [1, 2, 3, 4], "oh_p50": [8.5, 8.9, 9.1, 9.0],
                     "lgm_tot_p50": [9.0, 10.0, 11.0, 10.5]})
    cut = LabelledCutouts(np.zeros((4, 2, 2, 3), np.uint8), catalog)
    # 10**(-0.5 (log M* - 10)): ten times the weight at 10^9 as at 10^11
    np.testing.assert_allclose(recipe.mass_tilt_weights(cut, 0.5),
                               [10 ** 0.5, 1.0, 10 ** -0.5, 10 ** -0.25])
    np.testing.assert_allclose(recipe.mass_tilt_weights(cut, 0.0), 1.0)


def test_recipe_refuses_a_mass_tilt_for_a_pretraining_it_skips(tmp_path, capsys):
    recipe = _load_recipe()
    with pytest.raises(SystemExit) as exc:
        recipe.main(["--output", str(tmp_path), "--pretrained", "net.pt",
                     "--pretrain-mass-tilt", "0.5"])
    assert exc.value.code == 2
    assert "--pretrained PATH skips that pretraining" in capsys.readouterr().err
    assert not (tmp_path / "crossfit_report.json").exists()


@pytest.mark.slow
def test_crossfit_recipe_smoke(labelled_set, tmp_path):
    """recipes/crossfit.py --smoke end to end, on synthetic 'real' JPEGs and a small mock sky."""
    from PIL import Image

    recipe = _load_recipe()
    real = tmp_path / "real"
    (real / "images").mkdir(parents=True)
    for image, objid in zip(labelled_set.images, labelled_set.catalog["objID"]):
        # the simulated cutouts are 128 px: the two sets are stacked for replay
        Image.fromarray(image).resize((128, 128)).save(real / "images" / f"{objid}.jpg")
    labelled_set.catalog["objID", "oh_p50"].write(real / "labels.csv", format="ascii.csv")
    out = tmp_path / "out"
    assert recipe.main(["--output", str(out), "--smoke", "--real-data", str(real),
                        "--device", "cpu", "--n-sim", "150", "--min-sim", "50",
                        "--sizes", "40,400", "--n-boot", "50", "--members", "2",
                        "--bundle", str(out / "model"), "--n-fresh", "120"]) == 0
    report = json.loads((out / "crossfit_report.json").read_text())
    assert report["smoke"] and report["real_data"]["n"] == 160
    headline = report["real_400"]
    for name in ("real_only", "sim_pretrained"):
        assert headline[name]["metrics"]["n"] == 160
        assert headline[name]["folds"]["n_held_out"] == [80, 80]
        assert len(report["fold_models"][name]) == 2
    assert headline["sim_pretrained_vs_real_only"]["n"] == 160
    assert 0 < headline["error_calibration"]["coverage_cross_validated"] < 1
    curve = report["data_size_curve"]
    assert [e["requested"] for e in curve] == [[40], [400]]
    assert [e["n_given_per_fold"] for e in curve] == [[40, 40], [80, 80]]
    assert curve[1]["real_only"]["rmse"] == pytest.approx(headline["real_only"]["metrics"]["rmse"])
    assert report["pretrained_only"]["n"] == 160
    # the pretraining set is resampled towards low masses (default tilt 0.5): repeats
    pretrained = report["pretrained"]
    assert pretrained["mass_tilt"] == 0.5
    assert pretrained["distinct_train"] < pretrained["n_train"]
    table = Table.read(out / "crossfit_oof.ecsv")
    assert len(table) == 160 and {"real_only", "sim_pretrained", "image_colours",
                                  "pretrained_only", "fold"} <= set(table.colnames)
    for figure in report["figures"]:
        assert Path(figure).is_file() or (RECIPE.parents[1] / figure).is_file()
    # ensembles of two networks per fold: member 0 is the headline network of each kind,
    # so the mixed ensemble is the mean of the two headline predictions
    ens = report["ensembles"]
    assert ens["members"] == 2 and ens["member_seeds"] == [0, 1000]
    assert ens["mixed"]["networks"] == ["real_only member 0", "sim_pretrained member 0"]
    truth = np.asarray(table["oh_p50"])
    mixed = (np.asarray(table["real_only"]) + np.asarray(table["sim_pretrained"])) / 2
    assert np.asarray(table["ensemble_mixed"]) == pytest.approx(mixed)
    assert ens["mixed"]["rmse"] == pytest.approx(np.sqrt(np.mean((mixed - truth) ** 2)))
    # the second real-only member is another network (its own seed), not a copy
    second = 2 * np.asarray(table["ensemble_real_only"]) - np.asarray(table["real_only"])
    assert np.abs(second - np.asarray(table["real_only"])).max() > 1e-4
    assert ens["mixed_vs_real_only"]["n"] == 160
    assert 0 < ens["mixed"]["coverage_1sigma_cross_validated"] < 1

    # --bundle: the recipe's model, scored out of fold as its fold networks combined
    from astro_metallicity.model import load_model

    bundle = report["bundle"]
    assert bundle["members"] == ["real_only", "sim_pretrained"]
    # by default each network learns from every real galaxy (no early-stopping part)
    assert bundle["final_training"]["n_train"] == 160
    assert bundle["final_training"]["n_early_stopping"] == 0
    # the same two networks per fold as the mixed ensemble, averaged the same way
    assert bundle["real_400"]["rmse"] == pytest.approx(ens["mixed"]["rmse"], rel=1e-5)
    assert bundle["real_400"]["vs_real_only_pair"]["n"] == 160
    model = load_model(out / "model" / "metallicity_resnet18.pt", device="cpu")
    assert model.metadata["arch"] == "ensemble"
    assert [m.metadata["ensemble_member"] for m in model.members] == bundle["members"]
    assert model.metadata["ensemble"]["init_member"] == "sim_pretrained"
    assert model.metadata["error_scale"]["metallicity"] == pytest.approx(
        bundle["real_400"]["error_calibration"]["metallicity_error_scale"])
    assert model.ood_reference is not None and model.metadata["cutout_source"] == "jpeg"
    # the saved file reproduces the recorded in-sample figures on the 160 it was trained on
    images = np.stack([np.asarray(Image.open(real / "images" / f"{o}.jpg"))
                       for o in labelled_set.catalog["objID"]])
    pred = model.predict(images)["metallicity"]
    assert np.sqrt(np.mean((pred - truth) ** 2)) == pytest.approx(
        bundle["in_sample_400"]["rmse"], abs=1e-4)
    # and on the fixed fifth the bundled model's quick test predicts
    check = np.isin(np.asarray(labelled_set.catalog["objID"]), bundle["in_sample_check"]["objids"])
    assert check.sum() == bundle["in_sample_check"]["n"] == 32
    assert np.sqrt(np.mean((pred[check] - truth[check]) ** 2)) == pytest.approx(
        bundle["in_sample_check"]["rmse"], abs=1e-4)
    sim_check = bundle["fresh_sim_sky"]
    assert {"bundle", "real_only", "sim_pretrained"} <= set(sim_check)
    assert {"mzr", "gri_photometry"} <= set(sim_check["bundle"]["baselines"])
