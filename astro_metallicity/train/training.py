"""Training the metallicity CNN.

`train_model` trains (or fine-tunes) the network on a
`~astro_metallicity.train.LabelledCutouts` with the settings of a
`TrainingConfig`:

* augmentation with torchvision transforms: the 8 dihedral views (random
  horizontal flip and rotation by a multiple of 90 degrees) and a random zoom
  by up to ``zoom`` (1.1, as in Wu & Boada 2018) with a small random shift;
* AdamW with a one-cycle learning-rate schedule;
* mixed precision and channels-last memory layout on CUDA;
* loss: squared error of the mean plus the Gaussian negative log-likelihood of
  the variance head on the detached residual (``'mse+nll'``; the mean is fitted
  exactly as with the paper's RMSE loss), or the full Gaussian NLL (``'nll'``);
  missing labels (NaN) are left out of the loss, so a set with metallicity
  only can fine-tune a model that also predicts stellar mass;
* per-epoch validation RMSE, NMAD and bias logged; early stopping on the
  validation metallicity RMSE; the best epoch's weights are kept;
* a checkpoint after every epoch that `train_model` resumes from, with
  per-epoch seeds so that an interrupted and resumed run gives the same
  weights as an uninterrupted one.
"""

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._network import (
    ARCHITECTURES,
    ENSEMBLE_ARCH,
    OUTPUT_UNITS,
    build_network,
    default_metadata,
    images_to_input,
    resolve_device,
)
from ..logger import log
from ..model import MetallicityModel, _member_names, load_model, save_model
from ._domain import DomainAdversary
from ._metrics import residual_metrics
from .dataset import _as_cutouts

__all__ = ["TrainingConfig", "TrainingResult", "train_model"]

_CHECKPOINT = "last_checkpoint.pt"
_BEST = "best"
# Settings a checkpoint must share with the run resuming it, and the values of
# those missing from checkpoints written before the fine-tuning options existed.
_RESUME_KEYS = ("n_train", "epochs", "batch_size", "max_lr", "seed", "loss",
                "backbone_lr_factor", "freeze_batchnorm", "anchor_strength", "domain_weight",
                "n_domain")
_RESUME_DEFAULTS = {"backbone_lr_factor": 1.0, "freeze_batchnorm": False, "anchor_strength": 0.0,
                    "domain_weight": 0.0, "n_domain": 0}
# Network settings that a model given as init_from fixes.
_NETWORK_KEYS = ("arch", "input_size", "outputs")
_NEW_NETWORK_DEFAULTS = {"arch": "resnet18", "input_size": 64,
                         "outputs": ("metallicity", "log_mstar")}


@dataclass
class TrainingConfig:
    """Settings of a `train_model` run.

    Every setting is checked when the object is made, so a typo or an
    impossible value fails before any data is read.

    Parameters
    ----------
    outputs : sequence of str, optional
        Quantities to predict, ``'metallicity'`` and optionally ``'log_mstar'``.
        Default ``('metallicity', 'log_mstar')`` for a new network; with
        ``init_from`` the starting model's (another value is an error).
    arch : {'resnet18', 'resnet34', 'tiny'}, optional
        Network architecture; default ``'resnet18'`` for a new network, the
        starting model's with ``init_from`` (another value is an error).
        ``'tiny'`` is a 3-layer CNN for tests.
    input_size : int, optional
        Network input side in pixels; cutouts are resized to it. Default 64 for
        a new network, the starting model's with ``init_from`` (another value is
        an error).
    epochs : int
        Number of epochs (the one-cycle schedule spans them all).
    batch_size : int
        Images per optimisation step.
    max_lr : float
        Peak learning rate of the one-cycle schedule.
    weight_decay : float
        AdamW weight decay.
    pct_start : float
        Fraction of steps with rising learning rate.
    loss : {'mse+nll', 'nll'}
        Loss function (see `astro_metallicity.train.train_model`).
    zoom : float
        Maximum random zoom of the augmentation (>= 1; 1 disables it).
    patience : int
        Stop after this many epochs without a better validation RMSE.
    seed : int
        Seed for initialisation, shuffling and augmentation.
    backbone_lr_factor : float
        Learning rate of every layer but the output head, as a fraction of
        ``max_lr``, in (0, 1] (fine-tuning: below 1 keeps pretrained features
        while the head adapts).
    freeze_batchnorm : bool
        Keep the batch-normalisation statistics of the starting network fixed
        (fine-tuning on few images).
    anchor_strength : float
        With ``init_from``: decoupled L2-SP, a pull of the backbone weights
        towards the pretrained ones, ``w -= lr * anchor_strength * (w - w_pretrained)``
        after each step (0 disables it). It limits how far fine-tuning drifts
        from what pretraining learned.
    domain_weight : float
        Domain-adversarial training (DANN, Ganin et al. 2016): with
        ``domain_images`` given to `train_model`, the final scale of the
        gradient reversal between the embedding and a classifier that tells
        the training cutouts from those unlabelled images (0 disables it). Each
        step then also draws ``batch_size // 2`` (at least 1) of those images.
    device : str, optional
        Torch device; default ``conf.device`` (``'auto'``: CUDA if available).
    num_workers : int
        DataLoader worker processes.

    Raises
    ------
    ValueError
        If a setting is out of its range.

    Examples
    --------
    >>> from astro_metallicity.train import TrainingConfig
    >>> config = TrainingConfig(epochs=30, max_lr=1e-3)
    >>> config.batch_size
    64
    >>> TrainingConfig(loss="l1")
    Traceback (most recent call last):
    ...
    ValueError: loss must be 'mse+nll' or 'nll', got 'l1'
    """

    outputs: tuple = None
    arch: str = None
    input_size: int = None
    epochs: int = 10
    batch_size: int = 64
    max_lr: float = 2e-3
    weight_decay: float = 0.05
    pct_start: float = 0.25
    loss: str = "mse+nll"
    zoom: float = 1.1
    patience: int = 5
    seed: int = 0
    backbone_lr_factor: float = 1.0
    freeze_batchnorm: bool = False
    anchor_strength: float = 0.0
    domain_weight: float = 0.0
    device: str = None
    num_workers: int = 0

    def __post_init__(self):
        if self.loss not in ("mse+nll", "nll"):
            msg = f"loss must be 'mse+nll' or 'nll', got {self.loss!r}"
            raise ValueError(msg)
        self.epochs, self.batch_size = int(self.epochs), int(self.batch_size)
        if self.epochs < 1 or self.batch_size < 1:
            msg = f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}"
            raise ValueError(msg)
        self.patience, self.num_workers = int(self.patience), int(self.num_workers)
        if self.patience < 0 or self.num_workers < 0:
            msg = (f"patience and num_workers must be >= 0, got {self.patience} and "
                   f"{self.num_workers}")
            raise ValueError(msg)
        self.max_lr, self.weight_decay = float(self.max_lr), float(self.weight_decay)
        if self.max_lr <= 0 or self.weight_decay < 0:
            msg = (f"max_lr must be > 0 and weight_decay >= 0, got {self.max_lr} and "
                   f"{self.weight_decay}")
            raise ValueError(msg)
        self.backbone_lr_factor = float(self.backbone_lr_factor)
        self.anchor_strength = float(self.anchor_strength)
        if not 0 < self.backbone_lr_factor <= 1 or self.anchor_strength < 0:
            msg = (f"backbone_lr_factor must be in (0, 1] and anchor_strength >= 0, got "
                   f"{self.backbone_lr_factor} and {self.anchor_strength}")
            raise ValueError(msg)
        self.domain_weight = float(self.domain_weight)
        if not 0 <= self.domain_weight < np.inf:
            msg = f"domain_weight must be a finite number >= 0, got {self.domain_weight}"
            raise ValueError(msg)
        self.pct_start = float(self.pct_start)
        if not 0 < self.pct_start < 1:
            msg = f"pct_start must be between 0 and 1, got {self.pct_start}"
            raise ValueError(msg)
        self.zoom = float(self.zoom)
        if self.zoom < 1:
            msg = f"zoom must be >= 1, got {self.zoom}"
            raise ValueError(msg)
        if self.arch is not None and self.arch not in ARCHITECTURES:
            msg = f"arch must be one of {ARCHITECTURES}, got {self.arch!r}"
            raise ValueError(msg)
        if self.input_size is not None:
            self.input_size = int(self.input_size)
            if self.input_size < 1:
                msg = f"input_size must be a positive number of pixels, got {self.input_size}"
                raise ValueError(msg)
        if self.outputs is not None:
            self.outputs = (self.outputs,) if isinstance(self.outputs, str) else tuple(self.outputs)
            if "metallicity" not in self.outputs or any(o not in OUTPUT_UNITS
                                                        for o in self.outputs):
                msg = (f"outputs must include 'metallicity' and be among {list(OUTPUT_UNITS)}, "
                       f"got {list(self.outputs)}")
                raise ValueError(msg)


@dataclass
class TrainingResult:
    """What `train_model` returns.

    Attributes
    ----------
    model : `~astro_metallicity.MetallicityModel`
        The network at its best validation epoch (the last epoch without validation).
    history : list of dict
        Per-epoch training loss, learning rate, validation metrics and timing.
    best_epoch : int
        Epoch (0-based) whose weights were kept.
    stopped_early : bool
        Whether early stopping ended the run.
    completed : bool
        False when the run stopped because of ``stop_after`` (resume it later).
    checkpoint_dir : `~pathlib.Path` or None
        Where checkpoints were written.
    """

    model: MetallicityModel
    history: list = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    completed: bool = True
    checkpoint_dir: Path = None


class _RandomRot90:
    """Rotate an image tensor ``(..., H, W)`` by a random multiple of 90 degrees."""

    def __call__(self, image):
        import torch

        k = int(torch.randint(0, 4, (1,)))
        return torch.rot90(image, k, dims=(-2, -1)) if k else image

    def __repr__(self):
        return "_RandomRot90()"


def _training_transform(input_size, *, zoom=1.1):
    """The training augmentation: dihedral flips/rotations and a small random zoom.

    Parameters
    ----------
    input_size : int
        Output side in pixels (the network input size).
    zoom : float
        Maximum zoom factor (>= 1); a random square crop with side between
        ``1/zoom`` and 1 of the image, anywhere inside it, is resized to
        ``input_size`` with antialiasing.

    Returns
    -------
    transform : `torchvision.transforms.v2.Compose`
        Acts on uint8 tensors ``(3, H, W)``.
    """
    from torchvision.transforms import v2

    zoom = float(zoom)
    if zoom < 1:
        msg = f"zoom must be >= 1, got {zoom}"
        raise ValueError(msg)
    return v2.Compose([
        v2.RandomHorizontalFlip(p=0.5),
        _RandomRot90(),
        v2.RandomResizedCrop(int(input_size), scale=(1.0 / zoom**2, 1.0), ratio=(1.0, 1.0),
                             antialias=True),
    ])


class _ArrayDataset:
    """torch Dataset over in-memory uint8 images (N, H, W, 3) and float targets."""

    def __init__(self, images, targets, transform=None):
        import torch

        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.float32))
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def _loss_fn(out, y, n_out, kind):
    import torch

    mu = out[:, :n_out]
    logvar = out[:, n_out:].clamp(-12.0, 12.0)
    mask = torch.isfinite(y)
    r = torch.where(mask, y, mu.detach()) - mu
    if kind == "mse+nll":
        per = r**2 + 0.5 * (logvar + r.detach() ** 2 * torch.exp(-logvar))
    elif kind == "nll":
        per = 0.5 * (logvar + r**2 * torch.exp(-logvar))
    else:
        msg = f"loss must be 'mse+nll' or 'nll', got {kind!r}"
        raise ValueError(msg)
    return (per * mask).sum() / mask.sum().clamp(min=1)


def _regroup(optimizer_state, n_groups):
    """An optimizer state dict with its parameter groups merged into one or split in two.

    Checkpoints hold either one group (all parameters) or two (backbone, then the
    head), with the parameters in the same overall order; the settings that decide
    the layout are checked before resuming, so only the layout can differ.
    """
    groups = optimizer_state["param_groups"]
    if len(groups) == n_groups:
        return optimizer_state
    params = [i for g in groups for i in g["params"]]
    if n_groups == 1:
        merged = [{**groups[-1], "params": params}]
    else:  # the head is the last layer: its weight and bias are the last two parameters
        merged = [{**groups[0], "params": params[:-2]}, {**groups[0], "params": params[-2:]}]
    return {**optimizer_state, "param_groups": merged}


def _head_parameter_names(network):
    """Names of the parameters of the network's output layer (its last layer with weights)."""
    last = None
    for name, module in network.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = name
    prefix = f"{last}." if last else ""
    return {n for n, _ in network.named_parameters() if n.startswith(prefix)
            and n[len(prefix):].count(".") == 0}


def _predict_plain(network, images, metadata, device, batch_size=256):
    """Predictions without test-time augmentation (standardised units), for monitoring."""
    import torch

    n_out = len(metadata["outputs"])
    out = []
    network.eval()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start:start + batch_size]).to(device)
            x = images_to_input(batch.permute(0, 3, 1, 2), metadata)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.float16,
                                enabled=device.type == "cuda"):
                out.append(network(x).float().cpu().numpy()[:, :n_out])
    return np.concatenate(out) if out else np.zeros((0, n_out))


def _to_physical(standardised, metadata):
    mean = np.array([metadata["label_mean"][k] for k in metadata["outputs"]])
    std = np.array([metadata["label_std"][k] for k in metadata["outputs"]])
    return standardised * std + mean


def _image_normalization(images, max_images=4000, seed=0):
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), size=min(len(images), max_images), replace=False)
    pixels = images[np.sort(pick)].reshape(-1, 3).astype(np.float64) / 255.0
    return {"mean": pixels.mean(axis=0).round(5).tolist(),
            "std": np.maximum(pixels.std(axis=0), 1e-3).round(5).tolist()}


def _resolve_config(config, settings):
    """The run's `TrainingConfig`: ``config`` (or the defaults) with ``settings`` applied."""
    if config is None:
        config = TrainingConfig()
    elif not isinstance(config, TrainingConfig):
        msg = f"config must be a TrainingConfig, got {type(config).__name__}"
        raise TypeError(msg)
    names = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        msg = (f"train_model() got unknown settings {unknown}; the settings are the fields "
               f"of TrainingConfig: {sorted(names)}")
        raise TypeError(msg)
    # replace() runs __post_init__ again, so a config changed after it was made is checked too
    return dataclasses.replace(config, **settings)


def _pretrained(init_from, config):
    """The starting model of a fine-tuning, after checking it against ``config``."""
    base = init_from if isinstance(init_from, MetallicityModel) else load_model(
        init_from, device="cpu")
    if base.metadata["arch"] == ENSEMBLE_ARCH:
        base = _member_to_fine_tune(base)
    have = {"arch": base.metadata["arch"], "input_size": int(base.metadata["input_size"]),
            "outputs": tuple(base.metadata["outputs"])}
    conflicts = {key: getattr(config, key) for key in _NETWORK_KEYS
                 if getattr(config, key) is not None and getattr(config, key) != have[key]}
    if conflicts:
        asked = ", ".join(f"{k}={v!r}" for k, v in conflicts.items())
        kept = ", ".join(f"{k}={have[k]!r}" for k in conflicts)
        msg = (f"init_from fixes the network, but the settings ask for {asked} where the "
               f"starting model has {kept}; leave {sorted(conflicts)} unset to fine-tune it, "
               "or train a new network without init_from")
        raise ValueError(msg)
    return base


def _member_to_fine_tune(ensemble):
    """The member of an ensemble that fine-tuning starts from (``ensemble['init_member']``)."""
    names = _member_names(ensemble.metadata)
    name = ensemble.metadata.get("ensemble", {}).get("init_member")
    if name not in names:
        msg = ("init_from is an ensemble that names no member to fine-tune "
               "(metadata['ensemble']['init_member']); pass one of its members "
               "(MetallicityModel.members) instead")
        raise ValueError(msg)
    log.info(f"init_from is an ensemble: fine-tuning its member {name!r}")
    return ensemble.members[names.index(name)]


def _starting_network(train, config, init_from):
    """The network and metadata training starts from: a pretrained model or a new network."""
    if init_from is not None:
        base = _pretrained(init_from, config)
        network = copy.deepcopy(base.network).cpu()
        meta = copy.deepcopy(base.metadata)
        meta.setdefault("training", [])
        return network, meta
    arch, input_size, outputs = (
        _NEW_NETWORK_DEFAULTS[key] if getattr(config, key) is None else getattr(config, key)
        for key in _NETWORK_KEYS)
    outputs = list(outputs)
    y = train.targets(outputs)
    if not np.all(np.isfinite(y).any(axis=0)):
        msg = f"train has no labels for some of outputs={outputs}"
        raise ValueError(msg)
    meta = default_metadata(
        arch=arch, outputs=outputs, input_size=input_size,
        cutout_size=train.images.shape[1],
        label_mean={k: float(np.nanmean(y[:, j])) for j, k in enumerate(outputs)},
        label_std={k: float(max(np.nanstd(y[:, j]), 1e-3)) for j, k in enumerate(outputs)},
        normalization=_image_normalization(train.images, seed=config.seed))
    meta["training"] = []
    return build_network(arch, n_outputs=len(outputs)), meta


def _domain_images(images, config, train):
    """The checked target-domain images of a domain-adversarial run (None without one)."""
    if images is None and not config.domain_weight:
        return None
    if images is None or not config.domain_weight:
        msg = ("domain-adversarial training needs both domain_images and domain_weight > 0; "
               f"got {'no' if images is None else len(images)} domain images and "
               f"domain_weight={config.domain_weight}")
        raise ValueError(msg)
    images = np.asarray(getattr(images, "images", images))
    if len(images) == 0:
        msg = "domain_images is empty"
        raise ValueError(msg)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != train.images.shape[1:]:
        shape = ", ".join(map(str, train.images.shape[1:]))
        msg = (f"domain_images must be uint8 of shape (N, {shape}) like the training cutouts, "
               f"got {images.dtype} {images.shape}")
        raise ValueError(msg)
    return images


def _merge_metadata(meta, extra):
    """Merge user metadata entries into ``meta`` (dicts are updated, other values replaced)."""
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(meta.get(key), dict):
            meta[key].update(copy.deepcopy(value))
        else:
            meta[key] = copy.deepcopy(value)


def _optimisation(network, config, steps_per_epoch, device):
    """AdamW, its one-cycle schedule and the gradient scaler, plus the backbone and its anchors."""
    import torch

    head_names = _head_parameter_names(network)
    head = [p for n, p in network.named_parameters() if n in head_names]
    backbone = [p for n, p in network.named_parameters() if n not in head_names]
    # one parameter group unless the backbone trains more slowly (checkpoints of
    # either layout resume with the same settings)
    groups = ([{"params": backbone, "lr": config.max_lr * config.backbone_lr_factor},
               {"params": head, "lr": config.max_lr}] if config.backbone_lr_factor != 1.0
              else [{"params": backbone + head, "lr": config.max_lr}])
    optimizer = torch.optim.AdamW(groups, lr=config.max_lr, weight_decay=config.weight_decay)
    anchors = [p.detach().clone() for p in backbone] if config.anchor_strength else []
    # OneCycleLR needs >= 2 steps in each phase; tiny runs get a slightly longer schedule.
    total_steps = max(config.epochs * steps_per_epoch, 4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=total_steps,
        pct_start=min(max(config.pct_start, 2.0 / total_steps), 1 - 2.0 / total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    return optimizer, scheduler, scaler, backbone, anchors


def _stage_record(train, val, config, init_from, device, n_domain=0):
    """The description of this training stage kept in the model metadata and the checkpoint."""
    stage = {"n_train": len(train), "n_val": 0 if val is None else len(val),
             "epochs": config.epochs, "batch_size": config.batch_size, "optimizer": "AdamW",
             "max_lr": config.max_lr, "weight_decay": config.weight_decay,
             "schedule": f"OneCycleLR(pct_start={config.pct_start})", "loss": config.loss,
             "augmentation": f"dihedral (flip + rot90), zoom <= {config.zoom}",
             "seed": config.seed, "patience": config.patience,
             "init_from": None if init_from is None
             else str(getattr(init_from, "path", init_from)), "device": device.type}
    if config.domain_weight:
        stage.update({"domain_weight": config.domain_weight, "n_domain": n_domain,
                      "domain_adaptation": "DANN (gradient reversal, Ganin et al. 2016)"})
    if init_from is not None:
        stage.update({"backbone_lr_factor": config.backbone_lr_factor,
                      "freeze_batchnorm": bool(config.freeze_batchnorm),
                      "anchor_strength": config.anchor_strength})
    return stage


@dataclass
class _RunState:
    """What a checkpoint keeps between epochs, besides the network and optimiser states."""

    meta: dict
    best_state: dict
    history: list = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = np.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    start_epoch: int = 0


def _resume(ckpt_path, stage, run, network, optimizer, scheduler, scaler, adversary=None):
    """Load the checkpoint of an interrupted run into the objects of this one."""
    import torch

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    old_stage = json.loads(ckpt["stage"])
    if any(old_stage.get(k, _RESUME_DEFAULTS.get(k)) != stage.get(k, _RESUME_DEFAULTS.get(k))
           for k in _RESUME_KEYS):
        old = {k: old_stage.get(k, _RESUME_DEFAULTS.get(k)) for k in _RESUME_KEYS}
        msg = (f"checkpoint {ckpt_path} belongs to another run ({old}); use another "
               "checkpoint_dir or resume=False")
        raise ValueError(msg)
    network.load_state_dict(ckpt["network"])
    optimizer.load_state_dict(_regroup(ckpt["optimizer"], len(optimizer.param_groups)))
    scheduler.load_state_dict(ckpt["scheduler"])
    for key in ("base_lrs", "_last_lr"):  # lists of one entry per group
        values = getattr(scheduler, key, None)
        if isinstance(values, list) and len(values) != len(optimizer.param_groups):
            setattr(scheduler, key, [values[-1]] * len(optimizer.param_groups))
    scaler.load_state_dict(ckpt["scaler"])
    if adversary is not None:
        adversary.load_state_dict(ckpt["domain_adversary"])
    run.best_state = ckpt["best_state"]
    run.history = json.loads(ckpt["history"])
    run.best_epoch, run.best_score = int(ckpt["best_epoch"]), float(ckpt["best_score"])
    run.bad_epochs, run.stopped_early = int(ckpt["bad_epochs"]), bool(ckpt["stopped_early"])
    run.meta = json.loads(ckpt["metadata"])
    run.start_epoch = int(ckpt["epoch"]) + 1
    log.info(f"Resuming training from {ckpt_path} at epoch {run.start_epoch}")


def _save_checkpoint(ckpt_path, epoch, stage, run, network, optimizer, scheduler, scaler,
                     adversary=None):
    import torch

    state = {
        "epoch": epoch, "network": network.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "best_state": run.best_state, "history": json.dumps(run.history),
        "best_epoch": run.best_epoch, "best_score": run.best_score,
        "bad_epochs": run.bad_epochs, "stopped_early": run.stopped_early,
        "metadata": json.dumps(run.meta), "stage": json.dumps(stage),
    }
    if adversary is not None:
        state["domain_adversary"] = adversary.state_dict()
    tmp = ckpt_path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(ckpt_path)


def _train_epoch(network, loader, meta, config, device, optimisation, adversary=None,
                 epoch=0):
    """One pass over the training set; returns the summed loss and the number of images,
    and with ``adversary`` the mean domain loss and classifier accuracy (else None)."""
    import torch

    optimizer, scheduler, scaler, backbone, anchors = optimisation
    n_out = len(meta["outputs"])
    network.train()
    if config.freeze_batchnorm:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    total, count = 0.0, 0
    domain = [0.0, 0.0, 0]  # summed loss, summed accuracy, steps
    target_batches = adversary.batches(len(loader), epoch) if adversary is not None else None
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        n_source = len(images)
        if adversary is not None:
            # one forward pass over both, so BatchNorm normalises them together
            images = torch.cat([images, next(target_batches).to(device)])
        x = images_to_input(images, meta)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        hook = adversary.capture() if adversary is not None else None
        try:
            with torch.autocast(device_type=device.type, dtype=torch.float16,
                                enabled=device.type == "cuda"):
                out = network(x)
        finally:
            if hook is not None:
                hook.remove()
        batch_loss = _loss_fn(out[:n_source].float(), targets, n_out, config.loss)
        loss = batch_loss
        if adversary is not None:
            progress = scheduler.last_epoch / max(scheduler.total_steps, 1)
            domain_loss, accuracy = adversary.loss(n_source, progress)
            loss = batch_loss + domain_loss
            adversary.optimizer.zero_grad(set_to_none=True)
            domain[0] += float(domain_loss.detach())
            domain[1] += accuracy
            domain[2] += 1
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 5.0)
        scaler.step(optimizer)
        if adversary is not None:
            scaler.step(adversary.optimizer)  # unscales its gradients on CUDA
        scaler.update()
        if anchors:
            lr_backbone = optimizer.param_groups[0]["lr"]
            with torch.no_grad():
                for p, p0 in zip(backbone, anchors, strict=True):
                    p.sub_(p - p0, alpha=lr_backbone * config.anchor_strength)
        scheduler.step()
        total += float(batch_loss.detach()) * n_source
        count += n_source
    if adversary is None:
        return total, count, None
    return total, count, {"domain_loss": domain[0] / max(domain[2], 1),
                          "domain_accuracy": domain[1] / max(domain[2], 1)}


def _validation_metrics(network, val, meta, device):
    """Validation RMSE, NMAD and bias of every output, keyed ``val_{output}_{metric}``."""
    outputs = list(meta["outputs"])
    pred = _to_physical(_predict_plain(network, val.images, meta, device), meta)
    truth = val.targets(outputs)
    record = {}
    for j, name in enumerate(outputs):
        for key, value in residual_metrics(truth[:, j], pred[:, j]).items():
            if key != "n":
                record[f"val_{name}_{key}"] = value
    return record


def train_model(train, val=None, config=None, *, init_from=None, checkpoint_dir=None,
                resume=True, stop_after=None, metadata=None, domain_images=None, **settings):
    """Train or fine-tune the metallicity network.

    Parameters
    ----------
    train : `~astro_metallicity.train.LabelledCutouts` or path
        Training cutouts and labels (or an HDF5 store from `build_dataset`).
    val : `~astro_metallicity.train.LabelledCutouts` or path, optional
        Validation set for per-epoch metrics, early stopping and best-epoch selection.
    config : `TrainingConfig`, optional
        Settings of the run; default ``TrainingConfig()``.
    init_from : str, path-like or `~astro_metallicity.MetallicityModel`, optional
        Start from this trained model (fine-tuning); its network and metadata
        (architecture, input size, outputs, normalisation, label statistics) are
        kept.
    checkpoint_dir : str or path-like, optional
        Folder for the per-epoch checkpoint and the best model (``best.pt`` +
        ``best.json``). Needed to resume.
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir`` if there is one.
    stop_after : int, optional
        Return after this many epochs in this call, as if interrupted (resume later).
    metadata : dict, optional
        Extra metadata entries (e.g. ``provenance``) merged into the model metadata.
    domain_images : `~numpy.ndarray` or `~astro_metallicity.train.LabelledCutouts`, optional
        Unlabelled images of the domain the network will meet (e.g. real SDSS
        JPEGs when training on simulated cutouts), ``(N, H, W, 3)`` uint8 of the
        training cutouts' size, for domain-adversarial training with
        ``domain_weight`` > 0. Their labels, if any, are not used.
    **settings
        Fields of `TrainingConfig` (e.g. ``epochs=30``), applied on top of
        ``config``.

    Returns
    -------
    result : `TrainingResult`

    Raises
    ------
    ValueError
        If a setting is out of range, the training set is empty or lacks labels,
        ``init_from`` is given with an ``arch``, ``input_size`` or ``outputs``
        other than its own, ``anchor_strength`` is set without ``init_from``, or
        the checkpoint in ``checkpoint_dir`` belongs to a run with other settings,
        or ``domain_images`` and ``domain_weight`` are not given together.
    TypeError
        If ``train`` or ``val`` is neither a `~astro_metallicity.train.LabelledCutouts`
        nor a path, ``config`` is not a `TrainingConfig`, or a setting is not one
        of its fields.
    """
    import torch

    if isinstance(val, TrainingConfig):
        msg = "val is a TrainingConfig; pass it third or by name: train_model(train, val, config)"
        raise TypeError(msg)
    config = _resolve_config(config, settings)
    train = _as_cutouts(train, "train")
    val = _as_cutouts(val, "val")
    if train is None or len(train) == 0:
        msg = "train must contain at least one cutout"
        raise ValueError(msg)
    if init_from is None:
        # fine-tuning settings: on a new network they would silently mean something else
        tuning = {"anchor_strength": config.anchor_strength != 0,
                  "freeze_batchnorm": config.freeze_batchnorm,
                  "backbone_lr_factor": config.backbone_lr_factor != 1}
        asked = [name for name, on in tuning.items() if on]
        if asked:
            msg = (f"{', '.join(asked)} fine-tune a pretrained network and need init_from "
                   "(the model to start from)")
            raise ValueError(msg)
    domain_images = _domain_images(domain_images, config, train)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    network, meta = _starting_network(train, config, init_from)
    _merge_metadata(meta, metadata)
    outputs = list(meta["outputs"])
    label_mean = np.array([meta["label_mean"][k] for k in outputs])
    label_std = np.array([meta["label_std"][k] for k in outputs])
    y_train = (train.targets(outputs) - label_mean) / label_std

    network = network.to(device)
    if device.type == "cuda":
        network = network.to(memory_format=torch.channels_last)
    transform = _training_transform(meta["input_size"], zoom=config.zoom)
    dataset = _ArrayDataset(train.images, y_train, transform)
    optimisation = _optimisation(network, config, -(-len(dataset) // config.batch_size), device)
    adversary = None
    if domain_images is not None:
        unlabelled = _ArrayDataset(domain_images, np.zeros(len(domain_images), np.float32),
                                   transform)
        adversary = DomainAdversary(network, unlabelled, weight=config.domain_weight,
                                    batch_size=max(config.batch_size // 2, 1),
                                    lr=config.max_lr, seed=config.seed, device=device)
    stage = _stage_record(train, val, config, init_from, device,
                          n_domain=0 if domain_images is None else len(domain_images))
    run = _RunState(meta=meta, best_state=copy.deepcopy(network.state_dict()))
    ckpt_path = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = checkpoint_dir / _CHECKPOINT
        if resume and ckpt_path.is_file():
            _resume(ckpt_path, stage, run, network, *optimisation[:3], adversary)

    epochs_this_call = 0
    completed = True
    for epoch in range(run.start_epoch, config.epochs):
        if run.stopped_early:
            break
        if stop_after is not None and epochs_this_call >= stop_after:
            completed = False
            break
        t0 = time.perf_counter()
        torch.manual_seed(config.seed * 100_003 + epoch)  # augmentation draws: resumable per epoch
        generator = torch.Generator().manual_seed(config.seed * 100_019 + epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, shuffle=True, generator=generator,
            num_workers=config.num_workers, drop_last=False,
            pin_memory=device.type == "cuda", persistent_workers=False)
        total, count, domain = _train_epoch(network, loader, run.meta, config, device,
                                            optimisation, adversary, epoch)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "train_loss": total / max(count, 1),
                  "lr": float(optimisation[1].get_last_lr()[0]), "seconds": round(seconds, 2),
                  "images_per_s": round(count / max(seconds, 1e-9), 1)}
        message = f"epoch {epoch + 1}/{config.epochs} loss {record['train_loss']:.4f}"
        if domain is not None:
            record.update(domain)
            message += (f" domain loss {domain['domain_loss']:.3f} "
                        f"accuracy {domain['domain_accuracy']:.2f}")
        if val is not None and len(val):
            record.update(_validation_metrics(network, val, run.meta, device))
            score = record["val_metallicity_rmse"]
            message += (f" val RMSE {score:.4f} NMAD {record['val_metallicity_nmad']:.4f} "
                        f"bias {record['val_metallicity_bias']:+.4f}")
        else:
            score = -epoch  # no validation: keep the last epoch
        message += f" ({seconds:.1f} s, {record['images_per_s']:.0f} img/s)"
        log.info(message)
        run.history.append(record)
        if score < run.best_score:
            run.best_score, run.best_epoch, run.bad_epochs = score, epoch, 0
            run.best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        else:
            run.bad_epochs += 1
            if val is not None and run.bad_epochs >= config.patience:
                run.stopped_early = True
                log.info(f"Early stopping after epoch {epoch + 1}: no better validation "
                         f"RMSE for {config.patience} epochs (best epoch {run.best_epoch + 1})")
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, epoch, stage, run, network, *optimisation[:3],
                             adversary)
        epochs_this_call += 1  # noqa: SIM113 - counts epochs run in this call only

    network.load_state_dict(run.best_state)
    network = network.float().eval()
    meta = run.meta
    if completed:
        stage.update({"epochs_run": len(run.history), "best_epoch": run.best_epoch,
                      "stopped_early": run.stopped_early, "history": run.history})
        if not meta.get("training") or meta["training"][-1] != stage:
            meta.setdefault("training", []).append(stage)
    model = MetallicityModel(network, meta, device=device)
    if checkpoint_dir is not None and completed:
        save_model(network, meta, checkpoint_dir / _BEST, half=False)
    return TrainingResult(model=model, history=run.history, best_epoch=run.best_epoch,
                          stopped_early=run.stopped_early, completed=completed,
                          checkpoint_dir=checkpoint_dir)
