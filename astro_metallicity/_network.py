"""The network and its input, shared by `astro_metallicity.model` and `astro_metallicity.train`.

Private: users reach these through `astro_metallicity.load_model`,
`astro_metallicity.MetallicityModel` and `astro_metallicity.train.train_model`.

The network is a torchvision ResNet with its stem kept as in torchvision
(7x7 stride-2 convolution and max-pool) and the ImageNet classifier replaced
by a regression head. For each output (12+log(O/H), optionally log M*) the
head predicts a mean and a log-variance, both in standardised label units
(``(y - label_mean) / label_std``); the label statistics are stored in the
metadata. Cutouts (128 x 128 px by convention) are resized to the model's
``input_size`` (64 px for the bundled model, as in the resolution study of
Wu & Boada 2018, where 64 px lost no accuracy) with antialiased bilinear
interpolation before they reach the network (`images_to_input`, the one place
where cutouts become network input, for training and prediction alike).

torch is imported inside functions so that importing the package stays cheap.
"""

import copy

import numpy as np

from ._config import conf

__all__ = [
    "ARCHITECTURES",
    "METADATA_FORMAT_VERSION",
    "OUTPUT_UNITS",
    "REQUIRED_KEYS",
    "ENSEMBLE_ARCH",
    "build_network",
    "default_metadata",
    "dihedral_views",
    "images_to_input",
    "network_from_metadata",
    "resolve_device",
    "validate_images",
]

#: Version of the metadata layout written by `astro_metallicity.save_model`;
#: `astro_metallicity.load_model` rejects files written with another major layout.
METADATA_FORMAT_VERSION = 1

#: Network architectures `build_network` knows. ``'tiny'`` is a 3-layer CNN
#: for tests and quick experiments; the others are torchvision ResNets.
ARCHITECTURES = ("tiny", "resnet18", "resnet34")

#: The ``arch`` of an ensemble model: its metadata lists the members
#: (``metadata['members']``, each with its own ``arch``), see `network_from_metadata`.
ENSEMBLE_ARCH = "ensemble"

#: The quantities a model can predict, with their units.
OUTPUT_UNITS = {"metallicity": "dex", "log_mstar": "dex"}

#: Metadata keys every saved model has.
REQUIRED_KEYS = (
    "format_version", "arch", "bands", "cutout_size", "input_size", "pixel_scale",
    "stretch", "normalization", "outputs", "label_mean", "label_std", "error_scale",
)


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


def network_from_metadata(metadata):
    """Build the untrained network a model's metadata describes (its weights load into it).

    Parameters
    ----------
    metadata : dict
        Model metadata: ``arch`` and ``outputs``; for an ensemble
        (``arch == 'ensemble'``) also ``members``, the metadata of each member.

    Returns
    -------
    network : `torch.nn.Module`
        A `build_network` network, or for an ensemble an
        ``astro_metallicity._ensemble.EnsembleNetwork`` of such networks.

    Raises
    ------
    ValueError
        If an architecture is unknown or an ensemble lists no members.
    """
    if metadata["arch"] != ENSEMBLE_ARCH:
        return build_network(metadata["arch"], n_outputs=len(metadata["outputs"]))
    members = metadata.get("members") or []
    if not members:
        msg = "an ensemble model's metadata must list its members (metadata['members'])"
        raise ValueError(msg)
    from ._ensemble import EnsembleNetwork

    networks = [build_network(m["arch"], n_outputs=len(m["outputs"])) for m in members]
    return EnsembleNetwork(networks, members, metadata)


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
    unknown = [name for name in outputs if name not in OUTPUT_UNITS]
    if not outputs or unknown:
        msg = f"outputs must be a non-empty subset of {list(OUTPUT_UNITS)}, got {outputs}"
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
        "units": {k: OUTPUT_UNITS[k] for k in outputs},
        "label_mean": label_mean,
        "label_std": label_std,
        "error_scale": {k: 1.0 for k in outputs},
        "tta": "dihedral8",
        "provenance": {},
        "metrics": {},
    }


def resolve_device(device):
    """The `torch.device` meant by ``device``.

    Parameters
    ----------
    device : str, `torch.device` or None
        ``None``: ``conf.device``; ``'auto'`` (or ``''``): CUDA when available, else CPU.

    Returns
    -------
    device : `torch.device`

    Raises
    ------
    ValueError
        If ``device`` is not a torch device, or asks for CUDA where there is none.
    """
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


def validate_images(images):
    """Check colour cutouts and return them as a uint8 array ``(N, H, W, 3)``.

    Parameters
    ----------
    images : array-like
        ``(N, H, W, 3)`` or one ``(H, W, 3)`` uint8 RGB composite.

    Returns
    -------
    images : `~numpy.ndarray`

    Raises
    ------
    ValueError
        If the shape or the dtype is wrong.
    """
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


def images_to_input(batch, metadata):
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
