"""The network pretrained on the simulation alone, scored on the 400 real galaxies.

As it is, and with its outputs aligned to its predictions on simulated images.

Issue 11 asks that the sim-pretrained network, with no real fine-tuning, reach 0.12 dex or
better on the real 400. This script measures it, reproducibly from nothing:

1. The bundled recipe's simulated store and pretrained network (``recipes/crossfit.py``
   with its defaults: the ``"sdss"`` sky of seed 101, 22,000 galaxies, mass tilt 0.5, six
   epochs); both are read from ``--work-dir`` when a recipe run left them there, and built
   otherwise (about 20 + 8 minutes on two CPU cores).
2. Its metallicity predictions (8-fold dihedral test-time averaging) on the real ImgCutout
   JPEGs and on the pretraining's own validation cutouts (mass-resampled as in
   pretraining).
3. The alignment: ``pred' = mean_s + (pred - mean_r) * std_s / std_r``, where ``mean_s,
   std_s`` describe its predictions on the simulated validation cutouts and ``mean_r, std_r``
   those on unlabelled real JPEGs. Cross-fitted on two halves (the JPEGs in file-name order,
   split as by ``benchmarks/sim_translation.py``): each half is aligned with the *other*
   half's statistics, so a galaxy's own image plays no part in its transform, and no
   galaxy's label is read. The target distribution is not free of the labels, though: the
   pretraining set was resampled in mass so that its labels match the mean and spread of
   these 400 labels (``PRETRAIN_MASS_TILT`` of the recipe), and the alignment inherits those
   two numbers. Like re-estimating the BatchNorm statistics on real images (AdaBN), it moves
   and rescales the predictions; it cannot add information (within each half the
   correlation with the labels is unchanged).
4. Prints RMSE, bias and correlation, raw and aligned, on each half and on all of them, a
   95 % bootstrap interval of the aligned RMSE and a paired bootstrap of raw minus aligned
   (each replicate resamples the galaxies within each half and the simulated cutouts, and
   fits the alignment again), and writes them to ``pretrained_only.json`` in
   ``--output-dir``.

Run::

    OMP_NUM_THREADS=1 python benchmarks/pretrained_only.py --work-dir runs/work --threads 2

The alignment rule was fixed before it was first computed (2026-12-01); see the model card.
"""

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_translation import split_halves  # noqa: E402 - the halves of the translation benchmark

_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "crossfit.py"


def _recipe():
    """The cross-fitting recipe (a script of the source tree, not an installed module)."""
    spec = importlib.util.spec_from_file_location("crossfit_recipe", _RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def align_outputs(pred, reference, halves):
    """Map predictions on real images onto the distribution of predictions on simulated ones.

    Parameters
    ----------
    pred : `~numpy.ndarray`
        Predictions on the real images.
    reference : `~numpy.ndarray`
        Predictions on the simulated images the network was validated on.
    halves : sequence of two index arrays
        A split of ``pred``; each part is aligned with the mean and standard deviation of
        the other part's predictions.

    Returns
    -------
    aligned : `~numpy.ndarray`
        ``reference.mean() + (pred - mean_other) * reference.std() / std_other``, part by part.
    """
    pred = np.asarray(pred, dtype=float)
    reference = np.asarray(reference, dtype=float)
    first, second = (np.asarray(h, dtype=int) for h in halves)
    if not np.array_equal(np.sort(np.concatenate([first, second])), np.arange(len(pred))):
        msg = "halves must split the predictions into two disjoint parts"
        raise ValueError(msg)
    aligned = np.empty_like(pred)
    for part, other in ((first, second), (second, first)):
        spread = pred[other].std()
        if not spread > 0:
            msg = "the predictions of a half do not vary; nothing to align them by"
            raise ValueError(msg)
        aligned[part] = reference.mean() + (pred[part] - pred[other].mean()) * (
            reference.std() / spread)
    return aligned


def file_name_order(objids):
    """The order in which ``benchmarks/sim_realism.py`` reads the JPEGs (``{objID}.jpg``
    sorted by file name), as indices into ``objids``."""
    return np.argsort([f"{i}.jpg" for i in np.asarray(objids)], kind="stable")


def bootstrap(truth, pred, reference, halves, *, n_boot=1000, seed=0):
    """95 % intervals of the aligned RMSE and of raw minus aligned RMSE.

    Each replicate resamples the galaxies within each half and the simulated reference
    predictions, and fits the alignment again, so the intervals include the uncertainty of
    the fitted means and spreads.

    Returns
    -------
    aligned_ci95, gain_ci95 : tuple of float
        ``(low, high)`` of the aligned RMSE and of the raw minus the aligned RMSE.
    """
    rng = np.random.default_rng(seed)
    first, second = (np.asarray(h, dtype=int) for h in halves)
    aligned_rmse, gain = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        draw = [rng.choice(first, len(first)), rng.choice(second, len(second))]
        index = np.concatenate(draw)
        positions = (np.arange(len(first)), len(first) + np.arange(len(second)))
        ref = reference[rng.integers(0, len(reference), len(reference))]
        aligned = align_outputs(pred[index], ref, positions)
        aligned_rmse[b] = np.sqrt(np.mean((aligned - truth[index]) ** 2))
        gain[b] = np.sqrt(np.mean((pred[index] - truth[index]) ** 2)) - aligned_rmse[b]
    return (tuple(np.percentile(aligned_rmse, [2.5, 97.5]).tolist()),
            tuple(np.percentile(gain, [2.5, 97.5]).tolist()))


def _report(pred, truth):
    residual = pred - truth
    return {"rmse": float(np.sqrt(np.mean(residual**2))), "bias": float(residual.mean()),
            "correlation": float(np.corrcoef(pred, truth)[0, 1]), "n": len(truth)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", help="the recipe's --work-dir (store and pretraining "
                                           "reused from it, or built there; default: a new "
                                           "temporary folder)")
    parser.add_argument("--real-data", help="folder with images/ and labels.csv (default: the "
                                            "recipe's, ../shared/data/sdss-gri-jpeg-400)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--output-dir", help="where to write pretrained_only.json "
                                             "(default: a new temporary folder)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    recipe = _recipe()
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="pretrained_only_"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir or out / "work")
    recipe_argv = ["--output", str(out / "recipe"), "--work-dir", str(work),
                   "--threads", str(args.threads)]
    if args.real_data:
        recipe_argv += ["--real-data", args.real_data]
    settings = recipe._parser().parse_args(recipe_argv)
    settings.pretrain_mass_tilt = recipe.PRETRAIN_MASS_TILT  # as the recipe's main applies it
    work.mkdir(parents=True, exist_ok=True)
    sim, _ = recipe._sim_set(settings, work)
    model, info = recipe._pretrained(settings, work, sim)
    _, sim_val = recipe._pretraining_split(sim)
    sim_val = sim_val.resample(recipe.mass_tilt_weights(sim_val, settings.pretrain_mass_tilt),
                               seed=settings.seed + 2)  # the pretraining's validation set
    real_dir = Path(settings.real_data)
    real = recipe.dataset_from_images(real_dir / "images", real_dir / "labels.csv")
    order = file_name_order(real.catalog["objID"])  # sim_translation.py's halves index it
    truth = real.targets(["metallicity"])[:, 0][order]
    pred = model.predict(real.images[order])["metallicity"]
    reference = model.predict(np.asarray(sim_val.images))["metallicity"]
    halves = split_halves(len(truth), 0)
    aligned = align_outputs(pred, reference, halves)
    result = {"pretrained": info.get("trained_here", info.get("from")),
              "sim_val_rmse": info.get("sim_val_rmse"), "n_reference": len(reference),
              "reference_mean": float(reference.mean()), "reference_std": float(reference.std())}
    for name, values in (("raw", pred), ("aligned", aligned)):
        result[name] = {"all": _report(values, truth),
                        **{half: _report(values[idx], truth[idx])
                           for half, idx in zip("AB", halves, strict=True)}}
    aligned_ci95, gain_ci95 = bootstrap(truth, pred, reference, halves,
                                        n_boot=settings.n_boot, seed=settings.seed)
    result["aligned"]["all"]["rmse_ci95"] = aligned_ci95
    # positive: the alignment lowers the RMSE
    result["aligned_vs_raw"] = {"difference": result["raw"]["all"]["rmse"]
                                - result["aligned"]["all"]["rmse"], "ci95": gain_ci95}
    result["seconds"] = round(time.perf_counter() - started, 1)
    (out / "pretrained_only.json").write_text(json.dumps(result, indent=1))
    print(f"pretrained network: {result['pretrained']}")
    for name in ("raw", "aligned"):
        parts = "; ".join(f"{key} RMSE {r['rmse']:.4f} bias {r['bias']:+.4f} "
                          f"correlation {r['correlation']:.3f}"
                          for key, r in result[name].items())
        print(f"{name:8s} {parts}")
    lo, hi = result["aligned"]["all"]["rmse_ci95"]
    gain = result["aligned_vs_raw"]
    print(f"aligned RMSE on all: 95 % bootstrap interval {lo:.4f} to {hi:.4f}; raw minus aligned "
          f"{gain['difference']:+.4f} ({gain['ci95'][0]:+.4f} to {gain['ci95'][1]:+.4f})")
    print(f"wrote {out / 'pretrained_only.json'} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
