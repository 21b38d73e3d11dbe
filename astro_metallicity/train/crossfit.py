"""Cross-fitting: an out-of-fold prediction for every labelled galaxy.

With a few hundred labelled galaxies a fixed train/validation split wastes most
of them for evaluation and leaves the figures at the mercy of which galaxies
fell into the validation part. `cross_fit` instead splits the set into
``n_folds`` folds stratified by label, trains one network per fold on the other
folds and predicts the held-out fold with it, so that every galaxy gets a
prediction from a model that never saw it (an *out-of-fold*, OOF, prediction).
Everything a fold's training decides (early stopping, the best epoch, the
baselines' fits, the subsample of a data-size curve) uses that fold's training
part only; the held-out fold is touched once, for its predictions.

`calibrate_out_of_fold` turns the network's predicted sigma into a calibrated
one on the OOF residuals and measures the coverage honestly: each fold's
coverage is scored with the scale fitted on the *other* folds' residuals.
"""

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..logger import log
from ._baselines import fit_baselines, predict_baselines
from ._metrics import coverage, regression_report, rmse_difference
from .dataset import LabelledCutouts, _as_cutouts, _concat_cutouts
from .evaluation import _clean, calibrate_error_scale
from .training import _resolve_config, train_model

__all__ = ["CrossFitResult", "calibrate_out_of_fold", "cross_fit", "stratified_folds"]

_MANIFEST = "crossfit.json"
_ONE_SIGMA = 0.6827


def stratified_folds(labels, n_folds=5, *, seed=0):
    """Assign galaxies to folds of (nearly) equal size and label distribution.

    The galaxies are sorted by label and cut into consecutive groups of
    ``n_folds``; each group sends one galaxy to every fold in a random order.
    Every fold therefore spans the whole label range (no fold without the
    metal-poor tail), and the assignment depends only on the labels and
    ``seed``, not on the order of the rows.

    Parameters
    ----------
    labels : array-like of float
        One finite label per galaxy.
    n_folds : int
        Number of folds (>= 2, at most the number of galaxies).
    seed : int
        Seed of the random order within the groups and of tie-breaking.

    Returns
    -------
    folds : `~numpy.ndarray`
        Integer fold (0 ... ``n_folds`` - 1) of each galaxy; fold sizes differ by
        at most one.

    Raises
    ------
    ValueError
        If a label is not finite or ``n_folds`` is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from astro_metallicity.train import stratified_folds
    >>> folds = stratified_folds(np.linspace(8.2, 9.3, 10), n_folds=5, seed=0)
    >>> np.bincount(folds).tolist()
    [2, 2, 2, 2, 2]
    """
    labels = np.asarray(labels, dtype=float)
    n_folds = int(n_folds)
    if not np.all(np.isfinite(labels)):
        msg = f"labels must be finite; {int(np.sum(~np.isfinite(labels)))} are not"
        raise ValueError(msg)
    if not 2 <= n_folds <= len(labels):
        msg = f"n_folds must be between 2 and the number of galaxies ({len(labels)}), got {n_folds}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    # random tie-break, so equal labels do not keep their row order
    order = np.lexsort((rng.random(len(labels)), labels))
    folds = np.empty(len(labels), dtype=int)
    for start in range(0, len(labels), n_folds):
        group = order[start:start + n_folds]
        # every earlier group was complete, so a short last group may go to any folds
        folds[group] = rng.permutation(n_folds)[:len(group)]
    return folds


def calibrate_out_of_fold(true, pred, err, folds, *, target=_ONE_SIGMA):
    """Calibrate predicted errors on out-of-fold residuals, with an honest coverage.

    The scale fitted on all OOF residuals (the one to ship with a model) has a
    coverage of ``target`` on those same residuals by construction, so that
    number proves nothing. The coverage reported as ``coverage_cross_validated``
    is nested: each fold's errors are multiplied by the scale fitted
    (`~astro_metallicity.train.calibrate_error_scale`) on the residuals of the
    other folds only, and the fraction within 1 sigma is counted over all
    galaxies.

    Parameters
    ----------
    true, pred, err : array-like
        Truth, out-of-fold prediction and uncalibrated 1-sigma error of each galaxy.
    folds : array-like of int
        Fold of each galaxy (e.g. ``CrossFitResult.folds``).
    target : float
        Desired coverage (0.6827 for Gaussian 1 sigma).

    Returns
    -------
    calibration : dict
        ``scale`` (fitted on all OOF residuals), ``fold_scales`` (fitted without
        each fold), ``coverage_uncalibrated``, ``coverage_cross_validated``,
        ``coverage_in_sample`` (with ``scale``; ~``target`` by construction),
        ``target``, and ``err_cross_validated``: each galaxy's error scaled
        with the scale fitted without its fold (`~numpy.ndarray`).

    Raises
    ------
    ValueError
        If the arrays differ in length, there are fewer than two folds, or a
        fold leaves no finite residual with ``err > 0`` to fit on.
    """
    true, pred, err = (np.asarray(a, dtype=float) for a in (true, pred, err))
    folds = np.asarray(folds)
    if not len(true) == len(pred) == len(err) == len(folds):
        msg = (f"true, pred, err and folds must have one length, got {len(true)}, {len(pred)}, "
               f"{len(err)} and {len(folds)}")
        raise ValueError(msg)
    names = np.unique(folds)
    if len(names) < 2:
        msg = f"need at least two folds to calibrate out of fold, got {len(names)}"
        raise ValueError(msg)
    nested = np.full(len(err), np.nan)
    fold_scales = []
    for k in names:
        held = folds == k
        s = calibrate_error_scale(true[~held], pred[~held], err[~held], target=target)
        fold_scales.append(s)
        nested[held] = s * err[held]
    scale = calibrate_error_scale(true, pred, err, target=target)
    return {
        "scale": scale,
        "fold_scales": fold_scales,
        "target": float(target),
        "coverage_uncalibrated": coverage(true, pred, err),
        "coverage_cross_validated": coverage(true, pred, nested),
        "coverage_in_sample": coverage(true, pred, scale * err),
        "err_cross_validated": nested,
    }


@dataclass
class CrossFitResult:
    """What `cross_fit` returns.

    Attributes
    ----------
    truth : `~numpy.ndarray`
        Metallicity label of every galaxy (row order of the input set).
    predictions : `~numpy.ndarray`
        Out-of-fold 12+log(O/H) of every galaxy.
    errors : `~numpy.ndarray`
        Out-of-fold 1-sigma errors, calibrated with the scale fitted on the other
        folds (``calibration['fold_scales']``), so their coverage is honest.
    raw_errors : `~numpy.ndarray`
        Uncalibrated network errors (error scale 1).
    folds : `~numpy.ndarray`
        Fold of every galaxy.
    train_indices, val_indices : list of `~numpy.ndarray`
        Per fold: rows of the input set the fold's network trained on, and those
        it used for early stopping (its inner validation part). Neither ever
        contains a galaxy of the fold itself.
    models : list
        Per fold: the `~astro_metallicity.MetallicityModel` (with the error scale
        ``calibration['scale']``), or None with ``keep_models=False``.
    model_paths : list
        Per fold: ``best.pt`` under ``checkpoint_dir`` (training metadata, error
        scale as trained), or None without ``checkpoint_dir``.
    metrics : dict
        Out-of-fold ``rmse``, ``nmad``, ``bias``, ``outlier_fraction``
        (``|r| > 3 NMAD``), ``coverage_1sigma`` (with `errors`), ... (see
        `~astro_metallicity.train.evaluate`), ``per_fold`` (the same per fold),
        and with baselines ``baselines`` and ``rmse_gain_over_baselines``
        (paired bootstrap).
    calibration : dict
        `calibrate_out_of_fold` without the array.
    baseline_predictions : dict
        Out-of-fold predictions of the baselines fitted on the same folds.
    settings : dict
        Folds, seed, sizes and training settings of the run.
    objids : `~numpy.ndarray` or None
        ``objID`` of every galaxy when the catalogue has one.
    """

    truth: np.ndarray
    predictions: np.ndarray
    errors: np.ndarray
    raw_errors: np.ndarray
    folds: np.ndarray
    train_indices: list
    val_indices: list
    models: list
    model_paths: list
    metrics: dict
    calibration: dict
    baseline_predictions: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    objids: np.ndarray = None

    def compare(self, other, *, n_boot=2000, seed=0):
        """How much lower this run's out-of-fold RMSE is than another's, paired bootstrap.

        Parameters
        ----------
        other : `CrossFitResult`
            A cross-fit of the same galaxies (e.g. the real-only network).
        n_boot : int
            Bootstrap resamples.
        seed : int
            Seed of the resampling.

        Returns
        -------
        result : dict
            ``difference`` (other RMSE - this RMSE, dex; positive: this one is
            better), ``relative``, ``ci95`` and ``n``.

        Raises
        ------
        ValueError
            If the two runs are not of the same galaxies with the same labels.
        """
        if len(other.truth) != len(self.truth) or not np.array_equal(other.truth, self.truth):
            msg = "the two cross-fits are not of the same galaxies (labels differ)"
            raise ValueError(msg)
        return rmse_difference(self.truth, self.predictions, other.predictions,
                               n_boot=n_boot, seed=seed)

    def to_table(self):
        """The out-of-fold predictions as an `~astropy.table.Table`.

        Returns
        -------
        table : `~astropy.table.Table`
            ``objID`` (when known), ``oh_p50``, ``fold``, ``oof_metallicity``,
            ``oof_metallicity_err``, ``oof_metallicity_err_raw`` and one
            ``oof_<baseline>`` column per baseline.
        """
        from astropy import units as u
        from astropy.table import Table

        table = Table()
        if self.objids is not None:
            table["objID"] = self.objids
        table["oh_p50"] = self.truth * u.dex
        table["fold"] = self.folds
        table["oof_metallicity"] = self.predictions * u.dex
        table["oof_metallicity_err"] = self.errors * u.dex
        table["oof_metallicity_err_raw"] = self.raw_errors * u.dex
        for name, values in self.baseline_predictions.items():
            table[f"oof_{name}"] = np.asarray(values) * u.dex
        return table

    def report(self):
        """JSON-safe summary: metrics, calibration, settings and per-fold sizes (dict)."""
        return _clean({
            "metrics": self.metrics, "calibration": self.calibration,
            "settings": self.settings,
            "folds": {"n_train": [len(i) for i in self.train_indices],
                      "n_val": [len(i) for i in self.val_indices],
                      "n_held_out": np.bincount(self.folds).tolist()},
            "model_paths": [None if p is None else str(p) for p in self.model_paths],
        })


def _fingerprint(*arrays):
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def _check_manifest(checkpoint_dir, manifest):
    """Refuse a checkpoint folder written for other folds (``train_model`` cannot tell)."""
    path = checkpoint_dir / _MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        if old != manifest:
            msg = (f"checkpoint_dir {checkpoint_dir} holds a cross-fit of other galaxies, folds or "
                   f"sizes ({old['fingerprint']} != {manifest['fingerprint']}); use another folder")
            raise ValueError(msg)
    else:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=1) + "\n")


def _inner_split(index, labels, val_fraction, seed):
    """Split a fold's training rows into training and early-stopping parts (stratified)."""
    if val_fraction == 0:
        return index, index[:0]
    n_inner = max(2, round(1 / val_fraction))
    if len(index) < 2 * n_inner:
        msg = (f"a fold's training part has {len(index)} galaxies, too few for an inner "
               f"validation fraction of {val_fraction}; use val_fraction=0 or a larger train_size")
        raise ValueError(msg)
    inner = stratified_folds(labels[index], n_inner, seed=seed)
    return index[inner != 0], index[inner == 0]


def _check_settings(truth, n_folds, train_size, val_fraction, real_repeat):
    if not np.all(np.isfinite(truth)):
        msg = (f"every galaxy needs a metallicity label to be cross-fitted; "
               f"{int(np.sum(~np.isfinite(truth)))} have none")
        raise ValueError(msg)
    if not 0 <= val_fraction < 1:
        msg = f"val_fraction must be in [0, 1), got {val_fraction}"
        raise ValueError(msg)
    if train_size is not None and int(train_size) < 2:
        msg = f"train_size must be at least 2 galaxies, got {train_size}"
        raise ValueError(msg)
    if int(real_repeat) < 1:
        msg = f"real_repeat must be a positive integer, got {real_repeat}"
        raise ValueError(msg)


def cross_fit(dataset, config=None, *, n_folds=5, seed=0, init_from=None, replay=None,
              real_repeat=1, train_size=None, val_fraction=0.2, baselines=True, tta=True,
              checkpoint_dir=None, keep_models=True, batch_size=None, metadata=None,
              **settings):
    """Out-of-fold predictions for every galaxy of a labelled set.

    The set is split into ``n_folds`` folds stratified by metallicity
    (`stratified_folds`). For each fold a network is trained
    (`~astro_metallicity.train.train_model`) on the other folds and predicts the
    held-out fold. Inside a fold, the training part is optionally subsampled to
    ``train_size`` galaxies, then split (stratified) into the part the network
    learns from and an inner validation part (``val_fraction``) for early
    stopping and the best epoch; the held-out fold plays no part in any choice.

    Parameters
    ----------
    dataset : `~astro_metallicity.train.LabelledCutouts` or path
        Labelled cutouts (every galaxy with a metallicity label).
    config : `~astro_metallicity.train.TrainingConfig`, optional
        Training settings of every fold (the seed of fold ``k`` is
        ``config.seed + k``).
    n_folds : int
        Number of folds.
    seed : int
        Seed of the fold assignment, the subsampling and the inner split.
    init_from : str, path-like or `~astro_metallicity.MetallicityModel`, optional
        Pretrained model every fold fine-tunes (the same start for each fold).
    replay : `~astro_metallicity.train.LabelledCutouts`, optional
        Extra training cutouts (e.g. simulated ones, replayed so a fine-tuned
        network keeps what it learned in pretraining) added to every fold's
        training part; they are never predicted or scored.
    real_repeat : int
        Times each galaxy of a fold's training part appears per epoch (weights
        it up against ``replay``).
    train_size : int, optional
        Subsample each fold's training part to this many galaxies (nested: a
        smaller size takes a subset of a larger one's galaxies) for a data-size
        curve; the held-out folds, and so the galaxies scored, stay the same.
        None, or a size at least that of the training part, uses it whole.
    val_fraction : float
        Fraction of each fold's (subsampled) training part held out for early
        stopping and the best epoch: one of ``round(1 / val_fraction)``
        stratified inner folds; 0 trains on all of it and keeps the last epoch.
    baselines : bool
        Also cross-fit the baselines that apply (training mean, gradient boosting
        on image colours, and on *gri* photometry when the catalogue has it) on
        the same folds and training parts.
    tta : bool
        Dihedral test-time augmentation for the held-out predictions.
    checkpoint_dir : str or path-like, optional
        Folder with one sub-folder per fold (``fold0``, ...) for checkpoints and
        the best model; a rerun resumes finished and interrupted folds. The
        folder remembers the galaxies and folds it was made for.
    keep_models : bool
        Keep the fold networks in memory (``CrossFitResult.models``).
    batch_size : int, optional
        Inference batch size.
    metadata : dict, optional
        Extra metadata for the fold models (``fold`` is added).
    **settings
        Fields of `~astro_metallicity.train.TrainingConfig` applied on top of ``config``.

    Returns
    -------
    result : `CrossFitResult`

    Raises
    ------
    ValueError
        If a galaxy has no metallicity label, a setting is out of range, a fold's
        training part is too small for the inner validation split, or
        ``checkpoint_dir`` holds a cross-fit of other galaxies or folds.
    TypeError
        If ``dataset`` or ``replay`` is not a `~astro_metallicity.train.LabelledCutouts`
        (``dataset`` may also be a store path), or a setting is not a field of
        `~astro_metallicity.train.TrainingConfig`.
    """
    config = _resolve_config(config, settings)
    dataset = _as_cutouts(dataset, "dataset")
    if replay is not None and not isinstance(replay, LabelledCutouts):
        msg = f"replay must be a LabelledCutouts, got {type(replay).__name__}"
        raise TypeError(msg)
    truth = dataset.targets(["metallicity"])[:, 0]
    val_fraction = float(val_fraction)
    _check_settings(truth, n_folds, train_size, val_fraction, real_repeat)
    folds = stratified_folds(truth, n_folds, seed=seed)
    n = len(dataset)
    objids = (np.asarray(dataset.catalog["objID"], dtype=np.int64)
              if "objID" in dataset.catalog.colnames else None)

    plan = []
    for k in range(n_folds):
        outer = np.flatnonzero(folds != k)
        if train_size is not None and int(train_size) < len(outer):
            # one permutation per fold, cut at train_size: the sizes of a curve are nested
            outer = np.sort(np.random.default_rng([seed, k]).permutation(outer)[:int(train_size)])
        fit_idx, val_idx = _inner_split(outer, truth, val_fraction, seed=seed + 1000 + k)
        if np.isin(np.concatenate([fit_idx, val_idx]), np.flatnonzero(folds == k)).any():
            msg = "internal error: a fold's held-out galaxies reached its training part"
            raise AssertionError(msg)
        plan.append((k, fit_idx, val_idx))

    fold_settings = {
        "n_folds": int(n_folds), "seed": int(seed), "train_size": None if train_size is None
        else int(train_size), "val_fraction": val_fraction, "real_repeat": int(real_repeat),
        "n_replay": 0 if replay is None else len(replay), "tta": bool(tta),
        "init_from": None if init_from is None else str(getattr(init_from, "path", init_from)),
        "stratification": "sorted by oh_p50, one galaxy per fold in each group of n_folds",
        "training": {k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in dataclasses.asdict(config).items()},
    }
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        fingerprint = _fingerprint(truth, folds, *[np.concatenate(p[1:]) for p in plan])
        _check_manifest(checkpoint_dir, {"fingerprint": fingerprint, "n": n, **{
            key: fold_settings[key] for key in ("n_folds", "seed", "train_size",
                                                "val_fraction", "real_repeat", "n_replay")}})

    predictions, raw_errors = np.full(n, np.nan), np.full(n, np.nan)
    base_pred = {}
    models, paths = [], []
    per_fold = []
    for k, fit_idx, val_idx in plan:
        held = np.flatnonzero(folds == k)
        part = dataset.subset(fit_idx)
        train = part if int(real_repeat) == 1 and replay is None else _concat_cutouts(
            [part] * int(real_repeat) + ([replay] if replay is not None else []))
        val = dataset.subset(val_idx) if len(val_idx) else None
        log.info(f"Cross-fit fold {k + 1}/{n_folds}: training on {len(fit_idx)} galaxies"
                 f"{f' x {real_repeat}' if real_repeat != 1 else ''}"
                 f"{f' + {len(replay)} replayed' if replay is not None else ''}, early stopping "
                 f"on {len(val_idx)}, predicting {len(held)}")
        result = train_model(
            train, val, dataclasses.replace(config, seed=config.seed + k), init_from=init_from,
            checkpoint_dir=None if checkpoint_dir is None else checkpoint_dir / f"fold{k}",
            metadata={**copy.deepcopy(metadata or {}), "fold": {
                "k": k, "n_folds": int(n_folds), "seed": int(seed),
                "train_size": fold_settings["train_size"]}})
        model = result.model
        # the raw network sigma: a starting model's error scale belongs to other data
        model.metadata["error_scale"]["metallicity"] = 1.0
        pred = model.predict(dataset.images[held], batch_size=batch_size, tta=tta)
        predictions[held], raw_errors[held] = pred["metallicity"], pred["metallicity_err"]
        if baselines:
            fitted = fit_baselines(dataset.subset(np.concatenate([fit_idx, val_idx])),
                                   seed=config.seed + k)
            for name, values in predict_baselines(fitted, dataset.subset(held)).items():
                if name != "mzr":  # needs no fit; scored by evaluate on a test set
                    base_pred.setdefault(name, np.full(n, np.nan))[held] = values
        models.append(model if keep_models else None)
        paths.append(None if checkpoint_dir is None else checkpoint_dir / f"fold{k}" / "best.pt")
        per_fold.append({"fold": k, "best_epoch": result.best_epoch,
                         "epochs_run": len(result.history), "n_train": len(fit_idx),
                         "n_val": len(val_idx), "n_held_out": len(held)})

    calibration = calibrate_out_of_fold(truth, predictions, raw_errors, folds)
    errors = calibration.pop("err_cross_validated")
    for model in models:
        if model is not None:
            model.metadata["error_scale"]["metallicity"] = calibration["scale"]
    metrics = regression_report(truth, predictions, errors)
    for entry in per_fold:
        held = folds == entry["fold"]
        entry.update(regression_report(truth[held], predictions[held], errors[held],
                                       outlier_threshold=metrics["outlier_threshold"]))
    metrics["per_fold"] = per_fold
    if base_pred:
        metrics["baselines"] = {
            name: regression_report(truth, values, outlier_threshold=metrics["outlier_threshold"])
            for name, values in base_pred.items()}
        metrics["rmse_gain_over_baselines"] = {
            name: rmse_difference(truth, predictions, values, seed=seed)
            for name, values in base_pred.items()}
    log.info(f"Cross-fit ({n_folds} folds, {n} galaxies): out-of-fold RMSE {metrics['rmse']:.4f} "
             f"NMAD {metrics['nmad']:.4f} bias {metrics['bias']:+.4f}; 1-sigma coverage "
             f"{calibration['coverage_cross_validated']:.3f} (error scale "
             f"{calibration['scale']:.3f})")
    return CrossFitResult(
        truth=truth, predictions=predictions, errors=errors, raw_errors=raw_errors, folds=folds,
        train_indices=[p[1] for p in plan], val_indices=[p[2] for p in plan], models=models,
        model_paths=paths, metrics=_clean(metrics), calibration=_clean(calibration),
        baseline_predictions=base_pred, settings=_clean(fold_settings), objids=objids)

