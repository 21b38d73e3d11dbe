"""The CNN: building, saving, loading and running the metallicity network.

A model is two files side by side: ``<name>.pt``, a PyTorch ``state_dict``
read with ``torch.load(weights_only=True)`` (no pickled code), and
``<name>.json``, the metadata that says how the network was built and how
its input must look (bands, cutout size, pixel-scale convention, the asinh
stretch of the colour composite, input normalisation, label statistics),
plus where the training data came from and how well it did. Prediction
reads every preprocessing parameter from the metadata, never from a second
copy in code.

The network is a torchvision ResNet with its stem kept as in torchvision
(7x7 stride-2 convolution and max-pool) and the ImageNet classifier replaced
by a regression head. For each output (12+log(O/H), optionally log M*) the
head predicts a mean and a log-variance, both in standardised label units
(``(y - label_mean) / label_std``); the label statistics are stored in the
metadata. Cutouts (128 x 128 px by convention) are resized to the model's
``input_size`` (64 px for the bundled model, as in the resolution study of
Wu & Boada 2018, where 64 px lost no accuracy) with antialiased bilinear
interpolation before they reach the network.

torch is imported lazily inside functions so ``import astro_metallicity``
stays cheap.
"""

import copy
import json
import os
from pathlib import Path

import numpy as np

from ._config import conf
from .logger import log

__all__ = [
    "ARCHITECTURES",
    "METADATA_FORMAT_VERSION",
    "MetallicityModel",
    "build_network",
    "bundled_model_path",
    "default_metadata",
    "dihedral_views",
    "load_model",
    "save_model",
    "save_untrained_model",
]

#: Version of the metadata layout written by `save_model`; `load_model`
#: rejects files written with another major layout.
METADATA_FORMAT_VERSION = 1

#: Network architectures `build_network` knows. ``'tiny'`` is a 3-layer CNN
#: for tests and quick experiments; the others are torchvision ResNets.
ARCHITECTURES = ("tiny", "resnet18", "resnet34")

_BUNDLED_NAME = "metallicity_resnet18"
_OUTPUT_UNITS = {"metallicity": "dex", "log_mstar": "dex"}
_REQUIRED_KEYS = (
    "format_version", "arch", "bands", "cutout_size", "input_size", "pixel_scale",
    "stretch", "normalization", "outputs", "label_mean", "label_std", "error_scale",
)


def bundled_model_path():
    """Path of the bundled model checkpoint (``.pt``) inside the package.

    Returns
    -------
    path : `~pathlib.Path`
        ``astro_metallicity/data/metallicity_resnet18.pt``; it may not exist in a
        development checkout before the bundled model is trained.
    """
    return Path(__file__).resolve().parent / "data" / f"{_BUNDLED_NAME}.pt"


# --------------------------------------------------------------------------- network


def build_network(arch="resnet18", n_outputs=1, *, in_channels=3):
    """Build an untrained regression network.

    Parameters
    ----------
    arch : {'resnet18', 'resnet34', 'tiny'}
        ``'resnet18'``/``'resnet34'``: torchvision ResNet (``weights=None``) with the
        standard stem and a linear head; ``'tiny'``: a small 3-layer CNN for tests.
    n_outputs : int
        Number of predicted quantities (e.g. 2 for metallicity and log M*). The
        network returns ``2 * n_outputs`` numbers per image: the means, then the
        log-variances, in standardised label units.
    in_channels : int
        Number of input channels (3 for *gri* colour composites).

    Returns
    -------
    network : `torch.nn.Module`
        Maps a float tensor ``(N, in_channels, H, W)`` to ``(N, 2 * n_outputs)``.
    """
    import torch
    from torch import nn

    n_outputs = int(n_outputs)
    if n_outputs < 1:
        msg = f"n_outputs must be a positive integer, got {n_outputs}"
        raise ValueError(msg)
    if arch == "tiny":
        return nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 2 * n_outputs),
        )
    if arch in ("resnet18", "resnet34"):
        import torchvision

        network = getattr(torchvision.models, arch)(weights=None, num_classes=2 * n_outputs)
        if in_channels != 3:
            network.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        # Start the log-variance outputs near 0 (unit variance) and the means near
        # the label mean: small head weights make the first steps stable.
        with torch.no_grad():
            network.fc.weight.mul_(0.1)
            network.fc.bias.zero_()
        return network
    msg = f"arch must be one of {ARCHITECTURES}, got {arch!r}"
    raise ValueError(msg)


def default_metadata(*, arch="resnet18", outputs=("metallicity", "log_mstar"), input_size=64,
                     cutout_size=128, pixel_scale="adaptive", label_mean=None, label_std=None,
                     normalization=None, stretch=None):
    """Metadata dictionary for a model with the package's standard conventions.

    Parameters
    ----------
    arch : str
        Architecture name passed to `build_network`.
    outputs : sequence of str
        Predicted quantities, from ``'metallicity'`` (12+log(O/H)) and ``'log_mstar'``.
    input_size : int
        Side in pixels of the network input; cutouts are resized to it.
    cutout_size : int
        Side in pixels of the cutouts the model expects (128 in the paper).
    pixel_scale : 'adaptive' or float
        ``'adaptive'``: 2 * petroR90_r / (0.396 * 128) arcsec/px (the paper's
        convention); a float: a fixed scale in arcsec/px.
    label_mean, label_std : dict, optional
        Mean and standard deviation of each output on the training set, used to
        standardise labels. Defaults: metallicity 8.90 +- 0.20, log_mstar 10.0 +- 0.6.
    normalization : dict, optional
        ``{'mean': [r, g, b], 'std': [r, g, b]}`` applied to pixel values scaled to 0-1.
    stretch : dict, optional
        Asinh stretch of the colour composites; default
        `astro_metallicity.preprocess.SDSS_JPEG_STRETCH`.

    Returns
    -------
    metadata : dict
        JSON-serialisable metadata for `save_model`.
    """
    from .preprocess import SDSS_JPEG_STRETCH

    outputs = list(outputs)
    unknown = [name for name in outputs if name not in _OUTPUT_UNITS]
    if not outputs or unknown:
        msg = f"outputs must be a non-empty subset of {list(_OUTPUT_UNITS)}, got {outputs}"
        raise ValueError(msg)
    if "metallicity" not in outputs:
        msg = "outputs must include 'metallicity'"
        raise ValueError(msg)
    defaults_mean = {"metallicity": 8.90, "log_mstar": 10.0}
    defaults_std = {"metallicity": 0.20, "log_mstar": 0.6}
    label_mean = {k: float((label_mean or defaults_mean)[k]) for k in outputs}
    label_std = {k: float((label_std or defaults_std)[k]) for k in outputs}
    if pixel_scale != "adaptive":
        pixel_scale = float(pixel_scale)
    return {
        "format_version": METADATA_FORMAT_VERSION,
        "arch": arch,
        "bands": "gri",
        "cutout_size": int(cutout_size),
        "input_size": int(input_size),
        "pixel_scale": pixel_scale,
        "pixel_scale_note": ("adaptive = 2 * petroR90_r / (0.396 * cutout_size) arcsec/px, "
                             "so a cutout spans about 5 petroR90_r"),
        "stretch": copy.deepcopy(SDSS_JPEG_STRETCH if stretch is None else stretch),
        "normalization": copy.deepcopy(normalization or {"mean": [0.5, 0.5, 0.5],
                                                         "std": [0.25, 0.25, 0.25]}),
        "outputs": outputs,
        "units": {k: _OUTPUT_UNITS[k] for k in outputs},
        "label_mean": label_mean,
        "label_std": label_std,
        "error_scale": {k: 1.0 for k in outputs},
        "tta": "dihedral8",
        "provenance": {},
        "metrics": {},
    }


# --------------------------------------------------------------------------- I/O


def _split_path(path):
    path = Path(os.fspath(path)).expanduser()
    if path.suffix in (".pt", ".json"):
        path = path.with_suffix("")
    return path.with_suffix(".pt"), path.with_suffix(".json")


def save_model(network, metadata, path, *, half=True):
    """Save a network and its metadata as ``path.pt`` + ``path.json``.

    Parameters
    ----------
    network : `torch.nn.Module`
        The network, as built by `build_network` with ``metadata['arch']``.
    metadata : dict
        Metadata (see `default_metadata`); must be JSON-serialisable.
    path : str or path-like
        Destination; a ``.pt`` or ``.json`` suffix is replaced, so ``'m'``,
        ``'m.pt'`` and ``'m.json'`` all write ``m.pt`` and ``m.json``.
    half : bool
        Store floating-point weights as float16 (half the file size; they are
        converted back to float32 on loading).

    Returns
    -------
    pt_path : `~pathlib.Path`
        Path of the written weights file.
    """
    import torch

    missing = [key for key in _REQUIRED_KEYS if key not in metadata]
    if missing:
        msg = (f"metadata lacks {missing}; start from "
               "astro_metallicity.model.default_metadata() and update it")
        raise ValueError(msg)
    pt_path, json_path = _split_path(path)
    pt_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = copy.deepcopy(metadata)
    metadata["weights_dtype"] = "float16" if half else "float32"
    metadata.setdefault("torch_version", torch.__version__)
    state = {}
    for key, value in network.state_dict().items():
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.half()
        state[key] = value.contiguous()
    text = json.dumps(metadata, indent=2, sort_keys=False, default=_json_default)
    torch.save(state, pt_path)
    json_path.write_text(text + "\n")
    log.debug(f"Saved model to {pt_path} (+ {json_path.name})")
    return pt_path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    msg = f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable"
    raise TypeError(msg)


def _check_metadata(metadata, json_path):
    if not isinstance(metadata, dict):
        msg = f"model metadata {json_path} is not a JSON object"
        raise ValueError(msg)  # noqa: TRY004 - a bad file, reported like other bad metadata
    missing = [key for key in _REQUIRED_KEYS if key not in metadata]
    if missing:
        msg = (f"model metadata {json_path} lacks {missing}: it was not written by "
               "astro_metallicity.model.save_model; re-save the model with save_model")
        raise ValueError(msg)
    if int(metadata["format_version"]) != METADATA_FORMAT_VERSION:
        msg = (f"model metadata {json_path} has format_version {metadata['format_version']}, "
               f"this astro_metallicity reads version {METADATA_FORMAT_VERSION}; "
               "update astro_metallicity or re-save the model")
        raise ValueError(msg)
    if metadata["arch"] not in ARCHITECTURES:
        msg = f"model metadata {json_path} names unknown arch {metadata['arch']!r}"
        raise ValueError(msg)
    if metadata["bands"] != "gri":
        msg = f"model metadata {json_path} has bands {metadata['bands']!r}; only 'gri' is supported"
        raise ValueError(msg)
    outputs = metadata["outputs"]
    if "metallicity" not in outputs or any(name not in _OUTPUT_UNITS for name in outputs):
        msg = (f"model metadata {json_path} has outputs {outputs}; expected 'metallicity' "
               f"and optionally 'log_mstar'")
        raise ValueError(msg)
    for key in ("label_mean", "label_std", "error_scale"):
        if any(name not in metadata[key] for name in outputs):
            msg = f"model metadata {json_path}: {key} must give a value for each of {outputs}"
            raise ValueError(msg)


def load_model(path=None, device=None):
    """Load a trained model.

    Parameters
    ----------
    path : str or path-like, optional
        Checkpoint ``.pt`` file (its metadata ``.json`` must sit beside it with the
        same stem). Default: ``conf.model_path`` if set, else the bundled model.
    device : str or `torch.device`, optional
        Where to run the network. Default ``conf.device``; ``'auto'`` means CUDA
        when available, else CPU.

    Returns
    -------
    model : `~astro_metallicity.model.MetallicityModel`

    Raises
    ------
    FileNotFoundError
        If the weights or the metadata file is missing.
    ValueError
        If the metadata is incompatible or the weights do not match it.
    """
    import torch

    if path is None or path == "":
        path = conf.model_path or None
    bundled = path is None
    if bundled:
        path = bundled_model_path()
    pt_path, json_path = _split_path(path)
    if not pt_path.is_file():
        if bundled:
            msg = (f"the bundled model {pt_path} is not installed; train it with "
                   "`python -m astro_metallicity.train.bundled` or pass path= "
                   "(or set astro_metallicity.conf.model_path) to a checkpoint")
        else:
            msg = f"model weights {pt_path} not found; pass path= the .pt file written by save_model"
        raise FileNotFoundError(msg)
    if not json_path.is_file():
        msg = (f"model metadata {json_path} not found next to {pt_path.name}; a model is a .pt "
               "file plus a .json metadata file with the same name (see save_model)")
        raise FileNotFoundError(msg)
    try:
        metadata = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        msg = f"model metadata {json_path} is not valid JSON ({exc})"
        raise ValueError(msg) from exc
    _check_metadata(metadata, json_path)
    try:
        state = torch.load(pt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files
        msg = f"could not read model weights {pt_path} ({exc}); re-save it with save_model"
        raise ValueError(msg) from exc
    network = build_network(metadata["arch"], n_outputs=len(metadata["outputs"]))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        msg = (f"model weights {pt_path} do not match arch {metadata['arch']!r} with "
               f"outputs {metadata['outputs']} in {json_path.name}: {exc}")
        raise ValueError(msg) from exc
    return MetallicityModel(network, metadata, device=device, path=pt_path)


def save_untrained_model(path, *, arch="tiny", input_size=32, outputs=("metallicity", "log_mstar"),
                         seed=0, **metadata_kwargs):
    """Write a randomly initialised model, e.g. for tests of the pipeline.

    Parameters
    ----------
    path : str or path-like
        Destination passed to `save_model`.
    arch : str
        Architecture (``'tiny'`` is fast).
    input_size : int
        Network input side in pixels.
    outputs : sequence of str
        Predicted quantities.
    seed : int
        Seed of the random initialisation.
    **metadata_kwargs
        Further arguments of `default_metadata`.

    Returns
    -------
    pt_path : `~pathlib.Path`
        Path of the weights file; pass it to `load_model`.
    """
    import torch

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        network = build_network(arch, n_outputs=len(outputs))
    finally:
        torch.random.set_rng_state(generator_state)
    metadata = default_metadata(arch=arch, outputs=outputs, input_size=input_size,
                                **metadata_kwargs)
    metadata["provenance"] = {"description": "untrained, randomly initialised (seed "
                                             f"{seed}); predictions are meaningless"}
    return save_model(network, metadata, path, half=False)


# --------------------------------------------------------------------------- inference


def _resolve_device(device):
    import torch

    device = conf.device if device is None else device
    if isinstance(device, torch.device):
        return device
    device = str(device).strip().lower()
    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        msg = f"device {device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        raise ValueError(msg) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        msg = f"device {device!r} asked for, but CUDA is not available; use device='cpu' or 'auto'"
        raise ValueError(msg)
    return resolved


def _validate_images(images):
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[np.newaxis]
    if images.ndim != 4 or images.shape[-1] != 3:
        msg = (f"images must be RGB arrays of shape (N, H, W, 3) or (H, W, 3), got shape "
               f"{images.shape}")
        raise ValueError(msg)
    if images.dtype != np.uint8:
        msg = (f"images must be uint8 colour composites (0-255) as SDSS JPEGs, got dtype "
               f"{images.dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)")
        raise ValueError(msg)
    return images


def _images_to_input(batch, metadata):
    """uint8 tensor (N, 3, H, W) -> normalised float tensor (N, 3, S, S).

    The one place where cutouts become network input, shared by training and
    prediction: scale to 0-1, resize to ``input_size`` (antialiased bilinear),
    normalise with the metadata's per-channel mean and std.
    """
    import torch
    import torch.nn.functional as F

    x = batch.float().div_(255.0)
    size = int(metadata["input_size"])
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    norm = metadata["normalization"]
    mean = torch.as_tensor(norm["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(norm["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def dihedral_views(x):
    """The 8 images of the dihedral group D4 (rotations by 90 degrees, with and without flip).

    Parameters
    ----------
    x : `torch.Tensor`
        Images ``(N, C, H, W)`` with H == W.

    Returns
    -------
    views : list of `torch.Tensor`
        8 tensors of the input's shape.
    """
    import torch

    views = []
    for flipped in (x, torch.flip(x, dims=(-1,))):
        for k in range(4):
            views.append(torch.rot90(flipped, k, dims=(-2, -1)))
    return views


class MetallicityModel:
    """A trained network with the metadata that describes its input and output.

    Use `load_model` to create one.

    Parameters
    ----------
    network : `torch.nn.Module`
        The regression network.
    metadata : dict
        Model metadata (see `default_metadata`).
    device : str or `torch.device`, optional
        Device; default ``conf.device``.
    path : path-like, optional
        Where the model was loaded from (informational).
    """

    def __init__(self, network, metadata, *, device=None, path=None):
        self.metadata = metadata
        self.path = None if path is None else Path(path)
        self.device = _resolve_device(device)
        self.network = network.to(self.device).eval()
        if self.device.type == "cuda":
            import torch

            self.network = self.network.to(memory_format=torch.channels_last)

    def __repr__(self):
        return (f"<MetallicityModel arch={self.metadata['arch']} outputs={self.outputs} "
                f"input_size={self.input_size} device={self.device} path={self.path}>")

    @property
    def outputs(self):
        """Names of the predicted quantities (list of str)."""
        return list(self.metadata["outputs"])

    @property
    def input_size(self):
        """Side in pixels of the network input (int)."""
        return int(self.metadata["input_size"])

    @property
    def cutout_size(self):
        """Side in pixels of the cutouts the model was trained on (int)."""
        return int(self.metadata["cutout_size"])

    @property
    def pixel_scale(self):
        """Pixel-scale convention: ``'adaptive'`` or a fixed scale in arcsec/px."""
        return self.metadata["pixel_scale"]

    @property
    def stretch(self):
        """Asinh stretch parameters of the colour composites the model reads (dict)."""
        return copy.deepcopy(self.metadata["stretch"])

    def predict(self, images, *, batch_size=None, tta=True):
        """Predict metallicity (and log M*) for colour cutouts.

        Parameters
        ----------
        images : array-like
            ``uint8`` RGB composites, shape ``(N, H, W, 3)`` (or one ``(H, W, 3)``),
            in the SDSS ImgCutout convention (i, r, g in red, green, blue).
            They are resized to the model's ``input_size``.
        batch_size : int, optional
            Images per forward pass; default ``conf.batch_size``.
        tta : bool
            Average over the 8 dihedral views (rotations and flips). The spread of
            the views adds to the predicted variance.

        Returns
        -------
        result : dict of `~numpy.ndarray`
            ``'metallicity'`` (12+log(O/H)) and ``'metallicity_err'`` (1-sigma,
            calibrated with the metadata's ``error_scale``), plus ``'log_mstar'`` and
            ``'log_mstar_err'`` when the model predicts stellar mass. Each is float64
            of length N.
        """
        import torch

        images = _validate_images(images)
        batch_size = int(conf.batch_size if batch_size is None else batch_size)
        if batch_size < 1:
            msg = f"batch_size must be a positive integer, got {batch_size}"
            raise ValueError(msg)
        outputs = self.outputs
        n_out = len(outputs)
        means = np.empty((len(images), n_out))
        variances = np.empty((len(images), n_out))
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
                x = _images_to_input(batch.to(self.device).permute(0, 3, 1, 2), self.metadata)
                views = dihedral_views(x) if tta else [x]
                raw = []
                for view in views:
                    if self.device.type == "cuda":
                        view = view.contiguous(memory_format=torch.channels_last)
                    raw.append(self.network(view).float())
                raw = torch.stack(raw, dim=0).cpu().double().numpy()  # (V, B, 2*n_out)
                mu, logvar = raw[..., :n_out], np.clip(raw[..., n_out:], -20.0, 20.0)
                stop = start + len(batch)
                means[start:stop] = mu.mean(axis=0)
                spread = mu.var(axis=0) if len(views) > 1 else 0.0
                variances[start:stop] = np.exp(logvar).mean(axis=0) + spread
        result = {}
        for j, name in enumerate(outputs):
            mean = float(self.metadata["label_mean"][name])
            std = float(self.metadata["label_std"][name])
            scale = float(self.metadata["error_scale"][name])
            result[name] = means[:, j] * std + mean
            result[f"{name}_err"] = np.sqrt(variances[:, j]) * std * scale
        return result
