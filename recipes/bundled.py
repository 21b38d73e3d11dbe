"""The recipe of the previous bundled model: one sim-pretrained network, a fixed 320/80 split.

The model bundled now (an ensemble of a real-only and a sim-pretrained network,
trained on all 400 real JPEGs, its figures cross-fitted) is built by
``recipes/crossfit.py --bundle``, which reuses this script's out-of-distribution
reference (`ood_reference`). This script stays for the record of the previous
model (``docs/model_card_data_single_network.json``) and for ``--ood-only``,
which recomputes the reference of the model in ``--output`` (any model,
ensembles included) without touching its weights.

A research script of the source repository, not part of the installed package.
Run it from a checkout (with astro-metallicity installed) with::

    python recipes/bundled.py --output DIR

It writes the model (``DIR/metallicity_resnet18.pt`` + ``.json``) and its JSON
report (``DIR/bundled_report.json``) into ``DIR``. To re-run the recipe of
the previous model (not the model shipped with the package now, which
``recipes/crossfit.py --bundle`` builds; do not point ``--output`` at
``astro_metallicity/data`` except with ``--ood-only``)::

    python recipes/bundled.py --output runs/single_network --work-dir runs/bundled

and compare ``runs/single_network/bundled_report.json`` with the record
``docs/model_card_data_single_network.json`` (written by an earlier version of
this code, with a few keys added by hand; do not overwrite it).

Steps (every seed fixed, so the run is reproducible):

1. Start the simulated SDSS (`astro_metallicity.mock.MockSDSS`, seed
   ``SIM_SEED``), query the training catalogue through it with the seed's SQL
   (`query_training_catalog`) and build the cutout store with the prediction
   pipeline's own code: `build_dataset` -> `astro_metallicity.fetch_cutouts`
   with ``source='jpeg'`` (the SkyServer ImgCutout route of Wu & Boada 2018) and
   the paper's adaptive scale, 128 x 128 px.
2. Split the simulated set 80/10/10 (train/validation/test, ``SPLIT_SEED``); the
   test split is never used for training, early stopping or calibration.
3. Pretrain a ResNet-18 (64 px input) on the simulated training split.
4. Fine-tune it on 320 of the 400 real SDSS ImgCutout JPEGs with MPA-JHU labels
   (``../shared/data/sdss-gri-jpeg-400``) together with 2,560 replayed simulated
   cutouts per epoch, BatchNorm statistics frozen (settings chosen with
   ``benchmarks/finetune_selection.py``, without the 80), with a fixed 320/80 split
   (``REAL_SPLIT_SEED``; the 80 validation objIDs are listed in the report). The
   80 are used for early stopping and for the error calibration only.
5. Evaluate: simulated test set against the baselines (Tremonti MZR on the
   catalogue mass, gradient boosting on *gri* photometry and on image colours,
   the training mean); real validation set against predicting the training mean,
   the image-colour baseline, and a ResNet-18 trained on the 320 real JPEGs only.
6. Out-of-distribution reference (`astro_metallicity.ood`): embeddings and image
   statistics of the 400 real JPEGs and of ``--ood-sim`` simulated training
   cutouts, summarised per group (means, principal components, covariances; no
   per-galaxy values), with the threshold that flags 2 % of the real galaxies
   out of fold (5-fold; the flag rate reported comes from nested
   cross-validation, as does that of each real JPEG with its channels swapped,
   scored by a reference that never saw the original). ``--ood-only`` does just
   this step for the model already in ``--output``, leaving its weights untouched.
7. Write the weights (float16), metadata (with ``cutout_source='jpeg'``: every
   training image came through the ImgCutout route) and OOD statistics
   (``<model-name>_ood.npz``) to ``--output`` and the metrics to a JSON report
   (figures go to the work folder).

On a GPU (``--device auto`` finds it) the same command runs much faster; on
CPU set ``--threads``.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from astro_metallicity import __version__, log
from astro_metallicity.mock import MockSDSS
from astro_metallicity.model import load_model, save_model
from astro_metallicity.train import (
    TrainingConfig,
    build_dataset,
    calibrate_error_scale,
    dataset_from_images,
    evaluate,
    query_training_catalog,
    read_dataset,
    train_model,
    write_report,
)

# The recipe reuses fitted baselines across test sets and reports metrics of plain
# predictions: helpers the package keeps private.
from astro_metallicity.train._baselines import fit_baselines
from astro_metallicity.train._metrics import coverage, regression_report
from astro_metallicity.train.dataset import _catalog_fingerprint, _concat_cutouts

#: Seed of the simulated sky used for training.
SIM_SEED = 101
#: Seed of the train/validation/test split of the simulated set.
SPLIT_SEED = 0
#: Seed of the fixed 320/80 split of the 400 real JPEGs (permutation of sorted objIDs).
REAL_SPLIT_SEED = 400
#: Seed of the fresh simulated sky used for the final check (never used in training).
FRESH_SKY_SEED = 2027

_REPO = Path(__file__).resolve().parents[1]
_MODEL_NAME = "metallicity_resnet18"


def _default_shared():
    if "ASTRO_METALLICITY_SHARED_DATA" in os.environ:
        return Path(os.environ["ASTRO_METALLICITY_SHARED_DATA"])
    return _REPO.parent / "shared" / "data"


def real_split(objids, *, seed=REAL_SPLIT_SEED, n_val=80):
    """The fixed train/validation split of the real JPEG set.

    Parameters
    ----------
    objids : array-like of int
        SDSS objIDs of the labelled JPEGs.
    seed : int
        Permutation seed (applied to the sorted objIDs, so file order does not matter).
    n_val : int
        Size of the validation part.

    Returns
    -------
    train_ids, val_ids : `~numpy.ndarray`
        Sorted objIDs.
    """
    ids = np.sort(np.asarray(objids, dtype=np.int64))
    order = np.random.default_rng(seed).permutation(len(ids))
    return np.sort(ids[order[n_val:]]), np.sort(ids[order[:n_val]])


def finetune_set(real_train, sim_train, *, real_repeat, n_replay, seed):
    """The fine-tuning set: real cutouts repeated, plus simulated ones replayed.

    Replaying a random sample of the simulated training cutouts keeps the network
    from forgetting what it learned on the simulation.

    Returns
    -------
    finetune, replay : `~astro_metallicity.train.LabelledCutouts`
        The whole set, and its simulated part.
    """
    pick = np.random.default_rng(seed).choice(len(sim_train), min(n_replay, len(sim_train)),
                                              replace=False)
    replay = sim_train.subset(np.sort(pick))
    return _concat_cutouts([real_train] * real_repeat + [replay]), replay


def interpolate_weights(start, end, fraction):
    """Weights a ``fraction`` of the way from ``start`` to ``end`` (state dicts).

    Interpolating between the pretrained and the fine-tuned weights (WiSE-FT,
    Wortsman et al. 2022, CVPR) trades what fine-tuning gained on the new data
    against what pretraining knew; integer buffers (BatchNorm counters) are taken
    from ``end``.
    """
    return {k: (1 - fraction) * start[k] + fraction * v if v.is_floating_point() else v
            for k, v in end.items()}


def _relative(path):
    """Path relative to the repository when inside it (for reports)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(_REPO))
    except ValueError:
        return str(path)


def _select(cutouts, ids):
    index = np.flatnonzero(np.isin(np.asarray(cutouts.catalog["objID"], dtype=np.int64), ids))
    return cutouts.subset(index)


def _sim_dataset(args, work):
    """Steps 1: the simulated catalogue and cutout store through the mock SDSS."""
    from astropy.table import Table

    with MockSDSS(n_galaxies=args.n_sim, seed=args.sim_seed) as server:
        catalog = query_training_catalog()
        catalog = Table(catalog)
        catalog.sort("objID")  # galaxies of one field together: frames rendered once
        # the file name carries the catalogue's fingerprint: a changed simulation
        # gets a new store (and new checkpoints), never stale cutouts
        store = work / (f"sim_seed{args.sim_seed}_n{args.n_sim}_"
                        f"{_catalog_fingerprint(catalog)[:8]}.h5")
        log.info(f"Simulated training catalogue: {len(catalog)} galaxies after the seed's cuts "
                 f"(server {server.url})")
        t0 = time.perf_counter()
        build_dataset(catalog, store, source="jpeg", scale="adaptive", size=128,
                      chunk_size=args.chunk_size, progress=args.progress)
        seconds = time.perf_counter() - t0
    return store, len(catalog), seconds


def fresh_sky_cutouts(n_galaxies, work, *, appearance=None, chunk_size=500):
    """Cutouts of a fresh simulated sky (seed ``FRESH_SKY_SEED``, never used in training).

    The training catalogue's cuts and the ImgCutout route, as for the training
    cutouts; the store goes to ``work`` (named by the sky and its catalogue, so
    a rerun reuses it).
    """
    from astropy.table import Table

    with MockSDSS(n_galaxies=n_galaxies, seed=FRESH_SKY_SEED, appearance=appearance):
        catalog = Table(query_training_catalog())
        catalog.sort("objID")
        look = "" if appearance is None else f"{appearance}_"
        store = work / (f"fresh_{look}seed{FRESH_SKY_SEED}_n{n_galaxies}_"
                        f"{_catalog_fingerprint(catalog)[:8]}.h5")
        build_dataset(catalog, store, source="jpeg", scale="adaptive", size=128,
                      chunk_size=chunk_size, progress=False)
    return read_dataset(store)


def _fresh_sky_check(model, args, work, figures):
    """Final check on a fresh simulated sky with a seed never used in training."""
    fresh = fresh_sky_cutouts(args.n_fresh, work, chunk_size=args.chunk_size)
    return evaluate(model, fresh, figures_dir=figures, label="fresh_sim_sky")


#: Quantile of the real galaxies' out-of-fold OOD scores that sets the threshold.
OOD_QUANTILE = 0.98


def ood_reference(model, real_images, sim_images, *, quantile=OOD_QUANTILE, seed=0,
                  real_note="the 400 real SDSS DR14 ImgCutout JPEGs (the network's weights "
                            "saw 320 of them in fine-tuning)"):
    """Out-of-distribution reference statistics and metadata for a trained model.

    Parameters
    ----------
    model : `~astro_metallicity.MetallicityModel`
        The trained model.
    real_images, sim_images : `~numpy.ndarray`
        uint8 cutouts ``(N, 128, 128, 3)``: the real ImgCutout JPEGs and simulated
        training cutouts (ImgCutout route of the mock sky).
    quantile : float
        Fraction of the real galaxies' out-of-fold scores below the threshold.
    seed : int
        Seed of the folds.
    real_note : str
        What the real group's images are, for the metadata.

    Returns
    -------
    reference : dict
        For ``save_model(..., ood_reference=)``.
    info : dict
        ``metadata['ood']``.
    """
    from astro_metallicity import ood

    images = np.concatenate([real_images, sim_images])
    groups = np.array(["real_jpeg"] * len(real_images) + ["sim_jpeg"] * len(sim_images))
    _, embeddings = model._run(images, embed=True)
    features = ood._image_features(images, checks=True)
    # each real JPEG once with its channels in another order (the five cycled by index,
    # fixed): scored out of fold, by a reference and threshold that never saw the original
    swapped = channel_swapped(real_images)
    _, swapped_embeddings = model._run(swapped, embed=True)
    derived = (swapped_embeddings, ood._image_features(swapped, checks=True),
               np.arange(len(real_images)))
    threshold, calibration = ood._calibrate(embeddings, features, groups,
                                            calibration_group="real_jpeg", quantile=quantile,
                                            seed=seed, derived=derived)
    reference = ood._fit_reference(embeddings, features, groups, seed=seed)
    info = {
        "format_version": ood.OOD_FORMAT_VERSION,
        "method": ("max of three parts: two distances, each to the nearest group of training "
                   "images and in units of that group's 95th percentile (5-fold): Mahalanobis "
                   "distance of the penultimate-layer embedding (mean over the 8 dihedral views) "
                   f"in a PCA-whitened space ({ood._EMBEDDING_COMPONENTS} components plus the "
                   "residual, eigenvalue shrinkage), and Mahalanobis distance (Ledoit-Wolf) of "
                   "image statistics; and a channel-order "
                   "check (log-likelihood ratio of the likeliest other channel order under the "
                   "groups' Gaussians of six colours, in units of "
                   f"{ood._ORDER_UNIT:g} nats, counted when positive)"),
        "threshold": threshold,
        "threshold_rule": f"{quantile:g} quantile of the real JPEGs' 5-fold out-of-fold scores",
        "image_features": list(ood.IMAGE_FEATURES),
        "groups": {
            "real_jpeg": {"n": len(real_images), "images": real_note},
            "sim_jpeg": {"n": len(sim_images),
                         "images": "simulated training cutouts, mock ImgCutout route"},
        },
        "calibration": {
            "n_folds": 5, "seed": seed,
            "nested_cv_flag_rate": calibration["nested_flag_rate"],
            "oof_flag_rate_at_threshold": calibration["oof_flag_rate"],
            "nested_cv_flag_rate_channel_swapped_real_jpeg": float(
                np.mean(calibration["derived_flagged"])),
        },
    }
    return reference, info


def channel_swapped(images):
    """Each image with its channels in one of the five other orders, cycled by index."""
    from astro_metallicity import ood

    orders = ood._OTHER_ORDERS
    return np.stack([np.ascontiguousarray(image[..., list(orders[k % len(orders)])])
                     for k, image in enumerate(images)])


def _ood_sim_images(args, sim_images=None, appearance=None):
    """Simulated training cutouts for the OOD reference (a sample, or a small sky of the seed
    with the training sky's ``appearance``)."""
    from astropy.coordinates import SkyCoord

    from astro_metallicity import fetch_cutouts

    if sim_images is not None:
        pick = np.random.default_rng(args.seed).choice(
            len(sim_images), min(args.ood_sim, len(sim_images)), replace=False)
        return sim_images[np.sort(pick)]
    # the training sky's seed and distribution, fewer galaxies: the same kind of images
    with MockSDSS(n_galaxies=int(args.ood_sim * 1.1), seed=args.sim_seed, appearance=appearance):
        catalog = query_training_catalog()
        coords = SkyCoord(np.asarray(catalog["ra"]), np.asarray(catalog["dec"]), unit="deg")
        cut = fetch_cutouts(coords, source="jpeg", scale="adaptive", size=128)
    return cut.images[np.asarray(cut.flags) == ""][:args.ood_sim]


def _real_images(args):
    real_dir = Path(args.real_data)
    return dataset_from_images(real_dir / "images", real_dir / "labels.csv")


def run_ood_only(args):
    """Step 6 alone: write the OOD reference of the model already in ``--output``."""
    from astro_metallicity.model import _update_metadata

    pt = Path(args.output) / f"{args.model_name}.pt"
    model = load_model(pt, device=args.device)
    real = _real_images(args)
    # the same kinds of image as the reference being replaced: the pretraining sky's look,
    # and the description of what the networks saw of the real galaxies
    appearance = model.metadata["provenance"].get("sim_appearance", "classic")
    kwargs = {}
    if "images" in model.metadata.get("ood", {}).get("groups", {}).get("real_jpeg", {}):
        kwargs["real_note"] = model.metadata["ood"]["groups"]["real_jpeg"]["images"]
    sim_images = _ood_sim_images(args, appearance=appearance)
    reference, info = ood_reference(model, real.images, sim_images, seed=args.seed, **kwargs)
    meta = model.metadata
    meta["ood"] = info
    meta["cutout_source"] = "jpeg"
    _update_metadata(pt, meta, ood_reference=reference)
    log.info(f"OOD reference of {pt} written: threshold {info['threshold']:.3f}, nested-CV "
             f"flag rates {info['calibration']['nested_cv_flag_rate']}")
    return {"model_file": _relative(pt), "ood": info}


def run_bundled_recipe(args):
    """Run the recipe with parsed arguments (see ``main --help``). Returns the report dict."""
    import torch

    started = time.perf_counter()
    out_dir = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else out_dir / "work"
    report_path = Path(args.report) if args.report else out_dir / "bundled_report.json"
    figures = work / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python recipes/bundled.py " + " ".join(args.argv)
    report = {"command": command.strip(), "astro_metallicity_version": __version__,
              "torch_version": torch.__version__, "python": platform.python_version(),
              "seeds": {"sim_sky": args.sim_seed, "sim_split": SPLIT_SEED,
                        "real_split": REAL_SPLIT_SEED, "fresh_sky": FRESH_SKY_SEED,
                        "training": args.seed}}
    timings = report["timings_s"] = {}

    # 1-2. simulated data
    store, n_catalog, timings["sim_dataset"] = _sim_dataset(args, work)
    sim = read_dataset(store)
    run_dir = work / store.stem
    if n_catalog < args.min_sim:
        msg = (f"the simulated catalogue has {n_catalog} galaxies after the cuts, fewer than "
               f"--min-sim {args.min_sim}; raise --n-sim")
        raise RuntimeError(msg)
    sim_train, sim_val, sim_test = sim.split((0.8, 0.1, 0.1), seed=SPLIT_SEED)
    report["sim_data"] = {
        "sky": f"astro_metallicity.mock.MockSDSS(n_galaxies={args.n_sim}, seed={args.sim_seed})",
        "n_catalog": n_catalog, "n_good_cutouts": len(sim),
        "n_train": len(sim_train), "n_val": len(sim_val), "n_test": len(sim_test),
        "route": "query_training_catalog -> build_dataset -> acquire.fetch_cutouts("
                 "source='jpeg', scale='adaptive', size=128) via the mock ImgCutout service",
    }
    log.info(f"Simulated cutouts: {len(sim)} good of {n_catalog}; split "
             f"{len(sim_train)}/{len(sim_val)}/{len(sim_test)}")

    # 3. pretraining
    t0 = time.perf_counter()
    pretrain_dir = run_dir / (f"pretrain_{args.arch}_{args.input_size}px_e{args.pretrain_epochs}"
                              f"_lr{args.pretrain_lr:g}_b{args.batch_size}_s{args.seed}")
    pretraining = TrainingConfig(
        outputs=("metallicity", "log_mstar"), arch=args.arch, input_size=args.input_size,
        epochs=args.pretrain_epochs, batch_size=args.batch_size, max_lr=args.pretrain_lr,
        weight_decay=0.05, patience=args.patience, seed=args.seed, device=args.device,
        num_workers=args.num_workers)
    pre = train_model(
        sim_train, sim_val, pretraining, checkpoint_dir=pretrain_dir,
        metadata={"provenance": {"stage": "pretrained on the simulated survey"}})
    timings["pretrain"] = time.perf_counter() - t0
    pretrained = pre.model
    # error calibration of the pretrained model on the simulated validation split
    calib = sim_val.subset(np.arange(min(len(sim_val), args.calibration_size)))
    val_pred = pretrained.predict(calib.images)
    sim_scale = calibrate_error_scale(calib.targets(["metallicity"])[:, 0],
                                      val_pred["metallicity"], val_pred["metallicity_err"])
    pretrained.metadata["error_scale"]["metallicity"] = sim_scale
    baselines = fit_baselines(sim_train, seed=args.seed)
    report["sim_test_pretrained"] = evaluate(pretrained, sim_test, baselines=baselines,
                                             figures_dir=figures, label="sim_test_pretrained")
    report["sim_test_pretrained"]["error_scale_from_sim_val"] = sim_scale
    save_model(pretrained.network, pretrained.metadata, pretrain_dir / "pretrained_model",
               half=False)

    # 4. real JPEGs: fixed split, fine-tuning
    real = _real_images(args)
    train_ids, val_ids = real_split(real.catalog["objID"])
    real_train, real_val = _select(real, train_ids), _select(real, val_ids)
    report["real_data"] = {
        "source": "400 SDSS DR14 ImgCutout gri JPEGs (128 px, adaptive scale) with MPA-JHU "
                  "oh_p50, a random subset of Wu & Boada (2018)'s training set",
        "n_train": len(real_train), "n_val": len(real_val),
        "split": f"recipes/bundled.py real_split(objIDs, seed={REAL_SPLIT_SEED})",
        "val_objids": [int(i) for i in val_ids],
    }
    # Fine-tuning set: the real training JPEGs (repeated to weight them up) plus a
    # random sample of simulated training cutouts replayed so that the network
    # keeps what it learned on the simulated survey.
    ft_train, replay = finetune_set(real_train, sim_train, real_repeat=args.real_repeat,
                                    n_replay=args.replay, seed=args.seed)
    report["real_data"]["finetune_set"] = (
        f"{args.real_repeat} x {len(real_train)} real + {len(replay)} simulated (replay) "
        "cutouts per epoch")
    t0 = time.perf_counter()
    finetuning = TrainingConfig(
        epochs=args.finetune_epochs, batch_size=32, max_lr=args.finetune_lr, weight_decay=0.05,
        patience=args.finetune_patience, seed=args.seed, device=args.device,
        backbone_lr_factor=args.finetune_backbone_lr_factor,
        freeze_batchnorm=args.finetune_freeze_batchnorm,
        anchor_strength=args.finetune_anchor_strength)
    fine = train_model(
        ft_train, real_val, finetuning, init_from=pretrained,
        # under the pretraining's folder: a new pretraining never reuses an old fine-tune
        checkpoint_dir=pretrain_dir / (
            f"finetune_x{args.real_repeat}_replay{len(replay)}_lr{args.finetune_lr:g}"
            f"_e{args.finetune_epochs}_p{args.finetune_patience}"
            f"_bb{args.finetune_backbone_lr_factor:g}"
            f"{'_frozenbn' if args.finetune_freeze_batchnorm else ''}"
            f"_anchor{args.finetune_anchor_strength:g}"),
        metadata={"provenance": {"stage": "pretrained on the simulated survey, fine-tuned on "
                                          "320 real SDSS ImgCutout JPEGs"}})
    timings["finetune"] = time.perf_counter() - t0
    model = fine.model
    if args.finetune_interpolation != 1.0:
        model.network.load_state_dict(interpolate_weights(
            pretrained.network.state_dict(), model.network.state_dict(),
            args.finetune_interpolation))
        model.metadata["training"][-1]["weight_interpolation"] = (
            f"{1 - args.finetune_interpolation:g} x pretrained + "
            f"{args.finetune_interpolation:g} x fine-tuned weights (WiSE-FT)")
    # How much of the simulated skill survives fine-tuning (simulated validation split,
    # no test-time augmentation): the criterion for choosing the replay fraction.
    sim_val_true = sim_val.targets(["metallicity"])[:, 0]
    report["sim_val_no_tta"] = {
        name: regression_report(sim_val_true, m.predict(sim_val.images, tta=False)["metallicity"])
        for name, m in (("pretrained", pretrained), ("finetuned", model))}

    # error calibration on the 80 real validation galaxies, checked by 2-fold split
    true_val = real_val.targets(["metallicity"])[:, 0]
    model.metadata["error_scale"]["metallicity"] = 1.0
    raw = model.predict(real_val.images)
    halves = np.arange(len(true_val)) % 2 == 0
    cross = []
    for fit_half in (halves, ~halves):
        s = calibrate_error_scale(true_val[fit_half], raw["metallicity"][fit_half],
                                  raw["metallicity_err"][fit_half])
        cross.append(coverage(true_val[~fit_half], raw["metallicity"][~fit_half],
                              s * raw["metallicity_err"][~fit_half]))
    scale = calibrate_error_scale(true_val, raw["metallicity"], raw["metallicity_err"])
    model.metadata["error_scale"]["metallicity"] = scale
    # log_mstar has no real labels: calibrate its error on the simulated validation split
    mass_scale = None
    if "log_mstar" in model.metadata["outputs"]:
        model.metadata["error_scale"]["log_mstar"] = 1.0
        sim_raw = model.predict(calib.images)
        mass_scale = calibrate_error_scale(calib.targets(["log_mstar"])[:, 0],
                                           sim_raw["log_mstar"], sim_raw["log_mstar_err"])
        model.metadata["error_scale"]["log_mstar"] = mass_scale
    report["error_calibration"] = {
        "metallicity_error_scale": scale,
        "fitted_on": "the 80 real validation galaxies (|residual|/sigma 68.27th percentile)",
        "uncalibrated_coverage_real_val": coverage(true_val, raw["metallicity"],
                                                   raw["metallicity_err"]),
        "two_fold_coverage_real_val": float(np.mean(cross)),
        "log_mstar_error_scale": mass_scale,
        "log_mstar_fitted_on": "the simulated validation split (no real masses available)",
    }

    # 5. evaluation
    real_baselines = fit_baselines(real_train, seed=args.seed)
    report["real_val"] = evaluate(model, real_val, baselines=real_baselines,
                                  figures_dir=figures, label="real_val")
    report["real_val"]["pretrained_only"] = regression_report(
        true_val, pretrained.predict(real_val.images)["metallicity"])
    report["real_val"]["references"] = {
        "training_mean_dex": 0.18, "wu_boada_2018_resnet34_77k_galaxies_dex": 0.085,
        "real_only_resnet18_5fold_cv_dex_shared_readme": 0.106,
        "image_colour_gbr_5fold_cv_dex_shared_readme": 0.12}
    report["sim_test"] = evaluate(model, sim_test, baselines=baselines, figures_dir=figures,
                                  label="sim_test")
    if args.real_only_epochs > 0:
        t0 = time.perf_counter()
        real_only = TrainingConfig(
            outputs=("metallicity",), arch=args.arch, input_size=args.input_size,
            epochs=args.real_only_epochs, batch_size=32, max_lr=args.pretrain_lr,
            weight_decay=0.05, patience=args.real_only_epochs, seed=args.seed,
            device=args.device)
        scratch = train_model(
            real_train, real_val, real_only, checkpoint_dir=work / f"real_only_{args.arch}_{args.input_size}px_e{args.real_only_epochs}")
        timings["real_only"] = time.perf_counter() - t0
        report["real_val"]["real_only_cnn"] = regression_report(
            true_val, scratch.model.predict(real_val.images)["metallicity"])

    # 6. final metadata and files
    meta = model.metadata
    meta["provenance"] = {
        "description": (
            "ResNet-18 pretrained on a simulated SDSS-like survey (astro_metallicity.mock: "
            "Tremonti 2004 MZR with the Mannucci 2010 FMR SFR term and intrinsic scatter, "
            "Salim 2007 star-forming sequence, Shen 2003 sizes, Taylor 2011 colours, "
            "metallicity-dependent disk dust, MPA-JHU-like catalogue mass noise; SDSS-like "
            "seeing, sky and noise; "
            "cutouts through the mock ImgCutout service with the shared asinh stretch) and "
            "fine-tuned on 320 real SDSS DR14 ImgCutout JPEGs with MPA-JHU DR7 metallicities. "
            "Accuracy on real galaxies beyond the 80 validation galaxies is unmeasured."),
        "sim_data": report["sim_data"],
        "real_data": {k: v for k, v in report["real_data"].items() if k != "val_objids"},
        "real_val_objids": report["real_data"]["val_objids"],
        "seeds": report["seeds"],
        "command": report["command"],
        "astro_metallicity_version": __version__,
    }
    meta["metrics"] = {
        key: {k: report[key][k] for k in ("cnn", "baselines", "rmse_gain_over_baselines")}
        for key in ("sim_test", "real_val")}
    # every training image came through the ImgCutout route: predictions default to it
    meta["cutout_source"] = "jpeg"
    reference, meta["ood"] = ood_reference(model, real.images,
                                           _ood_sim_images(args, sim_train.images),
                                           seed=args.seed)
    report["ood"] = meta["ood"]
    pt = save_model(model.network, meta, out_dir / args.model_name, half=True,
                    ood_reference=reference)
    report["model_file"] = _relative(pt)
    report["model_size_mb"] = round(pt.stat().st_size / 1e6, 2)
    if args.n_fresh > 0:
        saved = load_model(pt, device=args.device)
        report["fresh_sim_sky"] = _fresh_sky_check(saved, args, work, figures)
    timings["total"] = time.perf_counter() - started
    for key in ("sim_test_pretrained", "sim_test", "real_val", "fresh_sim_sky"):
        if key in report:
            report[key]["figures"] = [_relative(f) for f in report[key].get("figures", [])]
    report["device"] = str(model.device)
    write_report(report, report_path)
    log.info(f"Bundled model written to {pt}; report {report_path}")
    return report


def _parser():
    p = argparse.ArgumentParser(
        prog="python recipes/bundled.py",
        description="Train the bundled metallicity model (simulated pretraining + real "
                    "fine-tuning) reproducibly.")
    p.add_argument("--output", required=True,
                   help="folder the model (<model-name>.pt/.json) and the report are written to")
    p.add_argument("--model-name", default=_MODEL_NAME)
    p.add_argument("--report", help="JSON report with all metrics "
                                    "(default: OUTPUT/bundled_report.json)")
    p.add_argument("--work-dir", help="folder for cutout stores, checkpoints and figures, "
                                      "reused by later runs (default: OUTPUT/work)")
    p.add_argument("--real-data", default=str(_default_shared() / "sdss-gri-jpeg-400"),
                   help="folder with images/{objID}.jpg and labels.csv")
    p.add_argument("--n-sim", type=int, default=22000,
                   help="galaxies in the simulated sky")
    p.add_argument("--min-sim", type=int, default=20000,
                   help="fail if fewer galaxies pass the catalogue cuts")
    p.add_argument("--sim-seed", type=int, default=SIM_SEED)
    p.add_argument("--n-fresh", type=int, default=1000,
                   help="galaxies of the fresh-sky check (0 to skip)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pretrain-epochs", type=int, default=6)
    p.add_argument("--pretrain-lr", type=float, default=2e-3)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--finetune-lr", type=float, default=3e-4)
    p.add_argument("--finetune-patience", type=int, default=20,
                   help="early-stopping patience of fine-tuning (the best epoch on the real "
                        "validation set is kept either way)")
    p.add_argument("--finetune-backbone-lr-factor", type=float, default=1.0,
                   help="fine-tuning learning rate of all layers but the head, as a fraction "
                        "of --finetune-lr")
    p.add_argument("--finetune-freeze-batchnorm", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="keep the pretrained batch-normalisation statistics while fine-tuning")
    p.add_argument("--finetune-anchor-strength", type=float, default=0.0,
                   help="decoupled L2-SP pull of the backbone towards the pretrained weights")
    p.add_argument("--finetune-interpolation", type=float, default=1.0,
                   help="final weights: this fraction of the way from the pretrained to the "
                        "fine-tuned ones (1: the fine-tuned weights; WiSE-FT)")
    p.add_argument("--real-repeat", type=int, default=2,
                   help="times each real training JPEG appears per fine-tuning epoch")
    p.add_argument("--replay", type=int, default=2560,
                   help="simulated training cutouts mixed into the fine-tuning set")
    p.add_argument("--real-only-epochs", type=int, default=60,
                   help="epochs of the real-only comparison CNN (0 to skip)")
    p.add_argument("--chunk-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch default; 1 is fastest on a shared 2-core "
                        "machine, use more on a dedicated one)")
    p.add_argument("--calibration-size", type=int, default=1000,
                   help="simulated validation cutouts used for error calibration")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--progress", action="store_true", help="progress bar for the cutouts")
    p.add_argument("--ood-sim", type=int, default=1000,
                   help="simulated training cutouts in the out-of-distribution reference")
    p.add_argument("--ood-only", action="store_true",
                   help="only write the out-of-distribution reference (and cutout_source) of "
                        "the model already in --output; its weights are not touched")
    return p


def main(argv=None):
    """Command-line entry point of the bundled-model recipe."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    log.setLevel("INFO")
    if args.ood_only:
        print(json.dumps(run_ood_only(args), indent=2))
        return 0
    report = run_bundled_recipe(args)
    print(json.dumps({k: report[k] for k in ("model_file", "timings_s")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
