"""The CNN: saving, loading and running the metallicity network.

A model is two files side by side: ``<name>.pt``, a PyTorch ``state_dict``
read with ``torch.load(weights_only=True)`` (no pickled code), and
``<name>.json``, the metadata that says how the network was built and how
its input must look (bands, cutout size, pixel-scale convention, the asinh
stretch of the colour composite, input normalisation, label statistics),
plus where the training data came from and how well it did. Prediction
reads every preprocessing parameter from the metadata, never from a second
copy in code.

The network is a torchvision ResNet-18 (or -34) whose head predicts, for each
output (12+log(O/H), optionally log M*), a mean and a log-variance in
standardised label units; cutouts are resized to the model's ``input_size``
before they reach it. Building the network and turning cutouts into its
input is shared with `astro_metallicity.train` in the private module
``astro_metallicity._network``.

torch is imported lazily inside functions so ``import astro_metallicity``
stays cheap.
"""

import copy
import json
import os
from pathlib import Path

import numpy as np

from ._config import conf
from ._network import (
    ARCHITECTURES,
    ENSEMBLE_ARCH,
    METADATA_FORMAT_VERSION,
    OUTPUT_UNITS,
    REQUIRED_KEYS,
    build_network,
    default_metadata,
    dihedral_views,
    images_to_input,
    network_from_metadata,
    resolve_device,
    validate_images,
)
from .logger import log

__all__ = [
    "MetallicityModel",
    "bundled_model_path",
    "load_model",
    "save_model",
]

_BUNDLED_NAME = "metallicity_resnet18"


def bundled_model_path():
    """Path of the bundled model checkpoint (``.pt``) inside the package.

    Returns
    -------
    path : `~pathlib.Path`
        ``astro_metallicity/data/metallicity_resnet18.pt``; it may not exist in a
        development checkout before the bundled model is trained.
    """
    return Path(__file__).resolve().parent / "data" / f"{_BUNDLED_NAME}.pt"


# --------------------------------------------------------------------------- I/O


def _split_path(path):
    path = Path(os.fspath(path)).expanduser()
    if path.suffix in (".pt", ".json"):
        path = path.with_suffix("")
    return path.with_suffix(".pt"), path.with_suffix(".json")


def save_model(network, metadata, path, *, half=True, ood_reference=None):
    """Save a network and its metadata as ``path.pt`` + ``path.json``.

    Parameters
    ----------
    network : `torch.nn.Module`
        The network, e.g. ``model.network`` of a `MetallicityModel`, with the
        architecture named by ``metadata['arch']``.
    metadata : dict
        Metadata, e.g. ``model.metadata`` of a `MetallicityModel`; must be
        JSON-serialisable.
    path : str or path-like
        Destination; a ``.pt`` or ``.json`` suffix is replaced, so ``'m'``,
        ``'m.pt'`` and ``'m.json'`` all write ``m.pt`` and ``m.json``.
    half : bool
        Store floating-point weights as float16 (half the file size; they are
        converted back to float32 on loading).
    ood_reference : dict, optional
        Out-of-distribution reference statistics of these weights (e.g.
        ``model.ood_reference`` of an unchanged loaded model), written to
        ``path_ood.npz`` and described by ``metadata['ood']``. Without it a
        ``metadata['ood']`` entry is dropped: statistics of other weights would
        score wrongly (see `astro_metallicity.ood.ood_score`).

    Returns
    -------
    pt_path : `~pathlib.Path`
        Path of the written weights file.
    """
    import torch

    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        msg = (f"metadata lacks {missing}; start from the metadata of a model "
               "(MetallicityModel.metadata, e.g. from load_model) and update it")
        raise ValueError(msg)
    pt_path, json_path = _split_path(path)
    pt_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = _with_ood_reference(metadata, pt_path, ood_reference)
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


# --------------------------------------------------------------------------- OOD statistics

#: Version of the layout of the out-of-distribution reference (``metadata['ood']``).
OOD_FORMAT_VERSION = 1


def _reference_arrays(reference):
    """Flat ``{name: array}`` for `numpy.savez` (no objects, loadable with allow_pickle=False)."""
    arrays = {"groups": np.asarray(reference["groups"], dtype=str)}
    for part in ("embedding", "image"):
        for name, stats in reference[part].items():
            for key, value in stats.items():
                arrays[f"{part}/{name}/{key}"] = np.asarray(value, dtype=np.float32)
    return arrays


def _reference_from_arrays(arrays):
    groups = [str(g) for g in arrays["groups"]]
    reference = {"groups": groups, "embedding": {g: {} for g in groups},
                 "image": {g: {} for g in groups}}
    for key, value in arrays.items():
        if key == "groups":
            continue
        part, name, stat = key.split("/")
        reference[part][name][stat] = np.asarray(value, dtype=np.float64)
    return reference


def _read_reference(path):
    """Reference statistics from a ``_ood.npz`` file (never unpickles)."""
    with np.load(path, allow_pickle=False) as data:
        return _reference_from_arrays({key: data[key] for key in data.files})


def _write_reference(path, reference):
    np.savez_compressed(path, **_reference_arrays(reference))


def _with_ood_reference(metadata, pt_path, ood_reference):
    """A copy of the metadata with ``'ood'`` kept and its statistics written, or dropped."""
    metadata = copy.deepcopy(metadata)
    if ood_reference is not None:
        if "threshold" not in metadata.get("ood", {}):
            msg = ("ood_reference needs metadata['ood'] with its 'threshold' (see "
                   "astro_metallicity.ood); start from the metadata of the model it belongs to")
            raise ValueError(msg)
        metadata["ood"]["file"] = f"{pt_path.stem}_ood.npz"
        _write_reference(pt_path.parent / metadata["ood"]["file"], ood_reference)
    elif metadata.pop("ood", None) is not None:
        log.info("metadata['ood'] dropped: pass ood_reference= to keep the out-of-distribution "
                 "reference of these weights")
    return metadata


def _update_metadata(path, metadata, *, ood_reference=None):
    """Rewrite a saved model's metadata (and OOD statistics), leaving its weights as they are.

    Parameters
    ----------
    path : str or path-like
        The model, as for `save_model`.
    metadata : dict
        The new metadata.
    ood_reference : dict, optional
        As for `save_model`.

    Returns
    -------
    json_path : `~pathlib.Path`
    """
    pt_path, json_path = _split_path(path)
    _check_metadata(metadata, json_path)
    metadata = _with_ood_reference(metadata, pt_path, ood_reference)
    text = json.dumps(metadata, indent=2, sort_keys=False, default=_json_default)
    json_path.write_text(text + "\n")
    return json_path


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
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        msg = (f"model metadata {json_path} lacks {missing}: it was not written by "
               "astro_metallicity.model.save_model; re-save the model with save_model")
        raise ValueError(msg)
    if int(metadata["format_version"]) != METADATA_FORMAT_VERSION:
        msg = (f"model metadata {json_path} has format_version {metadata['format_version']}, "
               f"this astro_metallicity reads version {METADATA_FORMAT_VERSION}; "
               "update astro_metallicity or re-save the model")
        raise ValueError(msg)
    if metadata["arch"] == ENSEMBLE_ARCH:
        members = metadata.get("members")
        if not isinstance(members, list) or not members:
            msg = (f"model metadata {json_path} has arch {ENSEMBLE_ARCH!r} but lists no "
                   "members (metadata['members'])")
            raise ValueError(msg)
        for k, member in enumerate(members):
            if not isinstance(member, dict) or member.get("arch") not in ARCHITECTURES:
                msg = (f"model metadata {json_path}: ensemble member {k} names unknown arch "
                       f"{member.get('arch') if isinstance(member, dict) else member!r}")
                raise ValueError(msg)
            _check_metadata(member, f"{json_path} (ensemble member {k})")
    elif metadata["arch"] not in ARCHITECTURES:
        msg = f"model metadata {json_path} names unknown arch {metadata['arch']!r}"
        raise ValueError(msg)
    if metadata["bands"] != "gri":
        msg = f"model metadata {json_path} has bands {metadata['bands']!r}; only 'gri' is supported"
        raise ValueError(msg)
    outputs = metadata["outputs"]
    if "metallicity" not in outputs or any(name not in OUTPUT_UNITS for name in outputs):
        msg = (f"model metadata {json_path} has outputs {outputs}; expected 'metallicity' "
               f"and optionally 'log_mstar'")
        raise ValueError(msg)
    for key in ("label_mean", "label_std", "error_scale"):
        if any(name not in metadata[key] for name in outputs):
            msg = f"model metadata {json_path}: {key} must give a value for each of {outputs}"
            raise ValueError(msg)


def _member_names(metadata):
    """Names of an ensemble's members, in order (``[]`` for a single network).

    Parameters
    ----------
    metadata : dict
        Model metadata; an ensemble's lists its members' metadata, each with its
        ``ensemble_member`` name.

    Returns
    -------
    names : list of str
    """
    return [m.get("ensemble_member", f"member{k}")
            for k, m in enumerate(metadata.get("members", []))]


def _as_model(model, device):
    """A `MetallicityModel`: the one given, or loaded from a path (None: the default model)."""
    if isinstance(model, MetallicityModel):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_model(model, device=device)
    msg = (f"model must be None (bundled model), a checkpoint path or a MetallicityModel from "
           f"load_model, got {type(model).__name__}")
    raise TypeError(msg)


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
    model : `~astro_metallicity.MetallicityModel`

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
                   "`python recipes/crossfit.py --output DIR --sizes 400 --bundle MODEL_DIR` "
                   "from a source checkout and pass path= (or set "
                   "astro_metallicity.conf.model_path) to the checkpoint")
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
    network = network_from_metadata(metadata)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        msg = (f"model weights {pt_path} do not match arch {metadata['arch']!r} with "
               f"outputs {metadata['outputs']} in {json_path.name}: {exc}")
        raise ValueError(msg) from exc
    return MetallicityModel(network, metadata, device=device, path=pt_path,
                            ood_reference=_load_ood_reference(metadata, pt_path))


def _load_ood_reference(metadata, pt_path):
    """The OOD reference statistics the metadata names, or None (with a log note)."""
    info = metadata.get("ood")
    if not info:
        return None
    # only a file beside the weights: the metadata cannot point elsewhere
    path = pt_path.parent / Path(str(info.get("file", f"{pt_path.stem}_ood.npz"))).name
    if int(info.get("format_version", -1)) != OOD_FORMAT_VERSION or "threshold" not in info:
        log.warning(f"model metadata names OOD reference statistics this astro_metallicity "
                    f"cannot read (format_version {info.get('format_version')}); ood_score "
                    "will be NaN")
        return None
    if not path.is_file():
        log.warning(f"OOD reference statistics {path} not found; ood_score will be NaN")
        return None
    try:
        return _read_reference(path)
    except (OSError, ValueError, KeyError) as exc:
        log.warning(f"could not read OOD reference statistics {path} ({exc}); ood_score "
                    "will be NaN")
        return None


def _save_untrained_model(path, *, arch="tiny", input_size=32,
                          outputs=("metallicity", "log_mstar"), seed=0, **metadata_kwargs):
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
        Further arguments of ``astro_metallicity._network.default_metadata``.

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


class MetallicityModel:
    """A trained network with the metadata that describes its input and output.

    Use `load_model` to create one.

    Parameters
    ----------
    network : `torch.nn.Module`
        The regression network.
    metadata : dict
        Model metadata (as written by `save_model`).
    device : str or `torch.device`, optional
        Device; default ``conf.device``.
    path : path-like, optional
        Where the model was loaded from (informational).
    ood_reference : dict, optional
        Out-of-distribution reference statistics of these weights (read by
        `load_model` from ``<name>_ood.npz``); None: no ``ood_score``.
    """

    def __init__(self, network, metadata, *, device=None, path=None, ood_reference=None):
        self.metadata = metadata
        #: Out-of-distribution reference statistics (dict of arrays) or None.
        self.ood_reference = ood_reference
        self.path = None if path is None else Path(path)
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        if self.device.type == "cuda":
            import torch

            self.network = self.network.to(memory_format=torch.channels_last)
        self._inference = None  # (weights version, network) of `_inference_network`

    def _weights_version(self):
        # in-place updates (an optimizer step, load_state_dict) bump a tensor's _version
        state = list(self.network.parameters()) + list(self.network.buffers())
        return tuple((id(t), t._version) for t in state)

    def _inference_network(self):
        """The network as run for prediction: BatchNorm folded into the convolutions.

        Folding (`torch.fx.experimental.optimization.fuse`) and the channels-last
        layout make a ResNet-18's forward pass on one CPU core about 1.3 times
        faster at 64 px (3.4 -> 2.6 ms per image; 10-15 % of a prediction's
        network time, which also resizes, rotates and scores the views);
        outputs change by ~1e-6 of their scale (float rounding), far below
        1e-4 dex.
        Rebuilt when the weights change; a network that cannot be traced is run
        as it is.
        """
        import torch

        version = self._weights_version()
        if self._inference is not None and self._inference[0] == version:
            return self._inference[1]
        network = self.network
        if not network.training:
            from torch.fx.experimental.optimization import fuse

            try:
                network = fuse(network).to(memory_format=torch.channels_last)
            except Exception as exc:  # noqa: BLE001 - any tracing failure: run unfused
                log.debug(f"running the network unfused ({type(exc).__name__}: {exc})")
                network = self.network
        self._inference = (version, network)
        return network

    def _embedding_head(self, network):
        """The linear head whose input is the embedding that scores OOD: the network's last;
        for an ensemble, that of the member ``metadata['ensemble']['embedding_member']``
        (default: the last member). ``network`` is ``self.network`` or its fused copy
        (`_inference_network`), which keeps the module names."""
        import torch

        prefix = ""
        if self.metadata["arch"] == ENSEMBLE_ARCH:
            names = _member_names(self.metadata)
            name = self.metadata.get("ensemble", {}).get("embedding_member", names[-1])
            if name not in names:
                msg = f"the ensemble's embedding_member {name!r} is not one of its members {names}"
                raise ValueError(msg)
            prefix = f"members.{names.index(name)}."
        heads = [module for qualified, module in network.named_modules()
                 if isinstance(module, torch.nn.Linear) and qualified.startswith(prefix)]
        return heads[-1]

    def __repr__(self):
        arch = self.metadata["arch"]
        if arch == ENSEMBLE_ARCH:
            arch = f"ensemble[{', '.join(m['arch'] for m in self.metadata['members'])}]"
        return (f"<MetallicityModel arch={arch} outputs={self.outputs} "
                f"input_size={self.input_size} device={self.device} path={self.path}>")

    @property
    def members(self):
        """The networks whose predictions this model combines (list of `MetallicityModel`).

        For an ensemble (``metadata['arch'] == 'ensemble'``, made with
        `astro_metallicity.train.ensemble_models`), one model per member, sharing
        its weights, with the member's own metadata: its error scale is the one
        it had before it joined (1 for the bundled model's members), so its
        ``metallicity_err`` is not calibrated; the ensemble's is. For a single
        network, ``[self]``.
        """
        if self.metadata["arch"] != ENSEMBLE_ARCH:
            return [self]
        return [MetallicityModel(network, copy.deepcopy(meta), device=self.device)
                for network, meta in zip(self.network.members, self.metadata["members"])]

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
        return self._run(images, batch_size=batch_size, tta=tta)[0]

    def _run(self, images, *, batch_size=None, tta=True, embed=False):
        """`predict`, and with ``embed=True`` also the penultimate-layer embedding.

        The embedding (the input of the last linear layer, averaged over the
        test-time views) comes from the same forward passes as the predictions,
        so scoring how unusual an image is costs nothing extra.

        Returns
        -------
        result : dict of `~numpy.ndarray`
            As `predict`.
        embedding : `~numpy.ndarray` or None
            ``(N, D)`` float64 with ``embed=True``, else None.
        """
        import torch

        images = validate_images(images)
        batch_size = int(conf.batch_size if batch_size is None else batch_size)
        if batch_size < 1:
            msg = f"batch_size must be a positive integer, got {batch_size}"
            raise ValueError(msg)
        outputs = self.outputs
        n_out = len(outputs)
        means = np.empty((len(images), n_out))
        variances = np.empty((len(images), n_out))
        embedding = None
        captured = []
        hook = None
        network = self._inference_network()
        if embed:
            hook = self._embedding_head(network).register_forward_pre_hook(
                lambda module, args: captured.append(args[0].detach().float()))
        try:
            with torch.inference_mode():
                for start in range(0, len(images), batch_size):
                    batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
                    x = images_to_input(batch.to(self.device).permute(0, 3, 1, 2), self.metadata)
                    views = dihedral_views(x) if tta else [x]
                    raw = []
                    captured.clear()
                    for view in views:
                        view = view.contiguous(memory_format=torch.channels_last)
                        raw.append(network(view).float())
                    raw = torch.stack(raw, dim=0).cpu().double().numpy()  # (V, B, 2*n_out)
                    mu, logvar = raw[..., :n_out], np.clip(raw[..., n_out:], -20.0, 20.0)
                    stop = start + len(batch)
                    means[start:stop] = mu.mean(axis=0)
                    spread = mu.var(axis=0) if len(views) > 1 else 0.0
                    variances[start:stop] = np.exp(logvar).mean(axis=0) + spread
                    if embed:
                        views_emb = torch.stack(captured, dim=0).cpu().double().numpy()
                        if embedding is None:
                            embedding = np.empty((len(images), views_emb.shape[-1]))
                        embedding[start:stop] = views_emb.mean(axis=0)
        finally:
            if hook is not None:
                hook.remove()
        if embed and embedding is None:  # no images
            embedding = np.empty((0, 0))
        result = {}
        for j, name in enumerate(outputs):
            mean = float(self.metadata["label_mean"][name])
            std = float(self.metadata["label_std"][name])
            scale = float(self.metadata["error_scale"][name])
            result[name] = means[:, j] * std + mean
            result[f"{name}_err"] = np.sqrt(variances[:, j]) * std * scale
        return result, embedding
