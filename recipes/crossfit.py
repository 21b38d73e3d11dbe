"""The bundled model and its real-galaxy figures, by cross-fitting the 400 real JPEGs.

A research script of the source repository, not part of the installed package.
Run it from a checkout (with astro-metallicity installed)::

    python recipes/crossfit.py --output DIR [--pretrained PATH | --appearance sdss]

The bundled model and the model card's figures come from one command (on two CPU
cores about an hour and forty minutes from nothing; every stage resumes from its
checkpoints)::

    python recipes/crossfit.py --output runs/bundled --work-dir runs/work --sizes 400 \
        --members 2 --threads 2 --bundle astro_metallicity/data \
        --report docs/model_card_data.json

and, to check the whole chain in a few minutes on a CPU::

    python recipes/crossfit.py --output DIR --smoke

It writes ``DIR/crossfit_report.json`` (all figures below), ``DIR/crossfit_oof.ecsv``
(the out-of-fold predictions of every galaxy) and the figures
``DIR/crossfit_rmse_vs_n.png`` and ``DIR/crossfit_*_pred_vs_true.png``, and the
fold networks of the full cross-fits (``DIR/fold_models/*_fold{k}.pt``, float16,
error scale fitted out of fold: the members of an ensemble). Per-epoch
checkpoints go to ``--work-dir`` and a rerun resumes from them
(``--no-checkpoints``: none written, nothing resumes; faster on a GPU).

Steps (every seed fixed; the folds are the same for every network, so their
out-of-fold residuals can be compared galaxy by galaxy):

1. Read the 400 real SDSS DR14 ImgCutout JPEGs with MPA-JHU labels
   (``../shared/data/sdss-gri-jpeg-400``).
2. The pretrained network: ``--pretrained PATH``, or pretrain one here on the
   simulated sky (`astro_metallicity.mock.MockSDSS` with ``--appearance``,
   catalogue through `query_training_catalog`, cutouts through the prediction
   pipeline's own ImgCutout route, 90/10 train/validation split; with
   ``--sky-frames``, the simulated galaxies injected into real SDSS frames,
   `astro_metallicity.mock.SkyFrames`). Both parts of the split are resampled
   towards low masses first (``--pretrain-mass-tilt``, `mass_tilt_weights`), so
   that their metallicities are distributed like MPA-JHU's. Its error on
   the 400 real galaxies, with no real fine-tuning, is reported
   (``pretrained_only``): it never saw a real galaxy.
3. 5-fold cross-fitting (`astro_metallicity.train.cross_fit`, folds stratified by
   ``oh_p50``) of two networks on the 400:

   * ``real_only``: the same architecture trained from scratch on the fold's
     real galaxies (the comparison the shared README asks for);
   * ``sim_pretrained``: the pretrained network fine-tuned as in
     ``recipes/bundled.py`` (real galaxies repeated ``--real-repeat`` times plus
     ``--replay`` simulated cutouts per epoch, BatchNorm statistics frozen,
     optional L2-SP anchor).

   By default every network learns from all of its fold's training galaxies
   and is kept at the end of its one-cycle schedule (``--val-fraction 0``, as
   the shared README's real-only reference: 60 epochs, no early stopping). With
   ``--val-fraction F`` > 0, early stopping and the best epoch use an inner
   validation part (a fraction F) of the fold's training galaxies, never the
   held-out fold.
4. Out-of-fold RMSE, NMAD, bias, outlier fraction (``|r| > 3 NMAD``) of both,
   the paired bootstrap of ``sim_pretrained`` against ``real_only`` (and against
   the image-colour gradient boosting cross-fitted on the same folds), and the
   calibration of ``metallicity_err`` on the out-of-fold residuals with its
   nested (honest) 1-sigma coverage.
5. The data-size curve: the same two cross-fits with each fold's training part
   subsampled to ``--sizes`` galaxies (nested subsets; the 400 galaxies scored
   stay the same), as a figure of out-of-fold RMSE against the number of real
   training galaxies, with the pretrained-only error as a line.

6. With ``--members K`` (K > 1), K - 1 more networks of each kind on the full
   cross-fit (same folds and inner splits, network seeds ``seed + 1000 m``) and
   the out-of-fold figures of equal-size ensembles: real-only, sim-pretrained
   and mixed (half of each), with the paired bootstrap of mixed against
   real-only: whether the simulation adds more than another real-only network.

7. With ``--bundle DIR``, the bundled model: one real-only and one sim-pretrained
   network trained as in the folds on all the real galaxies (with
   ``--val-fraction F`` > 0 a fraction F of them, stratified, for early
   stopping; network seeds ``seed + n_folds``), combined
   with `astro_metallicity.train.ensemble_models` (equal weights, mixture
   variance). Its real-galaxy figures are those of the same combination of each
   fold's two networks, out of fold (RMSE, NMAD, bias, outliers, paired bootstrap
   against the real-only network, against two real-only networks with
   ``--members 2``, and against the image colours); its ``metallicity_err`` scale
   is fitted on those out-of-fold residuals (nested coverage reported), its
   ``log_mstar_err`` scale on simulated validation cutouts that were never
   replayed. Then the out-of-distribution reference (as ``recipes/bundled.py``),
   a check on a fresh simulated sky (seed 2027, ``--n-fresh`` galaxies) of the
   bundle and each member against the mass-metallicity relation and *gri*
   photometry fitted on the pretraining cutouts, and the weights (float16) and
   metadata into ``DIR``.

A size at least as large as a fold's training part (``400``: 4/5 of the 400,
i.e. 320 galaxies per fold with 5 folds) is the full cross-fit.
"""

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from astro_metallicity import __version__, log
from astro_metallicity.model import load_model, save_model
from astro_metallicity.train import (
    TrainingConfig,
    build_dataset,
    calibrate_error_scale,
    calibrate_out_of_fold,
    cross_fit,
    dataset_from_images,
    ensemble_models,
    evaluate,
    query_training_catalog,
    read_dataset,
    train_model,
    write_report,
)

# Private helpers the recipe shares with the package: metrics of plain predictions,
# the baselines, the figure style of evaluate, the store fingerprint.
from astro_metallicity.train._baselines import fit_baselines
from astro_metallicity.train._metrics import regression_report, rmse_difference
from astro_metallicity.train.dataset import _catalog_fingerprint
from astro_metallicity.train.evaluation import _figure, _plot_pred_vs_true

# The sibling recipe gives the same data location and report paths. Its folder is on
# sys.path when this file runs as a script, but not when it is loaded by path (the tests).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundled import _default_shared, _relative  # noqa: E402


#: Seed of the simulated sky used for pretraining (as recipes/bundled.py).
SIM_SEED = 101
#: Literature RMSE an image model should beat: gradient boosting on SDSS + AllWISE
#: magnitudes (Zeraatgari et al. 2024, A&A 688, A33).
PHOTOMETRY_REFERENCE_DEX = 0.097

#: Default --pretrain-mass-tilt: brings the resampled labels close to the mean and spread of
#: the 400 real labels (8.90, 0.20 dex); see `mass_tilt_weights`.
PRETRAIN_MASS_TILT = 0.5

#: Network seeds of ensemble member m are the recipe's seed + MEMBER_SEED_STEP * m.
MEMBER_SEED_STEP = 1000

#: What --smoke changes (anything given explicitly on the command line still wins).
SMOKE = {"arch": "tiny", "input_size": 32, "epochs": 2, "finetune_epochs": 1,
         "pretrain_epochs": 1, "n_folds": 2, "n_sim": 300, "min_sim": 100, "replay": 64,
         "n_boot": 200, "batch_size": 32, "n_fresh": 150, "ood_sim": 60}


def _network_digest(model):
    """A short hash of a network's weights: fine-tuning checkpoints belong to one start."""
    digest = hashlib.sha256()
    for key, value in sorted(model.network.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:10]


def _sim_set(args, work):
    """Simulated cutouts through the mock SDSS: the training catalogue and the ImgCutout route."""
    from astropy.table import Table

    from astro_metallicity.mock import MockSDSS

    if args.sim_store:
        return read_dataset(args.sim_store), {"store": _relative(args.sim_store)}
    with MockSDSS(n_galaxies=args.n_sim, seed=args.sim_seed, appearance=args.appearance,
                  sky_frames=args.sky_frames) as server:
        catalog = Table(query_training_catalog())
        catalog.sort("objID")  # galaxies of one field together: frames rendered once
        store = work / (f"sim_{args.appearance}_seed{args.sim_seed}_n{args.n_sim}_"
                        f"{_catalog_fingerprint(catalog)[:8]}{_sky_tag(server.sky)}.h5")
        build_dataset(catalog, store, source="jpeg", scale="adaptive", size=128,
                      chunk_size=500, progress=False)
    sim = read_dataset(store)
    if len(sim) < args.min_sim:
        msg = (f"the simulated set has {len(sim)} usable cutouts, fewer than --min-sim "
               f"{args.min_sim}; raise --n-sim")
        raise RuntimeError(msg)
    frames = None if args.sky_frames is None else [_relative(p) for p in args.sky_frames]
    return sim, {"sky": f"astro_metallicity.mock.MockSDSS(n_galaxies={args.n_sim}, "
                        f"seed={args.sim_seed}, appearance={args.appearance!r}, "
                        f"sky_frames={frames})",
                 "n_cutouts": len(sim), "store": _relative(store)}


def _images_tag(sim):
    """Part of a folder name that tells simulated sets with one catalogue but other pixels
    apart (the same galaxies on a simulated and on a real sky): a hash of every 50th cutout."""
    images = np.ascontiguousarray(sim.images[::50])
    return f"_img{hashlib.sha1(images.tobytes()).hexdigest()[:8]}"


def _sky_tag(sky):
    """Part of a file name that tells an injected sky (real frames behind the galaxies) apart."""
    return "" if sky.sky_frames is None else f"_inj{sky.sky_frames.digest[:8]}"


def _pretrained(args, work, sim):
    """The network every sim-pretrained fold starts from, and how it was made."""
    if args.pretrained:
        return load_model(args.pretrained, device=args.device), {
            "from": _relative(args.pretrained)}
    sim_train, sim_val = _pretraining_split(sim)
    tilt = args.pretrain_mass_tilt
    # only the pretraining is resampled; the replay of the fine-tuning draws from the sky as is
    if tilt:
        sim_train, sim_val = (part.resample(mass_tilt_weights(part, tilt), seed=args.seed + k)
                              for k, part in ((1, sim_train), (2, sim_val)))
    config = TrainingConfig(
        outputs=("metallicity", "log_mstar"), arch=args.arch, input_size=args.input_size,
        epochs=args.pretrain_epochs, batch_size=max(args.batch_size, 64),
        max_lr=args.pretrain_lr, weight_decay=0.05, patience=args.pretrain_patience,
        seed=args.seed, device=args.device, num_workers=args.num_workers)
    # the simulated set's fingerprint in the name: another sky never resumes this one
    folder = work / (f"pretrain_{_catalog_fingerprint(sim.catalog)[:8]}_n{len(sim)}"
                     f"{_images_tag(sim)}"
                     f"_{args.arch}_{args.input_size}px_e{args.pretrain_epochs}"
                     f"_lr{args.pretrain_lr:g}_s{args.seed}" + (f"_tilt{tilt:g}" if tilt else ""))
    stage = f"pretrained on the simulated survey ({args.appearance})"
    if tilt:  # resampled by mass_tilt_weights
        stage += f", mass tilt {tilt:g}"
    result = train_model(sim_train, sim_val, config, checkpoint_dir=folder, metadata={
        "provenance": {"stage": stage}})
    save_model(result.model.network, result.model.metadata, folder / "pretrained_model",
               half=False)
    labels = sim_train.targets(["metallicity"])
    return result.model, {"trained_here": _relative(folder / "pretrained_model.pt"),
                          "n_train": len(sim_train), "n_val": len(sim_val),
                          "mass_tilt": tilt,
                          "distinct_train": len(np.unique(np.asarray(sim_train.catalog["objID"]))),
                          "label_mean": float(np.nanmean(labels)),
                          "label_std": float(np.nanstd(labels)),
                          "best_epoch": result.best_epoch,
                          "sim_val_rmse": result.history[result.best_epoch].get(
                              "val_metallicity_rmse")}


def _configs(args):
    real_only = TrainingConfig(
        outputs=("metallicity",), arch=args.arch, input_size=args.input_size,
        epochs=args.epochs, batch_size=args.batch_size, max_lr=args.lr, weight_decay=0.05,
        patience=args.patience, seed=args.seed, device=args.device,
        num_workers=args.num_workers)
    finetune = TrainingConfig(
        epochs=args.finetune_epochs, batch_size=args.batch_size, max_lr=args.finetune_lr,
        weight_decay=0.05, patience=args.patience, seed=args.seed, device=args.device,
        freeze_batchnorm=args.freeze_batchnorm, anchor_strength=args.anchor_strength,
        backbone_lr_factor=args.backbone_lr_factor, num_workers=args.num_workers)
    return real_only, finetune


def _stopping_tag(args):
    """How the recipe picks a network's epoch, for checkpoint folder names: the last
    epoch (``last``) or early stopping on an inner fraction with a patience."""
    return "last" if args.val_fraction == 0 else f"v{args.val_fraction:g}_p{args.patience}"


def _real_only_folder(args):
    return (f"real_only_{args.arch}_{args.input_size}px_e{args.epochs}_lr{args.lr:g}"
            f"_{_stopping_tag(args)}_b{args.batch_size}")


def _images_trained(result, real_repeat, n_replay):
    """Training images the run pushed through its networks (for throughput figures)."""
    return int(sum(f["epochs_run"] * (real_repeat * f["n_train"] + n_replay)
                   for f in result.metrics["per_fold"]))


def _run_size(args, real, size, pretrained, replay, configs, work, digest, member=0):
    """The real-only and sim-pretrained cross-fits of one training size.

    ``member`` > 0 trains another member of the ensembles: the same folds, inner
    splits and settings, network seeds ``seed + MEMBER_SEED_STEP * member``.
    """
    real_only_config, finetune_config = (
        dataclasses.replace(c, seed=c.seed + MEMBER_SEED_STEP * member) for c in configs)
    tag = ("all" if size is None else f"n{size}") + (f"_m{member}" if member else "")
    common = {"n_folds": args.n_folds, "seed": args.seed, "train_size": size,
              "val_fraction": args.val_fraction, "tta": not args.no_tta,
              "keep_models": size is None and not member}

    def folder(name):
        # without checkpoints nothing is written per epoch (fast on a GPU) and nothing resumes
        return work / name / tag if args.checkpoints else None
    runs, entry = {}, {"full": size is None}
    t0 = time.perf_counter()
    runs["real_only"] = cross_fit(
        real, real_only_config, baselines=not member, **common,
        checkpoint_dir=folder(_real_only_folder(args)),
        metadata={"provenance": {"stage": "trained from scratch on real SDSS ImgCutout JPEGs"}})
    entry["real_only_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_replay = 0 if replay is None else len(replay)
    runs["sim_pretrained"] = cross_fit(
        real, finetune_config, init_from=pretrained, replay=replay,
        real_repeat=args.real_repeat, baselines=False, **common,
        checkpoint_dir=folder(f"sim_pretrained_{digest}_e{args.finetune_epochs}"
                              f"_lr{args.finetune_lr:g}_x{args.real_repeat}_r{n_replay}"
                              f"_{'fbn' if args.freeze_batchnorm else 'bn'}"
                              f"_a{args.anchor_strength:g}_bb{args.backbone_lr_factor:g}"
                              f"_{_stopping_tag(args)}_b{args.batch_size}"),
        metadata={"provenance": {"stage": "pretrained on the simulated survey, fine-tuned on "
                                          "real SDSS ImgCutout JPEGs"}})
    entry["sim_pretrained_seconds"] = time.perf_counter() - t0
    entry["n_given_per_fold"] = [f["n_train"] + f["n_val"]
                                 for f in runs["real_only"].metrics["per_fold"]]
    for name, result in runs.items():
        m = result.metrics
        entry[name] = {k: m[k] for k in ("rmse", "nmad", "bias", "outlier_fraction")}
        entry[name]["coverage_1sigma_cross_validated"] = result.calibration[
            "coverage_cross_validated"]
        entry[name]["rmse_ci95"] = _rmse_interval(result.truth, result.predictions, args)
    log.info(f"size {tag}: out-of-fold RMSE real-only {entry['real_only']['rmse']:.4f}, "
             f"sim-pretrained {entry['sim_pretrained']['rmse']:.4f}")
    if member:  # an extra ensemble member: no baselines, comparisons or throughput figures
        return runs, entry
    entry["image_colours"] = {"rmse": runs["real_only"].metrics["baselines"]["image_colours"][
        "rmse"]}
    entry["sim_pretrained_vs_real_only"] = runs["sim_pretrained"].compare(
        runs["real_only"], n_boot=args.n_boot, seed=args.seed)
    entry["train_images"] = {
        "real_only": _images_trained(runs["real_only"], 1, 0),
        "sim_pretrained": _images_trained(runs["sim_pretrained"], args.real_repeat, n_replay)}
    return runs, entry


def _ensembles(args, truth, members):
    """Out-of-fold figures of equal-weight ensembles of the full cross-fits' networks.

    ``members[name][m]`` is the cross-fit of member ``m`` of ``name`` (real-only or
    sim-pretrained). Every ensemble has ``--members`` networks per fold, so they
    compare like with like: the real-only ensemble, the sim-pretrained ensemble
    and the mixed one (the first half of the real-only members and the first
    half, rounded up, of the sim-pretrained ones). Whether the simulation earns
    its place is the paired bootstrap of the mixed against the real-only
    ensemble: the same number of networks, with or without the simulation.
    Their errors combine the members' as the bundle does (a mixture: the mean of
    their raw variances plus the variance of their predictions), calibrated out
    of fold.
    """
    k = args.members
    labelled = {name: [(f"{name} member {m}", r) for m, r in enumerate(runs)]
                for name, runs in members.items()}
    combos = {"real_only": labelled["real_only"], "sim_pretrained": labelled["sim_pretrained"],
              "mixed": labelled["real_only"][:k // 2] + labelled["sim_pretrained"][:k - k // 2]}
    folds = members["real_only"][0].folds
    out = {"members": k, "member_seeds": [args.seed + MEMBER_SEED_STEP * m for m in range(k)]}
    predictions = {}
    for name, runs in combos.items():
        pred = np.mean([r.predictions for _, r in runs], axis=0)
        raw = np.sqrt(np.mean([r.raw_errors ** 2 for _, r in runs], axis=0)
                      + np.var([r.predictions for _, r in runs], axis=0))
        calibration = calibrate_out_of_fold(truth, pred, raw, folds)
        predictions[name] = (pred, calibration["err_cross_validated"])
        out[name] = {**regression_report(truth, pred, calibration["err_cross_validated"]),
                     "rmse_ci95": _rmse_interval(truth, pred, args),
                     "coverage_1sigma_cross_validated": calibration["coverage_cross_validated"],
                     "metallicity_error_scale": calibration["scale"],
                     "networks": [label for label, _ in runs]}
    for name in ("mixed", "sim_pretrained"):
        out[f"{name}_vs_real_only"] = rmse_difference(
            truth, predictions[name][0], predictions["real_only"][0], n_boot=args.n_boot,
            seed=args.seed)
    log.info("ensembles of %d networks per fold, out-of-fold RMSE: real-only %.4f, "
             "sim-pretrained %.4f, mixed %.4f", k, out["real_only"]["rmse"],
             out["sim_pretrained"]["rmse"], out["mixed"]["rmse"])
    return out, predictions


def _calibration_report(calibration):
    """The report of an out-of-fold error calibration (`calibrate_out_of_fold`'s result)."""
    return {
        "metallicity_error_scale": calibration["scale"],
        "fitted_on": "the out-of-fold residuals of all galaxies (68.27th percentile of "
                     "|residual| / sigma); the coverage of the same residuals with it is "
                     "~68 % by construction",
        "coverage_cross_validated": calibration["coverage_cross_validated"],
        "coverage_note": "each fold's errors scaled with the scale fitted on the other folds",
        "coverage_uncalibrated": calibration["coverage_uncalibrated"],
    }


def mass_tilt_weights(cutouts, tilt):
    """Importance weights ``10**(-tilt (log M* - 10))`` on the catalogue mass.

    The simulated sky holds far fewer low-mass, metal-poor galaxies than MPA-JHU's
    O/H sample: its ``oh_p50`` has mean 8.98 and standard deviation 0.15 (5 % below
    8.7), against 8.90 and 0.20 (14.5 % below 8.7) for the real labels. A tilt of 0.5
    per dex, a round value, brings the resampled set close to both (8.90 and 0.20 on the
    seed-101 sky). A likely cause, not modelled in the
    mock: the share of galaxies whose lines are classified star-forming, which O/H needs,
    falls with mass as composites and AGN take over (Kauffmann et al. 2003, MNRAS 346,
    1055; Brinchmann et al. 2004).
    """
    log_mstar = cutouts.targets(["log_mstar"])[:, 0]
    return 10.0 ** (-tilt * (log_mstar - 10.0))


def _pretraining_split(sim):
    """The simulated cutouts the pretraining learns from, and those it stops early on."""
    return sim.split((0.9, 0.1), seed=0)


def _rmse_interval(truth, pred, args):
    """95 % bootstrap interval of one RMSE (for the error bars of the figure)."""
    r2 = (pred - truth) ** 2
    index = np.random.default_rng(args.seed).integers(0, len(r2), (args.n_boot, len(r2)))
    return [float(v) for v in np.percentile(np.sqrt(r2[index].mean(axis=1)), [2.5, 97.5])]


def _plot_curve(curve, pretrained_only, path, n_folds):
    """Out-of-fold RMSE against real training galaxies: real-only and sim-pretrained."""
    fig = _figure((6.5, 5))
    ax = fig.add_subplot()
    x = np.array([np.mean(e["n_given_per_fold"]) for e in curve])
    for key, colour, label in (("real_only", "C0", "real only (from scratch)"),
                               ("sim_pretrained", "C1", "sim-pretrained, fine-tuned")):
        y = np.array([e[key]["rmse"] for e in curve])
        lo, hi = np.array([e[key]["rmse_ci95"] for e in curve]).T
        ax.errorbar(x, y, yerr=[y - lo, hi - y], color=colour, marker="o", capsize=3,
                    label=label)
    ax.plot(x, [e["image_colours"]["rmse"] for e in curve], color="0.5", marker=".", lw=1,
            label="gradient boosting on image colours")
    ax.axhline(pretrained_only, color="C1", ls=":", lw=1.2,
               label=f"sim-pretrained only ({pretrained_only:.3f})")
    ax.axhline(PHOTOMETRY_REFERENCE_DEX, color="k", ls="--", lw=0.8,
               label="photometry, Zeraatgari+2024 (0.097)")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:.0f}" + ("\n(all)" if e["full"] else "") for v, e in zip(x, curve)])
    ax.minorticks_off()
    ax.set_xlabel(f"real training galaxies per fold ({n_folds}-fold cross-fit of the 400)")
    ax.set_ylabel("out-of-fold RMSE on the 400 (dex)")
    # below the axes: the curves may run anywhere between the reference lines
    fig.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    path = Path(path)
    fig.savefig(path)
    return path


def run_crossfit_recipe(args):
    """Run the recipe with parsed arguments (see ``main --help``). Returns the report dict."""
    import torch
    from astropy import units as u

    started = time.perf_counter()
    out = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"command": ("python recipes/crossfit.py " + " ".join(args.argv)).strip(),
              "smoke": bool(args.smoke), "astro_metallicity_version": __version__,
              "torch_version": torch.__version__, "python": platform.python_version(),
              "settings": {k: v for k, v in vars(args).items() if k != "argv"}}
    timings = report["timings_s"] = {}

    real_dir = Path(args.real_data)
    real = dataset_from_images(real_dir / "images", real_dir / "labels.csv")
    truth = real.targets(["metallicity"])[:, 0]
    report["real_data"] = {
        "source": "SDSS DR14 ImgCutout gri JPEGs (128 px, adaptive scale) with MPA-JHU "
                  "oh_p50, a random subset of Wu & Boada (2018)'s training set",
        "n": len(real), "label_mean": float(truth.mean()), "label_std": float(truth.std())}

    t0 = time.perf_counter()
    # the bundle also needs simulated cutouts: log M* calibration, OOD reference, baselines
    need_sim = not args.pretrained or args.replay > 0 or bool(args.bundle)
    sim, report["sim_data"] = _sim_set(args, work) if need_sim else (None, None)
    timings["sim_dataset"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pretrained, report["pretrained"] = _pretrained(args, work, sim)
    timings["pretrain"] = time.perf_counter() - t0
    replay = None
    if args.replay > 0:
        pick = np.random.default_rng(args.seed).choice(len(sim), min(args.replay, len(sim)),
                                                       replace=False)
        replay = sim.subset(np.sort(pick))
    # no real galaxy was ever shown to it: its error on all 400 is out of sample
    raw = pretrained.predict(real.images, tta=not args.no_tta)
    report["pretrained_only"] = regression_report(truth, raw["metallicity"],
                                                  raw["metallicity_err"])

    configs = _configs(args)
    digest = _network_digest(pretrained)
    # a size at least a fold's training part (n - n // k galaxies) is the full cross-fit;
    # requested sizes that all reach it are run once
    full_part = len(real) - len(real) // args.n_folds
    effective = {}
    for size in args.sizes:
        effective.setdefault(None if size >= full_part else size, []).append(size)
    if args.bundle and None not in effective:
        msg = (f"--bundle needs the full cross-fit: include {len(real)} (or any size of at least "
               f"{full_part}) in --sizes")
        raise ValueError(msg)
    curve, headline = [], None
    # the full cross-fit first: it gives the headline figures
    for size in sorted(effective, key=lambda s: np.inf if s is None else s, reverse=True):
        t0 = time.perf_counter()
        runs, entry = _run_size(args, real, size, pretrained, replay, configs, work, digest)
        timings[f"size_{'all' if size is None else size}"] = time.perf_counter() - t0
        curve.append({"requested": effective[size], **entry})
        if headline is None:
            headline, headline_size = runs, size
    curve.reverse()
    report["data_size_curve"] = curve
    ensemble_predictions = {}
    if args.members > 1:
        # more members of the headline cross-fit (the largest size asked for)
        members = {name: [headline[name]] for name in headline}
        for m in range(1, args.members):
            t0 = time.perf_counter()
            runs, _ = _run_size(args, real, headline_size, pretrained, replay, configs, work,
                                digest, member=m)
            timings[f"member_{m}"] = time.perf_counter() - t0
            for name, result in runs.items():
                members[name].append(result)
        report["ensembles"], ensemble_predictions = _ensembles(args, truth, members)

    real_only, sim_pre = headline["real_only"], headline["sim_pretrained"]
    report["real_400"] = {
        "protocol": (f"{args.n_folds}-fold cross-fitting of the {len(real)} real galaxies "
                     f"(folds stratified by oh_p50, seed {args.seed}); "
                     + (f"early stopping on {args.val_fraction:g} of each fold's training part"
                        if args.val_fraction else "each network trained on all of its fold's "
                        "training part, kept at its last epoch")
                     + "; every galaxy "
                     "predicted by the fold network that never saw it"),
        "n_given_per_fold": curve[-1]["n_given_per_fold"],
        "real_only": real_only.report(),
        "sim_pretrained": sim_pre.report(),
        "sim_pretrained_vs_real_only": sim_pre.compare(real_only, n_boot=args.n_boot,
                                                       seed=args.seed),
        "sim_pretrained_vs_image_colours": rmse_difference(
            truth, sim_pre.predictions, real_only.baseline_predictions["image_colours"],
            n_boot=args.n_boot, seed=args.seed),
        "references_dex": {"photometry_zeraatgari_2024": PHOTOMETRY_REFERENCE_DEX,
                           "wu_boada_2018_resnet34_77k_galaxies": 0.085,
                           "training_mean_shared_readme": 0.18},
    }
    report["real_400"]["error_calibration"] = _calibration_report(sim_pre.calibration)

    table = real_only.to_table()
    table.rename_columns(
        [c for c in table.colnames if c.startswith("oof_")],
        [c.replace("oof_metallicity", "real_only").removeprefix("oof_")
         for c in table.colnames if c.startswith("oof_")])
    sim_table = sim_pre.to_table()
    for suffix in ("", "_err", "_err_raw"):
        table[f"sim_pretrained{suffix}"] = sim_table[f"oof_metallicity{suffix}"]
    table["pretrained_only"] = raw["metallicity"] * u.dex
    for name, (pred, err) in ensemble_predictions.items():
        table[f"ensemble_{name}"] = pred * u.dex
        table[f"ensemble_{name}_err"] = err * u.dex
    table.write(out / "crossfit_oof.ecsv", overwrite=True)

    # the fold networks of the full cross-fit, error scale fitted out of fold: the
    # members of an ensemble (or the teachers of a distilled network)
    fold_models = out / "fold_models"
    fold_models.mkdir(exist_ok=True)
    report["fold_models"] = {}
    for name, result in headline.items():
        report["fold_models"][name] = [
            _relative(save_model(m.network, m.metadata, fold_models / f"{name}_fold{k}",
                                 half=True))
            for k, m in enumerate(result.models)]

    if args.bundle:
        t0 = time.perf_counter()
        _bundle(args, real, truth, sim, pretrained, replay, configs, work, digest, headline,
                report, members=members if args.members > 1 else None)
        timings["bundle"] = time.perf_counter() - t0

    figures = [_plot_curve(curve, report["pretrained_only"]["rmse"],
                           out / "crossfit_rmse_vs_n.png", args.n_folds)]
    for name, result in headline.items():
        figures.append(_plot_pred_vs_true(
            truth, result.predictions, out / f"crossfit_{name}_pred_vs_true.png",
            bins=25, title=f"{name}, out of fold: RMSE {result.metrics['rmse']:.3f} dex, "
                           f"NMAD {result.metrics['nmad']:.3f} dex"))
    report["figures"] = [_relative(f) for f in figures]
    report["oof_table"] = _relative(out / "crossfit_oof.ecsv")
    report["device"] = str(pretrained.device)
    timings["total"] = time.perf_counter() - started
    report_path = Path(args.report) if args.report else out / "crossfit_report.json"
    write_report(report, report_path)
    log.info(f"Cross-fit report written to {report_path}")
    return report


# --------------------------------------------------------------------------- the bundled model

#: File name (without suffix) of the bundled model, as the package looks for it.
BUNDLED_NAME = "metallicity_resnet18"
#: The bundle's members, one network of each kind; the last one's embedding scores OOD
#: (`astro_metallicity.ood`): the sim-pretrained network has seen both skies.
BUNDLE_MEMBERS = ("real_only", "sim_pretrained")
#: Simulated validation cutouts (not replayed) that calibrate the log M* error.
MASS_CALIBRATION_SIZE = 2000
#: The bundle's in-sample predictions of every n-th real galaxy are recorded for a quick
#: reproduction check (``tests/test_bundled_model.py``).
IN_SAMPLE_CHECK_EVERY = 5


def _final_networks(args, real, truth, pretrained, replay, configs, work, digest):
    """Each kind of network trained once more on all the real galaxies (with an inner split
    for early stopping as in the folds when ``--val-fraction`` > 0; network seed
    ``seed + n_folds``): the members of the bundle."""
    from astro_metallicity.train.crossfit import _inner_split
    from astro_metallicity.train.dataset import _concat_cutouts

    fit_idx, val_idx = _inner_split(np.arange(len(real)), truth, args.val_fraction,
                                    seed=args.seed + 1000 + args.n_folds)
    fit, val = real.subset(fit_idx), real.subset(val_idx) if len(val_idx) else None
    real_only_config, finetune_config = (
        dataclasses.replace(c, seed=c.seed + args.n_folds) for c in configs)
    folder = (lambda name: work / name / "bundle") if args.checkpoints else (lambda name: None)
    real_only = train_model(
        fit, val, real_only_config,
        checkpoint_dir=folder(_real_only_folder(args)),
        metadata={"provenance": {"stage": f"trained from scratch on {len(fit)} of the {len(real)} "
                                          "real SDSS ImgCutout JPEGs"}})
    parts = [fit] * args.real_repeat + ([replay] if replay is not None else [])
    sim_pretrained = train_model(
        _concat_cutouts(parts), val, finetune_config, init_from=pretrained,
        checkpoint_dir=folder(f"sim_pretrained_{digest}_bundle_{_stopping_tag(args)}"
                              f"_x{args.real_repeat}_r{0 if replay is None else len(replay)}"),
        metadata={"provenance": {"stage": f"pretrained on the simulated survey, fine-tuned on "
                                          f"{len(fit)} of the {len(real)} real SDSS ImgCutout "
                                          "JPEGs"}})
    split = {"n_train": len(fit_idx), "n_early_stopping": len(val_idx),
             "early_stopping_objids": [int(i) for i in
                                       np.asarray(real.catalog["objID"])[val_idx]]}
    return {"real_only": real_only.model, "sim_pretrained": sim_pretrained.model}, split


def _final_split_words(args):
    """How the bundle's networks used the real galaxies, for its description."""
    if args.val_fraction:
        return f"each with {args.val_fraction * 100:g} % of them held out for early stopping"
    return "each trained on all of them to the end of its schedule, no early stopping"


def _out_of_fold_ensemble(args, real, truth, headline):
    """The bundled recipe scored out of fold: each fold's networks combined as the bundle is."""
    folds = headline["real_only"].folds
    pred, raw = np.full(len(real), np.nan), np.full(len(real), np.nan)
    for k in range(args.n_folds):
        held = np.flatnonzero(folds == k)
        ensemble = ensemble_models([headline[name].models[k] for name in BUNDLE_MEMBERS],
                                   names=list(BUNDLE_MEMBERS), device=args.device)
        out = ensemble.predict(real.images[held], tta=not args.no_tta)
        pred[held], raw[held] = out["metallicity"], out["metallicity_err"]
    return pred, raw, folds


def _sim_check(args, work, sim_train, models):
    """The bundle and its members on a fresh simulated sky, next to the MZR and gri photometry."""
    from bundled import FRESH_SKY_SEED, fresh_sky_cutouts

    fresh = fresh_sky_cutouts(args.n_fresh, work, appearance=args.appearance)
    baselines = fit_baselines(sim_train, seed=args.seed)
    out = {"sky": f"astro_metallicity.mock.MockSDSS(n_galaxies={args.n_fresh}, "
                  f"seed={FRESH_SKY_SEED}, appearance={args.appearance!r})",
           "n": len(fresh),
           "baselines_fitted_on": f"{len(sim_train)} simulated cutouts of the pretraining "
                                  "split, as simulated (not mass-resampled)"}
    for name, model in models.items():
        report = evaluate(model, fresh, baselines=baselines)
        out[name] = {"cnn": report["cnn"], "baselines": report["baselines"]}
    return out


def _bundle(args, real, truth, sim, pretrained, replay, configs, work, digest, headline,
            report, members=None):
    """Step 7: the bundled model (see ``--bundle``); returns the path of its weights."""
    from bundled import _ood_sim_images, ood_reference

    bundle_dir = Path(args.bundle)
    out = report["bundle"] = {"members": list(BUNDLE_MEMBERS)}
    t0 = time.perf_counter()
    finals, out["final_training"] = _final_networks(args, real, truth, pretrained, replay,
                                                    configs, work, digest)
    report["timings_s"]["bundle_training"] = time.perf_counter() - t0

    # the recipe out of fold: figures of the bundle, and the scale of its errors
    pred, raw, folds = _out_of_fold_ensemble(args, real, truth, headline)
    calibration = calibrate_out_of_fold(truth, pred, raw, folds)
    err = calibration["err_cross_validated"]
    real_only = headline["real_only"]
    out["real_400"] = {
        "protocol": report["real_400"]["protocol"] + "; the fold's real-only and sim-pretrained "
                    "networks combined as the bundle combines its members",
        **regression_report(truth, pred, err),
        "rmse_ci95": _rmse_interval(truth, pred, args),
        "vs_real_only": rmse_difference(truth, pred, real_only.predictions,
                                        n_boot=args.n_boot, seed=args.seed),
        "vs_image_colours": rmse_difference(
            truth, pred, real_only.baseline_predictions["image_colours"], n_boot=args.n_boot,
            seed=args.seed),
        "error_calibration": _calibration_report(calibration),
    }
    if members and len(members["real_only"]) > 1:
        # as many networks, all real-only: does the simulation add more than another network?
        pair = np.mean([r.predictions for r in members["real_only"][:2]], axis=0)
        out["real_400"]["vs_real_only_pair"] = rmse_difference(
            truth, pred, pair, n_boot=args.n_boot, seed=args.seed)

    bundle = ensemble_models([finals[name] for name in BUNDLE_MEMBERS],
                             names=list(BUNDLE_MEMBERS), device=args.device)
    meta = bundle.metadata
    meta["error_scale"]["metallicity"] = calibration["scale"]
    # log M*: only the sim-pretrained member predicts it, and only the simulation has
    # masses; calibrated on simulated validation cutouts that were never replayed
    sim_train, sim_val = _pretraining_split(sim)
    replayed = set() if replay is None else set(np.asarray(replay.catalog["objID"]).tolist())
    keep = [i for i, o in enumerate(np.asarray(sim_val.catalog["objID"]).tolist())
            if o not in replayed][:MASS_CALIBRATION_SIZE]
    calib = sim_val.subset(np.asarray(keep))
    if "log_mstar" in meta["outputs"]:
        sim_raw = bundle.predict(calib.images, tta=not args.no_tta)
        meta["error_scale"]["log_mstar"] = calibrate_error_scale(
            calib.targets(["log_mstar"])[:, 0], sim_raw["log_mstar"], sim_raw["log_mstar_err"])
        out["log_mstar_error_scale"] = {
            "value": meta["error_scale"]["log_mstar"],
            "fitted_on": f"{len(calib)} simulated cutouts of the pretraining's validation split "
                         "(its early stopping; never replayed in fine-tuning; no real masses "
                         "available)"}
    meta["ensemble"]["init_member"] = "sim_pretrained"
    meta["ensemble"]["embedding_member"] = "sim_pretrained"  # it saw both kinds of image
    meta["cutout_source"] = "jpeg"  # every training image came through the ImgCutout route
    if args.n_fresh > 0:
        out["fresh_sim_sky"] = _sim_check(args, work, sim_train, {
            "bundle": bundle, **{name: finals[name] for name in BUNDLE_MEMBERS}})
    bundle_metrics = {k: v for k, v in out["real_400"].items() if k != "protocol"}
    meta["provenance"] = {
        "description": (
            "Equal-weight ensemble of two ResNet-18: one trained from scratch on the 400 real "
            "SDSS DR14 ImgCutout JPEGs with MPA-JHU DR7 metallicities, one pretrained on the "
            "simulated SDSS-like survey (astro_metallicity.mock) and fine-tuned on the same "
            f"400 ({_final_split_words(args)}). Real-galaxy figures are "
            "out of fold (5-fold cross-fitting of this recipe on the 400); accuracy on other "
            "real galaxies is unmeasured."),
        "command": report["command"],
        "astro_metallicity_version": __version__,
        "pretrained": report["pretrained"],
        "sim_data": report["sim_data"],
        "sim_appearance": args.appearance,
        "real_data": {**report["real_data"], **out["final_training"],
                      "sim_pretrained_finetune_set": (
                          f"{args.real_repeat} x {out['final_training']['n_train']} real + "
                          f"{0 if replay is None else len(replay)} simulated (replay) cutouts "
                          "per epoch")},
        "crossfit": report["real_400"]["protocol"],
    }
    meta["metrics"] = {
        "real_400_out_of_fold": bundle_metrics,
        "real_400_out_of_fold_single_networks": {
            name: {k: v for k, v in report["real_400"][name]["metrics"].items()
                   if k in ("n", "rmse", "nmad", "bias", "outlier_fraction", "coverage_1sigma")}
            for name in BUNDLE_MEMBERS},
        "pretrained_only_real_400": report["pretrained_only"]}
    if "fresh_sim_sky" in out:
        meta["metrics"]["fresh_sim_sky"] = out["fresh_sim_sky"]
    reference, meta["ood"] = ood_reference(
        bundle, real.images, _ood_sim_images(args, sim_train.images), seed=args.seed,
        real_note=f"the {len(real)} real SDSS DR14 ImgCutout JPEGs (both members trained on "
                  f"{out['final_training']['n_train']} of them)")
    out["ood"] = meta["ood"]
    pt = save_model(bundle.network, meta, bundle_dir / BUNDLED_NAME, half=True,
                    ood_reference=reference)
    out["model_file"] = _relative(pt)
    out["model_size_mb"] = round(pt.stat().st_size / 1e6, 2)
    # what the saved (float16) file predicts for the 400 it was trained on: a
    # reproduction check for the tests, not an accuracy figure
    saved = load_model(pt, device=args.device).predict(real.images, tta=not args.no_tta)
    out["in_sample_400"] = regression_report(truth, saved["metallicity"],
                                             saved["metallicity_err"])
    # a fixed fifth of the 400 (every fifth row of the label file) for the tests' quick check
    objids = np.asarray(real.catalog["objID"], dtype=np.int64)
    check = np.arange(len(real)) % IN_SAMPLE_CHECK_EVERY == 0
    out["in_sample_check"] = {"objids": [int(i) for i in objids[check]],
                              **regression_report(truth[check], saved["metallicity"][check],
                                                  saved["metallicity_err"][check])}
    log.info(f"Bundled model written to {pt} ({out['model_size_mb']} MB): out-of-fold RMSE "
             f"{out['real_400']['rmse']:.4f} dex, coverage "
             f"{calibration['coverage_cross_validated']:.3f}")
    return pt


def _positive_int(text):
    value = int(text)
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _sizes(text):
    sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    if not sizes or sizes[0] < 2:
        msg = f"--sizes must be positive integers separated by commas, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return sizes


def _parser():
    p = argparse.ArgumentParser(
        prog="python recipes/crossfit.py",
        description="Cross-fit real-only and sim-pretrained networks on the 400 real JPEGs: "
                    "out-of-fold figures, paired bootstrap, data-size curve.")
    p.add_argument("--output", required=True, help="folder for the report, table and figures")
    p.add_argument("--work-dir", help="checkpoints and cutout stores, reused by reruns "
                                      "(default OUTPUT/work)")
    p.add_argument("--report", help="the JSON report (default OUTPUT/crossfit_report.json)")
    p.add_argument("--real-data", default=str(_default_shared() / "sdss-gri-jpeg-400"),
                   help="folder with images/{objID}.jpg and labels.csv")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny end-to-end check: {SMOKE} unless given explicitly")
    pre = p.add_argument_group("pretraining")
    pre.add_argument("--pretrained", help="pretrained model (.pt) to fine-tune; default: "
                                          "pretrain one on the simulated sky here")
    pre.add_argument("--appearance", default="sdss", choices=("sdss", "classic"),
                     help="appearance preset of the simulated sky")
    pre.add_argument("--sky-frames", nargs="+", default=None,
                     help="real SDSS frame files (g, r, i of a field) to inject the simulated "
                          "galaxies into (MockSky(sky_frames=...)); default: the simulated sky")
    pre.add_argument("--sim-store", help="HDF5 cutout store of simulated galaxies "
                                         "(build_dataset) instead of making one")
    pre.add_argument("--n-sim", type=int, default=22000, help="galaxies in the simulated sky")
    pre.add_argument("--min-sim", type=int, default=20000,
                     help="fail if fewer simulated cutouts are usable")
    pre.add_argument("--sim-seed", type=int, default=SIM_SEED)
    pre.add_argument("--pretrain-epochs", type=int, default=6)
    pre.add_argument("--pretrain-lr", type=float, default=2e-3)
    pre.add_argument("--pretrain-patience", type=int, default=3)
    pre.add_argument("--pretrain-mass-tilt", type=float, default=None,
                     help="resample the pretraining cutouts with weights "
                          "10**(-TILT (log M* - 10)) so that their metallicities are "
                          f"distributed as MPA-JHU's (default {PRETRAIN_MASS_TILT:g}; "
                          "0: as simulated; not with --pretrained)")
    net = p.add_argument_group("networks and cross-fitting")
    net.add_argument("--arch", default="resnet18")
    net.add_argument("--input-size", type=int, default=64)
    net.add_argument("--epochs", type=int, default=60, help="epochs of the real-only network")
    net.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, real-only")
    net.add_argument("--finetune-epochs", type=int, default=10)
    net.add_argument("--finetune-lr", type=float, default=3e-4)
    net.add_argument("--freeze-batchnorm", action=argparse.BooleanOptionalAction, default=True)
    net.add_argument("--anchor-strength", type=float, default=0.0,
                     help="decoupled L2-SP pull towards the pretrained weights")
    net.add_argument("--backbone-lr-factor", type=float, default=1.0)
    net.add_argument("--real-repeat", type=int, default=2)
    net.add_argument("--replay", type=int, default=2560,
                     help="simulated cutouts replayed in every fine-tuning epoch (0: none)")
    net.add_argument("--batch-size", type=int, default=32)
    net.add_argument("--patience", type=int, default=20,
                     help="early-stopping patience (with --val-fraction > 0)")
    net.add_argument("--n-folds", type=int, default=5)
    net.add_argument("--val-fraction", type=float, default=0.0,
                     help="part of each fold's training galaxies held out for early stopping "
                          "(default 0: all of them train, the last epoch is kept)")
    net.add_argument("--sizes", type=_sizes, default=[50, 100, 200, 400],
                     help="real training sizes of the data-size curve (comma-separated)")
    net.add_argument("--seed", type=int, default=0)
    net.add_argument("--members", type=_positive_int, default=1,
                     help="networks per fold and kind for the ensembles of the full cross-fit "
                          "(network seeds seed + %d m; default 1: no ensembles)" % MEMBER_SEED_STEP)
    net.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    net.add_argument("--no-tta", action="store_true", help="no test-time augmentation")
    net.add_argument("--device", default="auto")
    net.add_argument("--num-workers", type=int, default=0,
                     help="DataLoader worker processes (augmentation off the main process)")
    net.add_argument("--checkpoints", action=argparse.BooleanOptionalAction, default=True,
                     help="per-epoch checkpoints under --work-dir, so that a rerun resumes "
                          "(~180 MB written per epoch for a ResNet-18; off: faster on a GPU)")
    net.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads (0: torch default)")
    bun = p.add_argument_group("the bundled model (--bundle)")
    bun.add_argument("--bundle", metavar="DIR",
                     help="also train the bundled model (a real-only and a sim-pretrained "
                          "network on all the real galaxies, combined, errors calibrated out "
                          "of fold) and write it to DIR (astro_metallicity/data refreshes "
                          "the package's)")
    bun.add_argument("--n-fresh", type=int, default=3000,
                     help="galaxies of the fresh simulated sky of the bundle's simulated "
                          "check (0: none)")
    bun.add_argument("--ood-sim", type=int, default=1000,
                     help="simulated cutouts in the bundle's out-of-distribution reference")
    return p


def main(argv=None):
    """Command-line entry point of the cross-fitting recipe."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if "--smoke" in argv:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args(argv)
    if args.pretrained and args.pretrain_mass_tilt is not None:
        parser.error("--pretrain-mass-tilt resamples the pretraining this recipe runs; "
                     "--pretrained PATH skips that pretraining")
    if not args.pretrained and args.pretrain_mass_tilt is None:
        args.pretrain_mass_tilt = PRETRAIN_MASS_TILT
    args.argv = argv
    log.setLevel("INFO")
    report = run_crossfit_recipe(args)
    summary = {"real_400": {k: report["real_400"][k]["metrics"]["rmse"]
                            for k in ("real_only", "sim_pretrained")},
               "pretrained_only_rmse": report["pretrained_only"]["rmse"],
               "sim_pretrained_vs_real_only": report["real_400"]["sim_pretrained_vs_real_only"],
               "coverage_cross_validated": report["real_400"]["error_calibration"][
                   "coverage_cross_validated"],
               "data_size_curve": {
                   "/".join(map(str, e["requested"])): [e["real_only"]["rmse"],
                                                        e["sim_pretrained"]["rmse"]]
                   for e in report["data_size_curve"]},
               "timings_s": report["timings_s"]}
    if "ensembles" in report:
        ens = report["ensembles"]
        summary["ensembles_rmse"] = {k: ens[k]["rmse"]
                                     for k in ("real_only", "sim_pretrained", "mixed")}
        summary["mixed_vs_real_only"] = ens["mixed_vs_real_only"]
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
