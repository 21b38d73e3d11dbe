"""Metrics of predictions against the truth (private; used by training and evaluation).

NMAD is the normalised median absolute deviation of the residuals,
1.4826 median(|r - median(r)|) (`astropy.stats.mad_std`).
"""

import itertools
import math

import numpy as np
from astropy.stats import mad_std

__all__ = [
    "binned_bias",
    "coverage",
    "regression_report",
    "residual_metrics",
    "rmse_difference",
]


def residual_metrics(true, pred):
    """RMSE, NMAD and bias of predictions.

    Parameters
    ----------
    true, pred : array-like
        True and predicted values; pairs with a NaN are ignored.

    Returns
    -------
    metrics : dict
        ``rmse``, ``nmad`` (1.4826 x median absolute deviation of the residuals
        from their median, `astropy.stats.mad_std`), ``bias`` (mean residual,
        pred - true) and ``n``.
    """
    true = np.asarray(true, dtype=float)
    pred = np.asarray(pred, dtype=float)
    ok = np.isfinite(true) & np.isfinite(pred)
    r = pred[ok] - true[ok]
    if not len(r):
        return {"rmse": float("nan"), "nmad": float("nan"), "bias": float("nan"), "n": 0}
    return {
        "rmse": float(np.sqrt(np.mean(r**2))),
        "nmad": float(mad_std(r)),
        "bias": float(np.mean(r)),
        "n": len(r),
    }


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
