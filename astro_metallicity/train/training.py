"""Training the metallicity CNN.

`train_model` trains (or fine-tunes) a network from `astro_metallicity.model`
on a `LabelledCutouts`:

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
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..logger import log
from ..model import (
    MetallicityModel,
    _images_to_input,
    _resolve_device,
    build_network,
    default_metadata,
    load_model,
    save_model,
)
from .dataset import LabelledCutouts, read_dataset

__all__ = [
    "RandomRot90",
    "TrainingResult",
    "residual_metrics",
    "train_model",
    "training_transform",
]

_CHECKPOINT = "last_checkpoint.pt"
_BEST = "best"


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
        from their median), ``bias`` (mean residual, pred - true) and ``n``.
    """
    true = np.asarray(true, dtype=float)
    pred = np.asarray(pred, dtype=float)
    ok = np.isfinite(true) & np.isfinite(pred)
    r = pred[ok] - true[ok]
    if not len(r):
        return {"rmse": float("nan"), "nmad": float("nan"), "bias": float("nan"), "n": 0}
    return {
        "rmse": float(np.sqrt(np.mean(r**2))),
        "nmad": float(1.4826 * np.median(np.abs(r - np.median(r)))),
        "bias": float(np.mean(r)),
        "n": len(r),
    }


class RandomRot90:
    """Rotate an image tensor ``(..., H, W)`` by a random multiple of 90 degrees."""

    def __call__(self, image):
        import torch

        k = int(torch.randint(0, 4, (1,)))
        return torch.rot90(image, k, dims=(-2, -1)) if k else image

    def __repr__(self):
        return "RandomRot90()"


def training_transform(input_size, *, zoom=1.1):
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
        RandomRot90(),
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


@dataclass
class TrainingResult:
    """What `train_model` returns.

    Attributes
    ----------
    model : `~astro_metallicity.model.MetallicityModel`
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


def _as_cutouts(data, name):
    if data is None or isinstance(data, LabelledCutouts):
        return data
    if isinstance(data, (str, Path)):
        return read_dataset(data)
    msg = f"{name} must be a LabelledCutouts or the path of a cutout store, got {type(data).__name__}"
    raise TypeError(msg)


def _loss_fn(out, y, n_out, kind):
    import torch

    mu = out[:, :n_out]
    logvar = out[:, n_out:].clamp(-12.0, 12.0)
    mask = torch.isfinite(y)
    r = torch.where(mask, y, mu.detach()) - mu
    if kind == "mse+nll":
        per = r**2 + 0.5 * (logvar + r.detach() ** 2 * torch.exp(-logvar))
    else:  # 'nll'
        per = 0.5 * (logvar + r**2 * torch.exp(-logvar))
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
            x = _images_to_input(batch.permute(0, 3, 1, 2), metadata)
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


def train_model(train, val=None, *, outputs=("metallicity", "log_mstar"), arch="resnet18",
                input_size=64, epochs=10, batch_size=64, max_lr=2e-3, weight_decay=0.05,
                pct_start=0.25, loss="mse+nll", zoom=1.1, patience=5, seed=0, device=None,
                checkpoint_dir=None, resume=True, init_from=None, stop_after=None,
                num_workers=0, metadata=None, backbone_lr_factor=1.0, freeze_batchnorm=False,
                anchor_strength=0.0):
    """Train or fine-tune the metallicity network.

    Parameters
    ----------
    train : `~astro_metallicity.train.LabelledCutouts` or path
        Training cutouts and labels (or an HDF5 store from `build_dataset`).
    val : `~astro_metallicity.train.LabelledCutouts` or path, optional
        Validation set for per-epoch metrics, early stopping and best-epoch selection.
    outputs : sequence of str
        Quantities to predict (``'metallicity'``, ``'log_mstar'``). Ignored with
        ``init_from`` (the pretrained model's outputs are kept).
    arch : str
        Network architecture (`astro_metallicity.model.build_network`); ignored with
        ``init_from``.
    input_size : int
        Network input side in pixels; ignored with ``init_from``.
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
        Loss function (see the module docstring).
    zoom : float
        Maximum random zoom of the augmentation (1 disables it).
    patience : int
        Stop after this many epochs without a better validation RMSE.
    seed : int
        Seed for initialisation, shuffling and augmentation.
    device : str, optional
        Torch device; default ``conf.device`` (``'auto'``: CUDA if available).
    checkpoint_dir : str or path-like, optional
        Folder for the per-epoch checkpoint and the best model (``best.pt`` +
        ``best.json``). Needed to resume.
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir`` if there is one.
    init_from : str, path-like or `~astro_metallicity.model.MetallicityModel`, optional
        Start from this trained model (fine-tuning); its metadata (input size,
        normalisation, label statistics) is kept.
    stop_after : int, optional
        Return after this many epochs in this call, as if interrupted (resume later).
    num_workers : int
        DataLoader worker processes.
    metadata : dict, optional
        Extra metadata entries (e.g. ``provenance``) merged into the model metadata.
    backbone_lr_factor : float
        Learning rate of every layer but the output head, as a fraction of
        ``max_lr`` (fine-tuning: below 1 keeps pretrained features, the head adapts).
    freeze_batchnorm : bool
        Keep the batch-normalisation statistics of the starting network fixed
        (fine-tuning on few images).
    anchor_strength : float
        With ``init_from``: decoupled L2-SP, a pull of the backbone weights towards
        the pretrained ones, ``w -= lr * anchor_strength * (w - w_pretrained)`` after
        each step (0 disables it). It limits how far fine-tuning drifts from what
        pretraining learned.

    Returns
    -------
    result : `TrainingResult`
    """
    import torch

    train = _as_cutouts(train, "train")
    val = _as_cutouts(val, "val")
    if train is None or len(train) == 0:
        msg = "train must contain at least one cutout"
        raise ValueError(msg)
    if loss not in ("mse+nll", "nll"):
        msg = f"loss must be 'mse+nll' or 'nll', got {loss!r}"
        raise ValueError(msg)
    epochs, batch_size, patience = int(epochs), int(batch_size), int(patience)
    if epochs < 1 or batch_size < 1:
        msg = f"epochs and batch_size must be positive, got {epochs} and {batch_size}"
        raise ValueError(msg)
    backbone_lr_factor, anchor_strength = float(backbone_lr_factor), float(anchor_strength)
    if not 0 < backbone_lr_factor <= 1 or anchor_strength < 0:
        msg = (f"backbone_lr_factor must be in (0, 1] and anchor_strength >= 0, got "
               f"{backbone_lr_factor} and {anchor_strength}")
        raise ValueError(msg)
    if anchor_strength and init_from is None:
        msg = "anchor_strength needs init_from (the weights to anchor to)"
        raise ValueError(msg)
    device = _resolve_device(device)
    torch.manual_seed(seed)

    # ---- network and metadata
    if init_from is not None:
        base = init_from if isinstance(init_from, MetallicityModel) else load_model(
            init_from, device="cpu")
        network = copy.deepcopy(base.network).cpu()
        meta = copy.deepcopy(base.metadata)
        meta.setdefault("training", [])
    else:
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
            normalization=_image_normalization(train.images, seed=seed))
        meta["training"] = []
        network = build_network(arch, n_outputs=len(outputs))
    if metadata:
        for key, value in metadata.items():
            if isinstance(value, dict) and isinstance(meta.get(key), dict):
                meta[key].update(copy.deepcopy(value))
            else:
                meta[key] = copy.deepcopy(value)
    outputs = list(meta["outputs"])
    n_out = len(outputs)
    label_mean = np.array([meta["label_mean"][k] for k in outputs])
    label_std = np.array([meta["label_std"][k] for k in outputs])
    y_train = (train.targets(outputs) - label_mean) / label_std

    network = network.to(device)
    if device.type == "cuda":
        network = network.to(memory_format=torch.channels_last)
    transform = training_transform(meta["input_size"], zoom=zoom)
    dataset = _ArrayDataset(train.images, y_train, transform)
    steps_per_epoch = -(-len(dataset) // batch_size)
    head_names = _head_parameter_names(network)
    head = [p for n, p in network.named_parameters() if n in head_names]
    backbone = [p for n, p in network.named_parameters() if n not in head_names]
    # one parameter group unless the backbone trains more slowly (checkpoints of
    # either layout resume with the same settings)
    groups = ([{"params": backbone, "lr": max_lr * backbone_lr_factor},
               {"params": head, "lr": max_lr}] if backbone_lr_factor != 1.0
              else [{"params": backbone + head, "lr": max_lr}])
    optimizer = torch.optim.AdamW(groups, lr=max_lr, weight_decay=weight_decay)
    anchors = [p.detach().clone() for p in backbone] if anchor_strength else []
    # OneCycleLR needs >= 2 steps in each phase; tiny runs get a slightly longer schedule.
    total_steps = max(epochs * steps_per_epoch, 4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=total_steps,
        pct_start=min(max(pct_start, 2.0 / total_steps), 1 - 2.0 / total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    stage = {"n_train": len(train), "n_val": 0 if val is None else len(val), "epochs": epochs,
             "batch_size": batch_size, "optimizer": "AdamW", "max_lr": max_lr,
             "weight_decay": weight_decay, "schedule": f"OneCycleLR(pct_start={pct_start})",
             "loss": loss, "augmentation": f"dihedral (flip + rot90), zoom <= {zoom}",
             "seed": seed, "patience": patience, "init_from": None if init_from is None
             else str(getattr(init_from, "path", init_from)), "device": device.type}
    if init_from is not None:
        stage.update({"backbone_lr_factor": backbone_lr_factor,
                      "freeze_batchnorm": bool(freeze_batchnorm),
                      "anchor_strength": anchor_strength})

    history, best_epoch, best_score, bad_epochs, start_epoch = [], -1, np.inf, 0, 0
    best_state = copy.deepcopy(network.state_dict())
    stopped_early = False
    ckpt_path = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = checkpoint_dir / _CHECKPOINT
        if resume and ckpt_path.is_file():
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            old_stage = json.loads(ckpt["stage"])
            keys = ("n_train", "epochs", "batch_size", "max_lr", "seed", "loss",
                    "backbone_lr_factor", "freeze_batchnorm", "anchor_strength")
            # stages written before the fine-tuning options existed used their defaults
            defaults = {"backbone_lr_factor": 1.0, "freeze_batchnorm": False,
                        "anchor_strength": 0.0}
            if any(old_stage.get(k, defaults.get(k)) != stage.get(k, defaults.get(k))
                   for k in keys):
                msg = (f"checkpoint {ckpt_path} belongs to another run "
                       f"({ {k: old_stage.get(k, defaults.get(k)) for k in keys} }); use another checkpoint_dir "
                       "or resume=False")
                raise ValueError(msg)
            network.load_state_dict(ckpt["network"])
            optimizer.load_state_dict(_regroup(ckpt["optimizer"], len(optimizer.param_groups)))
            scheduler.load_state_dict(ckpt["scheduler"])
            for key in ("base_lrs", "_last_lr"):  # lists of one entry per group
                values = getattr(scheduler, key, None)
                if isinstance(values, list) and len(values) != len(optimizer.param_groups):
                    setattr(scheduler, key, [values[-1]] * len(optimizer.param_groups))
            scaler.load_state_dict(ckpt["scaler"])
            best_state = ckpt["best_state"]
            history = json.loads(ckpt["history"])
            best_epoch, best_score = int(ckpt["best_epoch"]), float(ckpt["best_score"])
            bad_epochs, stopped_early = int(ckpt["bad_epochs"]), bool(ckpt["stopped_early"])
            meta = json.loads(ckpt["metadata"])
            start_epoch = int(ckpt["epoch"]) + 1
            log.info(f"Resuming training from {ckpt_path} at epoch {start_epoch}")

    def save_checkpoint(epoch):
        if ckpt_path is None:
            return
        state = {
            "epoch": epoch, "network": network.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "best_state": best_state, "history": json.dumps(history),
            "best_epoch": best_epoch, "best_score": best_score, "bad_epochs": bad_epochs,
            "stopped_early": stopped_early, "metadata": json.dumps(meta),
            "stage": json.dumps(stage),
        }
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(ckpt_path)

    epochs_this_call = 0
    completed = True
    for epoch in range(start_epoch, epochs):
        if stopped_early:
            break
        if stop_after is not None and epochs_this_call >= stop_after:
            completed = False
            break
        t0 = time.perf_counter()
        torch.manual_seed(seed * 100_003 + epoch)  # augmentation draws: resumable per epoch
        generator = torch.Generator().manual_seed(seed * 100_019 + epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, generator=generator,
            num_workers=num_workers, drop_last=False,
            pin_memory=device.type == "cuda", persistent_workers=False)
        network.train()
        if freeze_batchnorm:
            for module in network.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        total, count = 0.0, 0
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            x = _images_to_input(images, meta)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.float16,
                                enabled=device.type == "cuda"):
                out = network(x)
            batch_loss = _loss_fn(out.float(), targets, n_out, loss)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(batch_loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()
            if anchors:
                lr_backbone = optimizer.param_groups[0]["lr"]
                with torch.no_grad():
                    for p, p0 in zip(backbone, anchors, strict=True):
                        p.sub_(p - p0, alpha=lr_backbone * anchor_strength)
            scheduler.step()
            total += float(batch_loss.detach()) * len(images)
            count += len(images)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "train_loss": total / max(count, 1),
                  "lr": float(scheduler.get_last_lr()[0]), "seconds": round(seconds, 2),
                  "images_per_s": round(count / max(seconds, 1e-9), 1)}
        message = f"epoch {epoch + 1}/{epochs} loss {record['train_loss']:.4f}"
        if val is not None and len(val):
            pred = _to_physical(_predict_plain(network, val.images, meta, device), meta)
            truth = val.targets(outputs)
            for j, name in enumerate(outputs):
                for key, value in residual_metrics(truth[:, j], pred[:, j]).items():
                    if key != "n":
                        record[f"val_{name}_{key}"] = value
            score = record["val_metallicity_rmse"]
            message += (f" val RMSE {score:.4f} NMAD {record['val_metallicity_nmad']:.4f} "
                        f"bias {record['val_metallicity_bias']:+.4f}")
        else:
            score = -epoch  # no validation: keep the last epoch
        message += f" ({seconds:.1f} s, {record['images_per_s']:.0f} img/s)"
        log.info(message)
        history.append(record)
        if score < best_score:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        else:
            bad_epochs += 1
            if val is not None and bad_epochs >= patience:
                stopped_early = True
                log.info(f"Early stopping after epoch {epoch + 1}: no better validation "
                         f"RMSE for {patience} epochs (best epoch {best_epoch + 1})")
        save_checkpoint(epoch)
        epochs_this_call += 1  # noqa: SIM113 - counts epochs run in this call only

    network.load_state_dict(best_state)
    network = network.float().eval()
    if completed:
        stage.update({"epochs_run": len(history), "best_epoch": best_epoch,
                      "stopped_early": stopped_early, "history": history})
        if not meta.get("training") or meta["training"][-1] != stage:
            meta.setdefault("training", []).append(stage)
    model = MetallicityModel(network, meta, device=device)
    if checkpoint_dir is not None and completed:
        save_model(network, meta, checkpoint_dir / _BEST, half=False)
    return TrainingResult(model=model, history=history, best_epoch=best_epoch,
                          stopped_early=stopped_early, completed=completed,
                          checkpoint_dir=checkpoint_dir)
