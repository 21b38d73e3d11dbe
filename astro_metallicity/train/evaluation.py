"""Evaluating a metallicity model against the truth and against baselines.

`evaluate` runs a model on a held-out `~astro_metallicity.train.LabelledCutouts`
and reports, for 12+log(O/H): RMSE, NMAD = 1.4826 median(|r - median(r)|) of the
residuals ``r = predicted - true`` (`astropy.stats.mad_std`), bias, outlier
fraction, the fraction of galaxies inside the +-1 sigma error bar (coverage;
68.3% for calibrated errors), the width of the predicted and true distributions
(the paper saw the predicted one narrower: regression to the mean), and the bias
per stellar-mass and per metallicity bin (the paper saw low-mass galaxies
predicted too metal-rich).

The same test set is scored by the baselines of Wu & Boada (2018): the
mass-metallicity relation of Tremonti et al. (2004) on the catalogue stellar
mass (``mzr``), gradient boosting on the catalogue's *gri* photometry
(``gri_photometry``) and on the mean colours of the cutout itself
(``image_colours``: a CNN that does not beat it has learned little beyond
colour), and the mean training label (``training_mean``).

Figures are drawn with matplotlib's object-oriented API (no pyplot state,
works headless).
"""

import itertools
import json
import math
from pathlib import Path

import numpy as np

from ..logger import log
from ..relations import tremonti_mzr
from ._baselines import fit_baselines, label_values, predict_baselines
from ._metrics import binned_bias, regression_report, rmse_difference
from .dataset import _as_cutouts

__all__ = ["calibrate_error_scale", "evaluate", "write_report"]

_DEFAULT_MASS_BINS = (8.5, 9.0, 9.5, 10.0, 10.5, 11.0, 11.5)
_DEFAULT_Z_BINS = (8.2, 8.5, 8.7, 8.9, 9.1, 9.3)


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
    model : `~astro_metallicity.MetallicityModel`
        The model to test.
    test : `~astro_metallicity.train.LabelledCutouts` or path
        Held-out cutouts with labels.
    baselines : dict, optional
        Baselines already fitted on a training set (to score several test sets
        without refitting). If None and ``train`` is given, they are fitted on
        ``train``; otherwise only the MZR baseline is scored.
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
        (how much lower the CNN's RMSE is than each baseline's, with a paired-bootstrap
        95% interval), ``bias_by_mass``,
        ``bias_by_metallicity``, ``figures``.
    predictions : dict, optional
        With ``return_predictions=True``: ``'true'``, ``'cnn'``, ``'cnn_err'`` and one
        array per baseline.
    """
    test = _as_cutouts(test, "test")
    if baselines is None and train is not None:
        baselines = fit_baselines(train)
    pred = model.predict(test.images, batch_size=batch_size, tta=tta)
    true = label_values(test, "metallicity")
    report = {"label": label, "n": len(test), "tta": bool(tta)}
    report["cnn"] = regression_report(true, pred["metallicity"], pred["metallicity_err"],
                                      outlier_threshold=outlier_threshold)
    threshold = report["cnn"]["outlier_threshold"]
    mass_true = label_values(test, "log_mstar")
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
        _plot_pred_vs_true(true, pred["metallicity"], path,
                          title=f"{label}: RMSE {report['cnn']['rmse']:.3f} dex, "
                                f"NMAD {report['cnn']['nmad']:.3f} dex")
        report["figures"].append(str(path))
        if np.isfinite(mass_true).any():
            path = figures_dir / f"{label}_mzr.png"
            _plot_mzr(mass_true, pred["metallicity"], true, path, title=label)
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


def _plot_pred_vs_true(true, pred, path, *, bins=40, title=None, label="12 + log(O/H)"):
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
    # an explicit loc: 'best' searches every plotted point and warns on large sets
    top.legend(loc="upper left", fontsize="small", frameon=False)
    right.hist(pred, bins=edges, orientation="horizontal", color="C0", histtype="step")
    top.tick_params(labelbottom=False)
    right.tick_params(labelleft=False)
    if title:
        fig.suptitle(title, fontsize="medium")
    path = Path(path)
    fig.savefig(path)
    return path


def _plot_mzr(log_mstar, pred, true, path, *, title=None):
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
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    if title:
        ax.set_title(title, fontsize="medium")
    path = Path(path)
    fig.savefig(path)
    return path


def write_report(report, path):
    """Write an evaluation report as JSON.

    Parameters
    ----------
    report : dict
        From `evaluate` (or any dict of numbers, lists and strings); NaN is
        written as ``null``.
    path : str or path-like
        Output file; missing folders are created.

    Returns
    -------
    path : `~pathlib.Path`
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(report), indent=2) + "\n")
    return path
