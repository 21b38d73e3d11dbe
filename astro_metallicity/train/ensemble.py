"""Several trained networks as one model: an equal-weight ensemble."""

import copy

from .._network import ENSEMBLE_ARCH, OUTPUT_UNITS, default_metadata, network_from_metadata
from ..logger import log

__all__ = ["ensemble_models"]

# What every member must agree on: the cutouts it reads. The input normalisation and
# the label statistics may differ (the ensemble converts between them).
_SHARED_INPUT_KEYS = ("bands", "cutout_size", "input_size", "pixel_scale", "stretch")


def ensemble_models(models, *, names=None, device=None):
    """Combine trained models into one model that averages them.

    The ensemble is a `~astro_metallicity.MetallicityModel` like any other:
    `~astro_metallicity.predict_metallicity` runs it, `~astro_metallicity.save_model`
    writes it (one weights file holding every member) and
    `~astro_metallicity.load_model` reads it back. For each quantity it
    averages the members that predict it with equal weights; its variance is the
    members' mean variance plus the variance of their means (a mixture,
    Lakshminarayanan et al. 2017), in units of the members' *uncalibrated*
    errors: the ensemble's ``error_scale`` starts at 1, so calibrate it on data
    none of the members saw (e.g. out-of-fold residuals,
    `~astro_metallicity.train.calibrate_out_of_fold`) before trusting
    ``metallicity_err``.

    Parameters
    ----------
    models : sequence of `~astro_metallicity.MetallicityModel` or path
        Two or more trained models (or checkpoint paths for `~astro_metallicity.load_model`).
        They must read the same cutouts (bands, cutout size, network input
        size, pixel scale, stretch); their input normalisation, label statistics
        and outputs may differ (a quantity is averaged over the members that
        predict it; ``metallicity`` must come from every member).
    names : sequence of str, optional
        A name per member (e.g. ``'real_only'``), kept in the metadata.
    device : str or `torch.device`, optional
        Device of the ensemble; default ``conf.device``.

    Returns
    -------
    model : `~astro_metallicity.MetallicityModel`
        Its ``metadata['members']`` holds each member's metadata (without its
        out-of-distribution statistics, which belong to the member's weights
        alone); ``metadata['ensemble']`` says how they are combined. Set
        ``metadata['ensemble']['embedding_member']`` to the name of the member
        whose embedding scores out-of-distribution inputs (default: the last),
        and ``['init_member']`` to the one that fine-tuning starts from.

    Raises
    ------
    ValueError
        With fewer than two models, members that read different cutouts, or a
        member without a ``metallicity`` output.
    """
    from ..model import MetallicityModel, _as_model

    models = [_as_model(m, device="cpu") for m in models]
    if len(models) < 2:
        msg = f"an ensemble needs at least two models, got {len(models)}"
        raise ValueError(msg)
    names = [f"member{k}" for k in range(len(models))] if names is None else list(names)
    if len(names) != len(models):
        msg = f"names has {len(names)} entries for {len(models)} models"
        raise ValueError(msg)
    first = models[0].metadata
    for name, model in zip(names, models):
        if model.metadata["arch"] == ENSEMBLE_ARCH:
            msg = f"member {name!r} is itself an ensemble; pass its members instead"
            raise ValueError(msg)
        differ = [key for key in _SHARED_INPUT_KEYS if model.metadata[key] != first[key]]
        if differ:
            msg = (f"member {name!r} reads other cutouts than member {names[0]!r} "
                   f"(different {', '.join(differ)}); every member must read the same cutouts")
            raise ValueError(msg)
        if "metallicity" not in model.outputs:
            msg = f"member {name!r} does not predict metallicity"
            raise ValueError(msg)

    members = []
    for name, model in zip(names, models):
        meta = copy.deepcopy(model.metadata)
        meta.pop("ood", None)
        meta["ensemble_member"] = name
        members.append(meta)
    outputs = [name for name in OUTPUT_UNITS if any(name in m.outputs for m in models)]
    # the ensemble's own standardisation is a convention (outputs are converted to it)
    label_mean = {k: sum(m["label_mean"][k] for m in members if k in m["outputs"])
                  / sum(k in m["outputs"] for m in members) for k in outputs}
    label_std = {k: max(m["label_std"][k] for m in members if k in m["outputs"])
                 for k in outputs}
    metadata = default_metadata(
        arch=ENSEMBLE_ARCH, outputs=outputs, input_size=first["input_size"],
        cutout_size=first["cutout_size"], pixel_scale=first["pixel_scale"],
        label_mean=label_mean, label_std=label_std, normalization=first["normalization"],
        stretch=first["stretch"])
    # the cutout route the members were trained on, where they agree (predictions default to it)
    if "cutout_source" in first and all(
            m.metadata.get("cutout_source") == first["cutout_source"] for m in models):
        metadata["cutout_source"] = first["cutout_source"]
    metadata["members"] = members
    metadata["ensemble"] = {
        "members": names,
        "combination": ("equal weights: mean of the members' means; variance = mean of their "
                        "variances + variance of their means (Lakshminarayanan et al. 2017)"),
        "error_scale_note": "error_scale multiplies the combined uncalibrated error",
    }
    network = network_from_metadata(metadata)
    for target, model in zip(network.members, models):
        target.load_state_dict(model.network.state_dict())
    log.debug(f"Ensemble of {len(models)} networks: {', '.join(names)}")
    return MetallicityModel(network, metadata, device=device)
