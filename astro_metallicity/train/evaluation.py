"""Evaluating a metallicity model against the truth and against baselines.

`evaluate` runs a model on a held-out `LabelledCutouts` and reports, for
12+log(O/H): RMSE, NMAD = 1.4826 median(|r - median(r)|) of the residuals
``r = predicted - true``, bias, outlier fraction, the fraction of galaxies
inside the +-1 sigma error bar (coverage; 68.3% for calibrated errors), the
width of the predicted and true distributions (the paper saw the predicted one
narrower: regression to the mean), and the bias per stellar-mass and per
metallicity bin (the paper saw low-mass galaxies predicted too metal-rich).

The same test set is scored by the baselines of Wu & Boada (2018):

* ``mzr``: the mass-metallicity relation of Tremonti et al. (2004) applied to
  the catalogue stellar mass (no fitting);
* ``gri_photometry``: gradient boosting on the *gri* model magnitudes and
  colours of the catalogue (the paper used a random forest);
* ``image_colours``: gradient boosting on mean colours of the cutout itself
  (R, G, B and their differences in the central quarter, central half and
  whole image, plus a concentration ratio): a CNN that does not beat it has
  learned little beyond colour;
* ``training_mean``: predicting the mean training label.

Figures (`plot_pred_vs_true`, `plot_mzr`) are drawn with matplotlib's
object-oriented API (no pyplot state, works headless).
"""

import itertools
import json
import math
from pathlib import Path

import numpy as np

from ..logger import log
from ..mock.population import tremonti_mzr
from .training import residual_metrics

__all__ = [
    "binned_bias",
    "calibrate_error_scale",
    "coverage",
    "evaluate",
    "fit_baselines",
    "image_colour_features",
    "photometry_features",
    "plot_mzr",
    "plot_pred_vs_true",
    "predict_baselines",
    "regression_report",
    "rmse_difference",
    "write_report",
]

_DEFAULT_MASS_BINS = (8.5, 9.0, 9.5, 10.0, 10.5, 11.0, 11.5)
_DEFAULT_Z_BINS = (8.2, 8.5, 8.7, 8.9, 9.1, 9.3)


def coverage(true, pred, err):
    """Fraction of finite rows with ``|pred - true| <= err``.

    Parameters
    ----------
    true, pred, err : array-like
        Truth, prediction and 1-sigma error.

    Returns
    -------
    fraction : float
    """
    true, pred, err = (np.asarray(a, dtype=float) for a in (true, pred, err))
    ok = np.isfinite(true) & np.isfinite(pred) & np.isfinite(err)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(pred[ok] - true[ok]) <= err[ok]))


def calibrate_error_scale(true, pred, err, *, target=0.6827):
    """Factor by which to multiply ``err`` so that a fraction ``target`` lies within 1 sigma.

    Parameters
    ----------
    true, pred, err : array-like
        Truth, prediction and uncalibrated 1-sigma error (> 0).
    target : float
        Desired coverage (0.6827 for Gaussian 1 sigma).

    Returns
    -------
    scale : float
        The ``target`` quantile of ``|pred - true| / err``.
    """
    true, pred, err = (np.asarray(a, dtype=float) for a in (true, pred, err))
    ok = np.isfinite(true) & np.isfinite(pred) & np.isfinite(err) & (err > 0)
    if not ok.any():
        msg = "calibrate_error_scale needs at least one finite row with err > 0"
        raise ValueError(msg)
    return float(np.quantile(np.abs(pred[ok] - true[ok]) / err[ok], target))


def regression_report(true, pred, err=None, *, outlier_threshold=None):
    """Metrics of one set of predictions.

    Parameters
    ----------
    true, pred : array-like
        Truth and prediction.
    err : array-like, optional
        1-sigma errors; adds ``coverage_1sigma``.
    outlier_threshold : float, optional
        A residual larger than this (dex) is an outlier. Default: 3 x NMAD.

    Returns
    -------
    report : dict
        ``rmse``, ``nmad``, ``bias``, ``n``, ``outlier_fraction``,
        ``outlier_threshold``, ``pred_std``, ``true_std``, and ``coverage_1sigma``
        when ``err`` is given.
    """
    true = np.asarray(true, dtype=float)
    pred = np.asarray(pred, dtype=float)
    report = residual_metrics(true, pred)
    ok = np.isfinite(true) & np.isfinite(pred)
    r = pred[ok] - true[ok]
    threshold = 3 * report["nmad"] if outlier_threshold is None else float(outlier_threshold)
    report["outlier_threshold"] = threshold
    report["outlier_fraction"] = float(np.mean(np.abs(r) > threshold)) if len(r) else math.nan
    report["pred_std"] = float(np.std(pred[ok])) if len(r) else math.nan
    report["true_std"] = float(np.std(true[ok])) if len(r) else math.nan
    if err is not None:
        report["coverage_1sigma"] = coverage(true, pred, err)
    return report


def rmse_difference(true, pred, reference, *, n_boot=1000, seed=0):
    """How much lower the RMSE of ``pred`` is than that of ``reference``, with a 95% interval.

    The interval comes from a paired bootstrap: the same resampled galaxies score
    both predictions, so it measures whether one beats the other on this test
    set, not just the scatter of each RMSE.

    Parameters
    ----------
    true, pred, reference : array-like
        Truth, the predictions being tested and the reference (baseline) predictions;
        galaxies with a NaN in any of them are left out.
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling.

    Returns
    -------
    result : dict
        ``difference`` (reference RMSE - pred RMSE, dex; positive: ``pred`` is
        better), ``relative`` (difference / reference RMSE), ``ci95`` (2.5th and
        97.5th percentiles of the bootstrap differences) and ``n``.
    """
    true, pred, reference = (np.asarray(a, dtype=float) for a in (true, pred, reference))
    ok = np.isfinite(true) & np.isfinite(pred) & np.isfinite(reference)
    sq_pred, sq_ref = (pred[ok] - true[ok]) ** 2, (reference[ok] - true[ok]) ** 2
    n = len(sq_pred)
    if n == 0:
        return {"difference": float("nan"), "relative": float("nan"),
                "ci95": [float("nan"), float("nan")], "n": 0}
    ref_rmse = np.sqrt(sq_ref.mean())
    difference = ref_rmse - np.sqrt(sq_pred.mean())
    index = np.random.default_rng(seed).integers(0, n, (int(n_boot), n))
    boot = np.sqrt(sq_ref[index].mean(axis=1)) - np.sqrt(sq_pred[index].mean(axis=1))
    return {"difference": float(difference), "relative": float(difference / ref_rmse),
            "ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])], "n": int(n)}


def binned_bias(x, true, pred, edges):
    """Bias and RMSE of predictions in bins of ``x``.

    Parameters
    ----------
    x : array-like
        Quantity to bin on (e.g. catalogue stellar mass or true metallicity).
    true, pred : array-like
        Truth and prediction.
    edges : sequence of float
        Bin edges.

    Returns
    -------
    bins : list of dict
        ``lo``, ``hi``, ``n``, ``bias`` (mean pred - true), ``rmse`` per bin
        (None where empty).
    """
    x, true, pred = (np.asarray(a, dtype=float) for a in (x, true, pred))
    rows = []
    for lo, hi in itertools.pairwise(edges):
        sel = (x >= lo) & (x < hi) & np.isfinite(true) & np.isfinite(pred)
        r = pred[sel] - true[sel]
        rows.append({"lo": float(lo), "hi": float(hi), "n": int(sel.sum()),
                     "bias": float(r.mean()) if len(r) else None,
                     "rmse": float(np.sqrt(np.mean(r**2))) if len(r) else None})
    return rows


def image_colour_features(images):
    """Mean-colour features of colour cutouts (the ``image_colours`` baseline).

    Parameters
    ----------
    images : `~numpy.ndarray`
        uint8 ``(N, H, W, 3)``.

    Returns
    -------
    features : `~numpy.ndarray`
        ``(N, 16)``: mean R, G, B, R-G and G-B in the central quarter, the central
        half and the whole image, and the ratio of central-quarter to whole-image
        brightness.
    """
    images = np.asarray(images)
    n, h, w = images.shape[:3]
    feats = []
    brightness = []
    for frac in (4, 2, 1):
        ch, cw = max(1, h // frac), max(1, w // frac)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        mean = images[:, y0:y0 + ch, x0:x0 + cw].reshape(n, -1, 3).astype(np.float64).mean(1)
        feats += [mean, mean[:, :1] - mean[:, 1:2], mean[:, 1:2] - mean[:, 2:3]]
        brightness.append(mean.sum(axis=1))
    feats.append((brightness[0] / np.maximum(brightness[2], 1e-3))[:, None])
    return np.concatenate(feats, axis=1)


def photometry_features(catalog):
    """*gri* magnitudes and colours from a catalogue (the ``gri_photometry`` baseline).

    Parameters
    ----------
    catalog : `~astropy.table.Table`
        With ``modelMag_g``, ``modelMag_r``, ``modelMag_i``.

    Returns
    -------
    features : `~numpy.ndarray` or None
        ``(N, 6)``: g, r, i, g-r, r-i, g-i; None if the columns are missing.
    """
    names = ("modelMag_g", "modelMag_r", "modelMag_i")
    if not all(name in catalog.colnames for name in names):
        return None
    g, r, i = (np.asarray(getattr(catalog[k], "value", catalog[k]), dtype=float) for k in names)
    return np.stack([g, r, i, g - r, r - i, g - i], axis=1)


def _target(cutouts, name):
    return cutouts.targets([name])[:, 0]


def fit_baselines(train, *, seed=0):
    """Fit the learned baselines on a training `LabelledCutouts`.

    Parameters
    ----------
    train : `~astro_metallicity.train.LabelledCutouts`
        Training cutouts with ``oh_p50`` (and model magnitudes for ``gri_photometry``).
    seed : int
        Random seed of the gradient boosting.

    Returns
    -------
    baselines : dict
        ``'training_mean'`` (float), ``'image_colours'`` and, when the catalogue has
        *gri* magnitudes, ``'gri_photometry'`` (fitted scikit-learn regressors).
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    y = _target(train, "metallicity")
    ok = np.isfinite(y)
    baselines = {"training_mean": float(np.mean(y[ok]))}

    def fit(features):
        model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05,
                                              max_leaf_nodes=15, random_state=seed)
        good = ok & np.all(np.isfinite(features), axis=1)
        return model.fit(features[good], y[good])

    baselines["image_colours"] = fit(image_colour_features(train.images))
    photometry = photometry_features(train.catalog)
    if photometry is not None:
        baselines["gri_photometry"] = fit(photometry)
    return baselines


def predict_baselines(baselines, cutouts):
    """Predictions of every baseline that applies to ``cutouts``.

    Parameters
    ----------
    baselines : dict or None
        From `fit_baselines` (None: only the MZR baseline).
    cutouts : `~astro_metallicity.train.LabelledCutouts`
        The test set.

    Returns
    -------
    predictions : dict of `~numpy.ndarray`
    """
    out = {}
    mass = _target(cutouts, "log_mstar")
    if np.isfinite(mass).any():
        out["mzr"] = np.where(np.isfinite(mass), tremonti_mzr(np.nan_to_num(mass, nan=10)),
                              np.nan)
    for name, model in (baselines or {}).items():
        if name == "training_mean":
            out[name] = np.full(len(cutouts), model)
        elif name == "image_colours":
            out[name] = model.predict(image_colour_features(cutouts.images))
        elif name == "gri_photometry":
            features = photometry_features(cutouts.catalog)
            if features is not None:
                pred = np.full(len(cutouts), np.nan)
                good = np.all(np.isfinite(features), axis=1)
                if good.any():
                    pred[good] = model.predict(features[good])
                out[name] = pred
    return out


def _clean(value):
    """Make a report JSON-safe (NaN -> None, numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate(model, test, *, baselines=None, train=None, figures_dir=None, label="test",
             outlier_threshold=None, mass_bins=_DEFAULT_MASS_BINS,
             metallicity_bins=_DEFAULT_Z_BINS, batch_size=None, tta=True,
             return_predictions=False):
    """Evaluate a model on a held-out set, next to the baselines.

    Parameters
    ----------
    model : `~astro_metallicity.model.MetallicityModel`
        The model to test.
    test : `~astro_metallicity.train.LabelledCutouts` or path
        Held-out cutouts with labels.
    baselines : dict, optional
        Fitted baselines from `fit_baselines`. If None and ``train`` is given,
        they are fitted on ``train``; otherwise only the MZR baseline is scored.
    train : `~astro_metallicity.train.LabelledCutouts`, optional
        Training set for fitting the baselines.
    figures_dir : str or path-like, optional
        Write the figures (``{label}_pred_vs_true.png``, ``{label}_mzr.png``) here.
    label : str
        Name of the test set in the report and the figure names.
    outlier_threshold : float, optional
        Outlier residual in dex; default 3 x NMAD of the CNN.
    mass_bins, metallicity_bins : sequence of float
        Bin edges for the binned bias.
    batch_size : int, optional
        Inference batch size (default ``conf.batch_size``).
    tta : bool
        Use dihedral test-time augmentation.
    return_predictions : bool
        Also return the predictions.

    Returns
    -------
    report : dict
        JSON-serialisable metrics: ``cnn`` (metallicity), ``cnn_log_mstar`` when the
        model predicts it and labels exist, ``baselines``, ``rmse_gain_over_baselines``
        (`rmse_difference` of the CNN against each baseline), ``bias_by_mass``,
        ``bias_by_metallicity``, ``figures``.
    predictions : dict, optional
        With ``return_predictions=True``: ``'true'``, ``'cnn'``, ``'cnn_err'`` and one
        array per baseline.
    """
    from .training import _as_cutouts

    test = _as_cutouts(test, "test")
    if baselines is None and train is not None:
        baselines = fit_baselines(train)
    pred = model.predict(test.images, batch_size=batch_size, tta=tta)
    true = _target(test, "metallicity")
    report = {"label": label, "n": len(test), "tta": bool(tta)}
    report["cnn"] = regression_report(true, pred["metallicity"], pred["metallicity_err"],
                                      outlier_threshold=outlier_threshold)
    threshold = report["cnn"]["outlier_threshold"]
    mass_true = _target(test, "log_mstar")
    if "log_mstar" in pred and np.isfinite(mass_true).any():
        report["cnn_log_mstar"] = regression_report(mass_true, pred["log_mstar"],
                                                    pred["log_mstar_err"])
    base_pred = predict_baselines(baselines, test)
    report["baselines"] = {name: regression_report(true, values, outlier_threshold=threshold)
                           for name, values in base_pred.items()}
    report["rmse_gain_over_baselines"] = {
        name: rmse_difference(true, pred["metallicity"], values)
        for name, values in base_pred.items()}
    if np.isfinite(mass_true).any():
        report["bias_by_mass"] = binned_bias(mass_true, true, pred["metallicity"], mass_bins)
    report["bias_by_metallicity"] = binned_bias(true, true, pred["metallicity"],
                                                metallicity_bins)
    report["figures"] = []
    if figures_dir is not None:
        figures_dir = Path(figures_dir)
        figures_dir.mkdir(parents=True, exist_ok=True)
        path = figures_dir / f"{label}_pred_vs_true.png"
        plot_pred_vs_true(true, pred["metallicity"], path,
                          title=f"{label}: RMSE {report['cnn']['rmse']:.3f} dex, "
                                f"NMAD {report['cnn']['nmad']:.3f} dex")
        report["figures"].append(str(path))
        if np.isfinite(mass_true).any():
            path = figures_dir / f"{label}_mzr.png"
            plot_mzr(mass_true, pred["metallicity"], true, path, title=label)
            report["figures"].append(str(path))
    summary = ", ".join(f"{k} {v['rmse']:.4f}" for k, v in report["baselines"].items())
    log.info(f"{label}: CNN RMSE {report['cnn']['rmse']:.4f} NMAD {report['cnn']['nmad']:.4f} "
             f"coverage {report['cnn']['coverage_1sigma']:.3f}; baselines RMSE: {summary}")
    report = _clean(report)
    if return_predictions:
        predictions = {"true": true, "cnn": pred["metallicity"],
                       "cnn_err": pred["metallicity_err"], **base_pred}
        return report, predictions
    return report


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=120, layout="constrained")


def plot_pred_vs_true(true, pred, path, *, bins=40, title=None, label="12 + log(O/H)"):
    """Predicted vs true 2-D histogram with marginal distributions.

    Parameters
    ----------
    true, pred : array-like
        Truth and prediction.
    path : str or path-like
        Output image file.
    bins : int
        Histogram bins per axis.
    title : str, optional
        Figure title.
    label : str
        Axis quantity name.

    Returns
    -------
    path : `~pathlib.Path`
    """
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    ok = np.isfinite(true) & np.isfinite(pred)
    true, pred = true[ok], pred[ok]
    lo = np.percentile(np.concatenate([true, pred]), 0.5) - 0.05
    hi = np.percentile(np.concatenate([true, pred]), 99.5) + 0.05
    edges = np.linspace(lo, hi, bins + 1)
    fig = _figure((5.5, 5.5))
    grid = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4))
    ax = fig.add_subplot(grid[1, 0])
    top = fig.add_subplot(grid[0, 0], sharex=ax)
    right = fig.add_subplot(grid[1, 1], sharey=ax)
    ax.hist2d(true, pred, bins=[edges, edges], cmap="Blues", cmin=1)
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    top.hist(true, bins=edges, color="0.4", histtype="step", label="true")
    top.hist(pred, bins=edges, color="C0", histtype="step", label="predicted")
    top.legend(fontsize="small", frameon=False)
    right.hist(pred, bins=edges, orientation="horizontal", color="C0", histtype="step")
    top.tick_params(labelbottom=False)
    right.tick_params(labelleft=False)
    if title:
        fig.suptitle(title, fontsize="medium")
    path = Path(path)
    fig.savefig(path)
    return path


def plot_mzr(log_mstar, pred, true, path, *, title=None):
    """Predicted mass-metallicity relation, with the true one and Tremonti et al. (2004).

    Parameters
    ----------
    log_mstar : array-like
        Catalogue stellar masses, log10(M*/Msun).
    pred, true : array-like
        Predicted and true 12 + log(O/H).
    path : str or path-like
        Output image file.
    title : str, optional
        Figure title.

    Returns
    -------
    path : `~pathlib.Path`
    """
    mass, pred, true = (np.asarray(a, float) for a in (log_mstar, pred, true))
    ok = np.isfinite(mass) & np.isfinite(pred) & np.isfinite(true)
    mass, pred, true = mass[ok], pred[ok], true[ok]
    fig = _figure((6, 4.5))
    ax = fig.add_subplot()
    ax.hist2d(mass, pred, bins=40, cmap="Blues", cmin=1)
    edges = np.linspace(np.percentile(mass, 1), np.percentile(mass, 99), 12)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for values, colour, name in ((true, "k", "true (median)"), (pred, "C1", "CNN (median)")):
        med = [np.median(values[(mass >= a) & (mass < b)]) if np.any((mass >= a) & (mass < b))
               else np.nan for a, b in itertools.pairwise(edges)]
        ax.plot(centres, med, color=colour, lw=2, label=name)
    x = np.linspace(8.5, 11.5, 100)
    ax.plot(x, tremonti_mzr(x), color="C3", ls="--", lw=1, label="Tremonti et al. (2004)")
    ax.set_xlabel("log M* / Msun (catalogue)")
    ax.set_ylabel("predicted 12 + log(O/H)")
    ax.legend(fontsize="small", frameon=False)
    if title:
        ax.set_title(title, fontsize="medium")
    path = Path(path)
    fig.savefig(path)
    return path


def write_report(report, path):
    """Write an evaluation report (dict) as JSON. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(report), indent=2) + "\n")
    return path
