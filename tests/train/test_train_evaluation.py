"""Evaluation numbers against hand computations, baselines and figures."""

import json

import numpy as np
import pytest

from astro_metallicity.relations import tremonti_mzr
from astro_metallicity.train import calibrate_error_scale, evaluate, write_report
from astro_metallicity.train._baselines import (
    fit_baselines,
    image_colour_features,
    photometry_features,
)
from astro_metallicity.train._metrics import (
    binned_bias,
    coverage,
    regression_report,
    residual_metrics,
    rmse_difference,
)

# NMAD of a Gaussian equals its sigma with this factor: 1 / Phi^-1(3/4) = 1.4826...
NMAD_FACTOR = 1 / 0.6744897501960817


def test_residual_metrics_by_hand():
    true = np.array([8.8, 8.9, 9.0, 9.1, 9.2, np.nan])
    r = np.array([0.1, -0.1, 0.2, 0.0, -0.3, 0.0])
    m = residual_metrics(true, true + r)
    # median(r) = 0, |r - 0| = .1 .1 .2 0 .3 -> median .1
    assert m["nmad"] == pytest.approx(NMAD_FACTOR * 0.1)
    assert m["rmse"] == pytest.approx(np.sqrt((0.01 + 0.01 + 0.04 + 0.0 + 0.09) / 5))
    assert m["bias"] == pytest.approx(-0.1 / 5)
    assert m["n"] == 5
    report = regression_report(true, true + r, err=np.full(6, 0.15), outlier_threshold=0.25)
    assert report["outlier_fraction"] == pytest.approx(1 / 5)
    assert report["coverage_1sigma"] == pytest.approx(3 / 5)  # |r| <= 0.15: .1 .1 0
    default = regression_report(true, true + r)
    assert default["outlier_threshold"] == pytest.approx(3 * NMAD_FACTOR * 0.1)
    assert default["outlier_fraction"] == pytest.approx(0.0)
    assert np.isnan(residual_metrics([np.nan], [1.0])["rmse"])


def test_coverage_and_calibration():
    rng = np.random.default_rng(0)
    true = np.zeros(20000)
    pred = rng.normal(0, 0.2, 20000)
    err = np.full(20000, 0.1)  # too small by a factor 2
    assert coverage(true, pred, err) == pytest.approx(0.383, abs=0.01)
    scale = calibrate_error_scale(true, pred, err)
    assert scale == pytest.approx(2.0, rel=0.03)
    assert coverage(true, pred, scale * err) == pytest.approx(0.6827, abs=0.002)
    with pytest.raises(ValueError, match="at least one finite row"):
        calibrate_error_scale([1.0], [1.0], [0.0])


def test_binned_bias_by_hand():
    x = np.array([9.1, 9.2, 9.8, 10.4, 10.6])
    true = np.array([8.5, 8.6, 8.8, 9.0, 9.1])
    pred = true + np.array([0.2, 0.0, -0.1, 0.1, 0.3])
    rows = binned_bias(x, true, pred, [9.0, 9.5, 10.0, 10.5, 11.0, 11.5])
    assert [r["n"] for r in rows] == [2, 1, 1, 1, 0]
    assert rows[0]["bias"] == pytest.approx(0.1)
    assert rows[0]["rmse"] == pytest.approx(np.sqrt(0.02))
    assert rows[4]["bias"] is None


def test_feature_functions(labelled_set):
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    images[0, ..., 0] = 100
    images[1, 2:6, 2:6] = (40, 20, 10)
    f = image_colour_features(images)
    assert f.shape == (2, 16)
    np.testing.assert_allclose(f[0, :5], [100, 0, 0, 100, 0])
    np.testing.assert_allclose(f[1, :5], [40, 20, 10, 20, 10])  # central quarter
    np.testing.assert_allclose(f[1, -1], 70 / (70 * 16 / 64))  # concentration
    phot = photometry_features(labelled_set.catalog)
    g, r = labelled_set.catalog["modelMag_g"], labelled_set.catalog["modelMag_r"]
    np.testing.assert_allclose(phot[:, 3], np.asarray(g) - np.asarray(r))
    assert photometry_features(labelled_set.catalog[["oh_p50"]]) is None


class _FixedModel:
    """A stand-in with the MetallicityModel.predict interface returning given numbers."""

    def __init__(self, pred, err):
        self.pred, self.err = pred, err

    def predict(self, images, batch_size=None, tta=True):
        assert len(images) == len(self.pred)
        return {"metallicity": self.pred, "metallicity_err": self.err}


def test_evaluate_report_matches_hand_computation(labelled_set, tmp_path):
    train, test = labelled_set.subset(np.arange(100)), labelled_set.subset(np.arange(100, 160))
    true = test.targets(["metallicity"])[:, 0]
    rng = np.random.default_rng(1)
    pred = true + rng.normal(0.02, 0.05, len(true))
    err = np.full(len(true), 0.05)
    report, preds = evaluate(_FixedModel(pred, err), test, train=train, figures_dir=tmp_path,
                             label="sim", return_predictions=True)
    r = pred - true
    assert report["n"] == 60
    assert report["cnn"]["rmse"] == pytest.approx(np.sqrt(np.mean(r**2)))
    assert report["cnn"]["bias"] == pytest.approx(np.mean(r))
    assert report["cnn"]["nmad"] == pytest.approx(NMAD_FACTOR * np.median(np.abs(r - np.median(r))))
    assert report["cnn"]["coverage_1sigma"] == pytest.approx(np.mean(np.abs(r) <= 0.05))
    assert set(report["baselines"]) == {"mzr", "training_mean", "image_colours",
                                        "gri_photometry"}
    mass = test.targets(["log_mstar"])[:, 0]
    mzr_r = tremonti_mzr(mass) - true
    assert report["baselines"]["mzr"]["rmse"] == pytest.approx(np.sqrt(np.mean(mzr_r**2)))
    train_mean = np.mean(train.targets(["metallicity"])[:, 0])
    assert report["baselines"]["training_mean"]["bias"] == pytest.approx(np.mean(train_mean - true))
    np.testing.assert_allclose(preds["cnn"], pred)
    gain = report["rmse_gain_over_baselines"]["mzr"]
    assert gain["difference"] == pytest.approx(np.sqrt(np.mean(mzr_r**2)) - np.sqrt(np.mean(r**2)))
    assert gain["ci95"][0] < gain["difference"] < gain["ci95"][1]
    assert len(report["bias_by_mass"]) == 6 and len(report["bias_by_metallicity"]) == 5
    assert sum(row["n"] for row in report["bias_by_mass"]) == np.sum((mass >= 8.5) & (mass < 11.5))
    for name in ("sim_pred_vs_true.png", "sim_mzr.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    json.dumps(report, allow_nan=False)


def test_rmse_difference_by_hand():
    true = np.array([8.5, 8.7, 8.9, 9.1, np.nan])
    pred = np.array([8.6, 8.6, 9.0, 9.0, 9.0])  # residuals all 0.1 in size
    worse = true + 0.3
    result = rmse_difference(true, pred, worse, n_boot=200)
    assert result["n"] == 4
    assert result["difference"] == pytest.approx(0.2)
    assert result["relative"] == pytest.approx(0.2 / 0.3)
    # every resample has the same residual sizes: the interval collapses on 0.2
    np.testing.assert_allclose(result["ci95"], [0.2, 0.2])
    # a tie with noise: the interval straddles 0
    rng = np.random.default_rng(3)
    truth = rng.normal(8.9, 0.2, 2000)
    a, b = truth + rng.normal(0, 0.1, 2000), truth + rng.normal(0, 0.1, 2000)
    tie = rmse_difference(truth, a, b)
    assert tie["ci95"][0] < 0 < tie["ci95"][1]
    assert np.isnan(rmse_difference([np.nan], [1.0], [1.0])["difference"])


def test_fit_baselines_learn_colour(labelled_set):
    train, test = labelled_set.subset(np.arange(120)), labelled_set.subset(np.arange(120, 160))
    baselines = fit_baselines(train)
    report = evaluate(_FixedModel(np.full(40, 8.9), np.full(40, 0.1)), test,
                      baselines=baselines)
    # the synthetic images encode metallicity in their colours: the colour baseline sees it
    assert (report["baselines"]["image_colours"]["rmse"]
            < 0.7 * report["baselines"]["training_mean"]["rmse"])


def test_write_report_writes_json_with_nulls(tmp_path):
    path = write_report({"cnn": {"rmse": np.float64(0.1), "nmad": float("nan")}, "n": np.int64(3)},
                        tmp_path / "new" / "report.json")
    assert path == tmp_path / "new" / "report.json"
    assert json.loads(path.read_text()) == {"cnn": {"rmse": 0.1, "nmad": None}, "n": 3}


def test_figures_never_search_for_the_best_legend_place(labelled_set, tmp_path, monkeypatch):
    """loc='best' scans every plotted point (slow on large sets, and it warns): not used."""
    from matplotlib.legend import Legend

    def refuse(self, *args, **kwargs):
        raise AssertionError("a legend was placed with loc='best'")

    monkeypatch.setattr(Legend, "_find_best_position", refuse)
    true = labelled_set.targets(["metallicity"])[:, 0]
    report = evaluate(_FixedModel(true + 0.05, np.full(len(true), 0.1)), labelled_set,
                      figures_dir=tmp_path, label="all")
    assert [p.rsplit("/", 1)[-1] for p in report["figures"]] == ["all_pred_vs_true.png",
                                                                   "all_mzr.png"]
