"""Command-line front ends of ``astro-metallicity train`` and ``astro-metallicity evaluate``.

``astro_metallicity.cli`` delegates both sub-commands here (`train`,
`evaluate`, or `main` with the sub-command name first).

Examples
--------
Retrain on real SDSS with MPA-JHU labels (catalogue query, ImgCutout JPEGs,
80/10/10 split, evaluation on the test split)::

    astro-metallicity train --query-catalog --store sdss_dr17.h5 --source jpeg \\
        --output my_model --epochs 30 --device auto

Fine-tune the bundled model on a folder of JPEGs with a labels CSV::

    astro-metallicity train --images cutouts/ --labels labels.csv \\
        --init-from bundled --output tuned_model

Pretrain on a simulated store while aligning its features with a folder of
unlabelled real cutouts (domain-adversarial training)::

    astro-metallicity train --data sim.h5 --domain-images real_cutouts/ \\
        --domain-weight 1 --output sim_dann

Evaluate a model on a store, with baselines fitted on another::

    astro-metallicity evaluate --model tuned_model.pt --data test.h5 --train train.h5 \\
        --figures figs/ --report report.json

The recipe of the bundled model is not part of the installed package: it is
``recipes/crossfit.py`` in a source checkout
(``python recipes/crossfit.py --output DIR --sizes 400 --bundle MODEL_DIR``).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["evaluate", "main", "train"]

_RECIPE_MOVED = ("the bundled-model recipe is no longer part of the package: from a source "
                 "checkout run `python recipes/crossfit.py --output DIR --sizes 400 "
                 "--bundle MODEL_DIR` (see its --help)")


def _train_parser(parser=None):
    """Arguments of ``astro-metallicity train`` (added to ``parser`` if given)."""
    p = parser or argparse.ArgumentParser(prog="astro-metallicity train",
                                          description="Train or fine-tune the metallicity CNN.")
    data = p.add_argument_group("data (one of)")
    data.add_argument("--data", help="HDF5 cutout store (from build_dataset / an earlier --store)")
    data.add_argument("--images", help="folder of JPEG/PNG cutouts named {id}.jpg")
    data.add_argument("--labels", help="CSV with the id column and oh_p50 (with --images)")
    data.add_argument("--id-column", default="objID")
    data.add_argument("--query-catalog", action="store_true",
                      help="query the SDSS training catalogue (conf.skyserver_baseurl) and "
                           "build --store from it first")
    data.add_argument("--top", type=int, help="at most this many galaxies (with --query-catalog)")
    data.add_argument("--store", help="HDF5 store to build (with --query-catalog)")
    data.add_argument("--source", default="jpeg", choices=["jpeg", "frames"])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--output", required=False, help="model path (writes .pt and .json)")
    p.add_argument("--init-from", help="checkpoint to fine-tune ('bundled' for the bundled model)")
    # network options: defaults for a new network; --init-from keeps the model's own
    p.add_argument("--arch", help="network architecture (default resnet18)")
    p.add_argument("--input-size", type=int, help="network input side in px (default 64)")
    p.add_argument("--outputs", help="comma-separated outputs (default metallicity,log_mstar)")
    settings = p.add_argument_group("training settings (astro_metallicity.train.TrainingConfig)")
    for flag, kind, default, text in (
            ("--epochs", int, 20, "number of epochs"), ("--batch-size", int, 64, "images per step"),
            ("--lr", float, 2e-3, "peak learning rate"),
            ("--weight-decay", float, 0.05, "AdamW weight decay"),
            ("--patience", int, 5, "early stopping after this many epochs without progress"),
            ("--seed", int, 0, "seed of initialisation, shuffling and augmentation")):
        settings.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    settings.add_argument("--device", default=None, help="default conf.device")
    settings.add_argument("--domain-images",
                          help="folder of unlabelled JPEG/PNG cutouts of the domain the model "
                               "will meet, the size of the training cutouts: domain-adversarial "
                               "training (DANN) against them")
    settings.add_argument("--domain-weight", type=float, default=None,
                          help="final gradient reversal scale with --domain-images (default 1)")
    p.add_argument("--checkpoint-dir", help="resumable checkpoints (default: <output>_ckpt)")
    p.add_argument("--figures", help="folder for evaluation figures")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads")
    return p


def _evaluate_parser(parser=None):
    """Arguments of ``astro-metallicity evaluate`` (added to ``parser`` if given)."""
    p = parser or argparse.ArgumentParser(prog="astro-metallicity evaluate",
                                          description="Evaluate a model on a labelled set.")
    p.add_argument("--model", default=None, help="checkpoint .pt (default: bundled model)")
    p.add_argument("--data", help="HDF5 cutout store with labels")
    p.add_argument("--images", help="folder of cutouts (with --labels)")
    p.add_argument("--labels", help="labels CSV (with --images)")
    p.add_argument("--id-column", default="objID")
    p.add_argument("--train", help="store to fit the photometry/colour baselines on")
    p.add_argument("--figures", help="folder for the figures")
    p.add_argument("--report", help="write the JSON report here (default: print it)")
    p.add_argument("--label", default="test")
    p.add_argument("--device", default=None)
    return p


def _load_data(args):
    from .dataset import dataset_from_images, read_dataset

    if getattr(args, "data", None):
        return read_dataset(args.data)
    if getattr(args, "images", None):
        if not args.labels:
            raise SystemExit("--images needs --labels")
        return dataset_from_images(args.images, args.labels, id_column=args.id_column)
    raise SystemExit("give --data STORE.h5 or --images DIR --labels CSV"
                     + (" or --query-catalog --store STORE.h5" if hasattr(args, "store") else ""))


def _folder_images(folder):
    """Every JPEG/PNG image in ``folder`` (sorted by name) as ``(N, H, W, 3)`` uint8."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"--domain-images {folder} is not a folder")
    files = sorted(f for f in folder.iterdir()
                   if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"--domain-images {folder} holds no .jpg, .jpeg or .png file")
    images = []
    for file in files:
        with Image.open(file) as im:
            images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    shapes = sorted({im.shape for im in images})
    if len(shapes) != 1:
        raise SystemExit(f"--domain-images {folder}: images of different shapes {shapes}")
    return np.stack(images)


def train(argv=None):
    """Run ``astro-metallicity train`` with the given arguments. Returns an exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--recipe" or a.startswith("--recipe=") for a in argv):
        raise SystemExit(_RECIPE_MOVED)
    args = _train_parser().parse_args(argv)
    from ..logger import log

    log.setLevel("INFO")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ..model import bundled_model_path, save_model
    from .catalog import query_training_catalog
    from .dataset import build_dataset, read_dataset
    from .evaluation import calibrate_error_scale, write_report
    from .evaluation import evaluate as run_evaluation
    from .training import TrainingConfig, train_model

    if not args.output:
        raise SystemExit("--output PATH is required (the model is written to PATH.pt/.json)")
    if args.domain_weight is not None and not args.domain_images:
        raise SystemExit("--domain-weight needs --domain-images DIR")
    domain_images = _folder_images(args.domain_images) if args.domain_images else None
    outputs = (None if args.outputs is None
               else [s.strip() for s in args.outputs.split(",") if s.strip()])
    try:
        config = TrainingConfig(outputs=outputs, arch=args.arch, input_size=args.input_size,
                                epochs=args.epochs, batch_size=args.batch_size, max_lr=args.lr,
                                weight_decay=args.weight_decay, patience=args.patience,
                                seed=args.seed, device=args.device,
                                domain_weight=(0.0 if domain_images is None
                                               else 1.0 if args.domain_weight is None
                                               else args.domain_weight))
    except ValueError as exc:
        raise SystemExit(f"astro-metallicity train: {exc}") from None
    if args.query_catalog:
        if not args.store:
            raise SystemExit("--query-catalog needs --store PATH.h5")
        catalog = query_training_catalog(top=args.top)
        catalog.sort("objID")
        build_dataset(catalog, args.store, source=args.source, progress=True)
        data = read_dataset(args.store)
    else:
        data = _load_data(args)
    train_fraction = 1.0 - args.val_fraction - args.test_fraction
    train_set, val_set, test_set = data.split(
        (train_fraction, args.val_fraction, args.test_fraction), seed=args.split_seed)
    init_from = args.init_from
    if init_from == "bundled":
        init_from = bundled_model_path()
    output = Path(args.output)
    if domain_images is not None and domain_images.shape[1:] != train_set.images.shape[1:]:
        raise SystemExit(f"--domain-images {args.domain_images}: images of shape "
                         f"{domain_images.shape[1:]}, the training cutouts are "
                         f"{train_set.images.shape[1:]}")
    result = train_model(
        train_set, val_set if len(val_set) else None, config, init_from=init_from,
        checkpoint_dir=args.checkpoint_dir or output.with_name(output.name + "_ckpt"),
        metadata={"provenance": {"command": "astro-metallicity train " + " ".join(argv)}},
        domain_images=domain_images)
    model = result.model
    if len(val_set):
        pred = model.predict(val_set.images)
        model.metadata["error_scale"]["metallicity"] = calibrate_error_scale(
            val_set.targets(["metallicity"])[:, 0], pred["metallicity"],
            pred["metallicity_err"])
    report = {}
    if len(test_set):
        report = run_evaluation(model, test_set, train=train_set, figures_dir=args.figures,
                                label="test")
        model.metadata["metrics"] = {"test": {"cnn": report["cnn"],
                                              "baselines": report["baselines"]}}
    pt = save_model(model.network, model.metadata, output, half=True)
    if report:
        write_report(report, output.with_name(output.name + "_report.json"))
    print(f"model written to {pt}")
    return 0


def evaluate(argv=None):
    """Run ``astro-metallicity evaluate`` with the given arguments. Returns an exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _evaluate_parser().parse_args(argv)
    from ..model import load_model
    from .dataset import read_dataset
    from .evaluation import evaluate as run_evaluation
    from .evaluation import write_report

    model = load_model(args.model, device=args.device)
    data = _load_data(args)
    train_set = read_dataset(args.train) if args.train else None
    report = run_evaluation(model, data, train=train_set, figures_dir=args.figures,
                            label=args.label)
    if args.report:
        write_report(report, args.report)
    else:
        print(json.dumps(report, indent=2))
    return 0


def main(argv=None):
    """``main(['train', ...])`` or ``main(['evaluate', ...])``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("train", "evaluate"):
        raise SystemExit("usage: astro-metallicity {train,evaluate} ...")
    return (train if argv[0] == "train" else evaluate)(argv[1:])
