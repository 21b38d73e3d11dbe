"""How unlike the model's training images a cutout is: the out-of-distribution score.

A CNN returns a number for any image: a star, an empty patch of sky, a
cutout from another survey or with another stretch. `ood_score` measures how
far an image lies from the images the model was trained on, in three ways:

* **Embedding**: the network's penultimate-layer embedding (the 512 numbers
  a ResNet-18 feeds to its regression head, averaged over the eight
  test-time views), as a Mahalanobis distance to the training images'
  embeddings in a PCA-whitened space (top principal components, plus the
  residual outside them; Lee et al. 2018, NeurIPS, "A simple unified
  framework for detecting out-of-distribution samples").
* **Image statistics**: per-channel mean and spread, centre-to-edge
  contrast, colour balance, saturated and empty pixels, isolated hot pixels
  and stripes, as a Mahalanobis distance (Ledoit-Wolf shrinkage covariance)
  to the same statistics of the training images.
* **Channel-order check**: the *i*, *r*, *g* bands sit in red, green, blue,
  and in that order galaxies lie on a tight colour locus (g-r against r-i)
  and the sky is brighter and noisier in *i* than in *g*. The check is the
  log-likelihood ratio, under Gaussians of six colours of the training
  images (galaxy, sky and sky-noise colours), of the likeliest other order
  of the image's channels against the order given: negative for training
  images, large when putting swapped channels back makes the colours typical.
  It has no parameter learned from swapped images.

The two distances are taken to the nearest *group* of training images (for
the bundled model: the real SDSS ImgCutout JPEGs and the simulated ImgCutout
cutouts of `astro_metallicity.mock`), in units of the 95th percentile of that
group's own (cross-validated) distances;
the channel-order ratio counts in units of 3 nats (a reordering 20 times as
probable as the given order) when positive. The score is the largest of the
three: about 0.5 for a typical training image, about 1 at the edge of the
training set. The model's threshold
(``model.metadata['ood']['threshold']``) is set so that about 2 % of real
training galaxies exceed it when scored by a reference that did not see
them (5-fold cross-validation).

The reference statistics (means, principal components, variances,
covariances of each group; never an image or a per-galaxy value) are stored
next to the model as ``<name>_ood.npz`` and described in its metadata
(``metadata['ood']``). A model without them (for example one you retrained)
gets a NaN score and no ``ood`` flag.
"""

import numpy as np

from .logger import log

# The reference statistics are stored with the model (model.py reads and writes them).
from .model import OOD_FORMAT_VERSION, _read_reference, _write_reference  # noqa: F401

__all__ = ["ood_score"]

#: Names of the image statistics, in the order of `_image_features`.
IMAGE_FEATURES = (
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
    "contrast_r", "contrast_g", "contrast_b", "colour_rg", "colour_gb",
    "sky_colour_rg", "sky_colour_gb", "sky_noise_rg", "sky_noise_gb",
    "concentration", "log_saturated", "log_empty", "log_hot", "log_stripe",
)

#: The colour statistics among `IMAGE_FEATURES`, those the channel-order check compares.
COLOUR_FEATURES = ("colour_rg", "colour_gb", "sky_colour_rg", "sky_colour_gb",
                   "sky_noise_rg", "sky_noise_gb")
_COLOUR_INDEX = [IMAGE_FEATURES.index(name) for name in COLOUR_FEATURES]
#: The five channel orders other than the given one (indices into R, G, B).
_OTHER_ORDERS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
#: Log-likelihood ratio (nats) of the channel-order check that scores 1, the edge of
#: the training images: a reordering 20 times as probable as the given order.
_ORDER_UNIT = 3.0
#: Columns the channel-order check adds to the image statistics (`_image_features`).
_N_CHECK = len(_OTHER_ORDERS) * len(COLOUR_FEATURES)

_EMBEDDING_COMPONENTS = 32  # principal components of the embedding kept per group
_SHRINK = 0.1  # fraction of the mean eigenvalue added to each (PCA shrinkage)


# --------------------------------------------------------------------------- features


def _image_features(images, *, checks=False):
    """Image statistics of uint8 RGB cutouts, ``(N, len(IMAGE_FEATURES))`` float64.

    Fluxes are in units of the full 0-255 range; fractions enter as log10 with a
    floor, so that "none" and "a few" do not differ. With ``checks``, the
    statistics of the channel-order check follow (`_N_CHECK` columns): the
    `COLOUR_FEATURES` of the image with its channels in each of the
    `_OTHER_ORDERS`.
    """
    from scipy.ndimage import median_filter

    images = np.asarray(images)
    n = len(images)
    out = np.empty((n, len(IMAGE_FEATURES) + (_N_CHECK if checks else 0)))
    if n == 0:
        return out
    side = images.shape[1]
    c0, c1 = side * 3 // 8, side * 5 // 8  # central quarter (32 px of 128)
    edge = max(side // 8, 1)  # outer frame (16 px of 128)
    for k, image in enumerate(images):
        x = image.astype(np.float64) / 255.0
        mean = x.mean(axis=(0, 1))
        std = x.std(axis=(0, 1))
        centre = x[c0:c1, c0:c1].mean(axis=(0, 1))
        frame = np.concatenate([x[:edge].reshape(-1, 3), x[-edge:].reshape(-1, 3),
                                x[edge:-edge, :edge].reshape(-1, 3),
                                x[edge:-edge, -edge:].reshape(-1, 3)])
        contrast = centre - frame.mean(axis=0)
        grey = x.mean(axis=-1)
        bright = x[grey >= np.quantile(grey, 0.9)]
        colour, sky, noise = _colours(frame, bright)
        # a star is a point: its light sits in the central pixels, a galaxy's spreads
        # over about a fifth of the cutout (the adaptive scale frames it so)
        level = float(np.median(grey[:edge]))
        s0, s1 = side * 15 // 32, side * 17 // 32  # central 8 px of 128
        core = grey[s0:s1, s0:s1].mean() - level
        bulk = grey[c0:c1, c0:c1].mean() - level
        concentration = np.log10((max(core, 0.0) + 0.003) / (max(bulk, 0.0) + 0.003))
        saturated = np.mean(x.max(axis=-1) >= 250 / 255)
        empty = np.mean(x.max(axis=-1) <= 2 / 255)
        # a hot pixel stands out from its 3x3 neighbourhood, which seeing never allows
        hot = np.mean(np.abs(grey - median_filter(grey, size=3, mode="nearest")) > 0.25)
        # a stripe (a bad row or column) differs from the rows or columns on either side
        stripe = 0.0
        for profile in (grey.mean(axis=1), grey.mean(axis=0)):
            if profile.size >= 3:
                jump = np.abs(profile[1:-1] - 0.5 * (profile[:-2] + profile[2:]))
                stripe = max(stripe, float(jump.max()))
        others = ([np.concatenate(_colours(frame, bright, order)) for order in _OTHER_ORDERS]
                  if checks else [])
        out[k] = np.concatenate([
            mean, np.log10(std + 1e-3), contrast, colour, sky, noise, [concentration],
            # floors: a bright star saturates or sharpens a few dozen pixels of a real
            # cutout, which must not count; an artefact affects many more
            np.log10([saturated + 3e-3, empty + 1e-3, hot + 3e-3, stripe + 1e-3]),
            *others,
        ])
    return out


def _colours(frame, bright, order=(0, 1, 2)):
    """Galaxy, sky and sky-noise colours (log channel ratios R/G, G/B) in a channel order.

    ``frame`` are the pixels of the cutout's outer frame, ``bright`` its brightest
    tenth (by the mean of the channels, which no reordering changes), both
    ``(n, 3)`` in 0-1.
    """
    order = list(order)
    frame, bright = frame[:, order], bright[:, order]
    # colour of the galaxy: median log channel ratios of the brightest tenth of pixels
    colour = np.median(np.log((bright[:, :2] + 0.01) / (bright[:, 1:] + 0.01)), axis=0)
    # colour of the sky and of its noise (the i-band noise of SDSS composites is
    # redder than the g-band's): what a swap of the channels changes most
    level, spread = frame.mean(axis=0), frame.std(axis=0)
    sky = np.log((level[:2] + 0.002) / (level[1:] + 0.002))
    noise = np.log((spread[:2] + 0.002) / (spread[1:] + 0.002))
    return colour, sky, noise


# --------------------------------------------------------------------------- reference


def _fit_embedding_group(x, n_components=_EMBEDDING_COMPONENTS):
    """PCA of one group's embeddings, with shrunk eigenvalues and the residual variance."""
    mean = x.mean(axis=0)
    centred = x - mean
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    eig = sing ** 2 / max(len(x) - 1, 1)
    k = int(min(n_components, len(eig) - 1, x.shape[1] - 1))
    shrink = _SHRINK * eig.mean()
    residual = float(eig[k:].sum() / max(x.shape[1] - k, 1)) + shrink / x.shape[1]
    return {"mean": mean, "components": vt[:k], "variances": eig[:k] + shrink,
            "residual_variance": np.array(residual)}


def _fit_image_group(f):
    """Mean and Ledoit-Wolf shrinkage precision of one group's image statistics, and
    the Gaussian of its colours (`COLOUR_FEATURES`) for the channel-order check."""
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    lw = LedoitWolf().fit(f[:, :len(IMAGE_FEATURES)])
    # six colours of hundreds of images need no shrinkage, and shrinking would blur
    # the tight galaxy colour locus (g-r against r-i) that the check relies on
    colours = EmpiricalCovariance().fit(f[:, _COLOUR_INDEX])
    return {"mean": lw.location_, "precision": lw.precision_,
            "colour_mean": colours.location_, "colour_precision": colours.precision_}


def _embedding_distance(group, x):
    """RMS whitened distance: the principal subspace and the residual, weighted equally."""
    centred = x - group["mean"]
    z = centred @ group["components"].T
    inside = np.mean(z ** 2 / group["variances"], axis=1)
    rest = np.sum(centred ** 2, axis=1) - np.sum(z ** 2, axis=1)
    dims = x.shape[1] - len(group["variances"])
    outside = np.maximum(rest, 0.0) / (group["residual_variance"] * max(dims, 1))
    return np.sqrt(0.5 * (inside + outside))


def _image_distance(group, f):
    centred = f[:, :len(IMAGE_FEATURES)] - group["mean"]
    return np.sqrt(np.einsum("ij,jk,ik->i", centred, group["precision"], centred)
                   / centred.shape[1])


def _colour_log_likelihood(reference, colours):
    """Log density of colours ``(..., len(COLOUR_FEATURES))`` under the likeliest group's
    Gaussian (up to a constant common to all images)."""
    best = np.full(colours.shape[:-1], -np.inf)
    for name in reference["groups"]:
        g = reference["image"][name]
        centred = colours - g["colour_mean"]
        d2 = np.einsum("...j,jk,...k->...", centred, g["colour_precision"], centred)
        best = np.maximum(best, 0.5 * (np.linalg.slogdet(g["colour_precision"])[1] - d2))
    return best


def _channel_order(reference, features):
    """The channel-order check: log-likelihood ratio (nats) of the likeliest other order.

    The *i*, *r*, *g* bands of an SDSS composite sit in red, green and blue, and
    galaxies, the sky and its noise have colours in a narrow range in that order
    (galaxy g-r and r-i lie on a tight locus; the sky is brighter and noisier in
    *i* than in *g*). For an image in the right order no reordering of its
    channels makes its colours more typical of the training images; for one
    with its channels swapped, putting them back does. The ratio is
    ``log p(colours of the likeliest other order) - log p(colours as given)``
    under the training groups' colour Gaussians; negative for most training
    images. Zero where the features or the reference lack what it needs (a
    reference written before the check).
    """
    if (features.shape[1] < len(IMAGE_FEATURES) + _N_CHECK
            or any("colour_mean" not in reference["image"][g] for g in reference["groups"])):
        return np.zeros(len(features))
    given = _colour_log_likelihood(reference, features[:, _COLOUR_INDEX])
    others = features[:, len(IMAGE_FEATURES):len(IMAGE_FEATURES) + _N_CHECK]
    others = others.reshape(len(features), len(_OTHER_ORDERS), len(COLOUR_FEATURES))
    return _colour_log_likelihood(reference, others).max(axis=1) - given


def _fit_groups(embeddings, features, groups):
    groups = np.asarray(groups, dtype=str)
    reference = {"groups": sorted(set(groups)), "embedding": {}, "image": {}}
    for name in reference["groups"]:
        sel = groups == name
        reference["embedding"][name] = _fit_embedding_group(embeddings[sel])
        reference["image"][name] = _fit_image_group(features[sel])
    return reference


def _fit_reference(embeddings, features, groups, *, n_folds=5, seed=0):
    """Reference statistics of training images, by group.

    Parameters
    ----------
    embeddings : `~numpy.ndarray`
        ``(N, D)`` embeddings (``MetallicityModel._run(..., embed=True)``).
    features : `~numpy.ndarray`
        ``(N, F)`` image statistics (`_image_features`).
    groups : array of str
        The group of each image (e.g. ``'real_jpeg'``, ``'sim_jpeg'``).
    n_folds, seed : int
        Folds of the cross-validation that sets each part's ``scale``.

    Returns
    -------
    reference : dict
        ``'groups'`` (names) and, per part and group, the arrays of
        `_fit_embedding_group` / `_fit_image_group` plus ``scale``: the 95th
        percentile of the group's distances to a reference fitted without them
        (5-fold), so that each part reads about 1 at the edge of the training
        images and the parts can be compared.
    """
    groups = np.asarray(groups, dtype=str)
    reference = _fit_groups(embeddings, features, groups)
    folds = np.empty(len(groups), dtype=int)
    rng = np.random.default_rng(seed)
    for name in reference["groups"]:
        members = np.flatnonzero(groups == name)
        folds[members] = rng.permutation(len(members)) % n_folds
    held_out = {"embedding": np.empty(len(groups)), "image": np.empty(len(groups))}
    for k in range(n_folds):
        fit, test = folds != k, folds == k
        ref = _fit_groups(embeddings[fit], features[fit], groups[fit])
        for name in reference["groups"]:
            sel = test & (groups == name)
            held_out["embedding"][sel] = _embedding_distance(ref["embedding"][name],
                                                             embeddings[sel])
            held_out["image"][sel] = _image_distance(ref["image"][name], features[sel])
    for part in ("embedding", "image"):
        for name in reference["groups"]:
            reference[part][name]["scale"] = np.array(
                np.quantile(held_out[part][groups == name], 0.95))
    return reference


def _scores(reference, embeddings, features):
    """The OOD score: the largest of the three parts (embedding and image statistics
    each to its nearest group, and the channel-order check)."""
    emb = np.full(len(features), np.inf)
    img = np.full(len(features), np.inf)
    for name in reference["groups"]:
        g = reference["embedding"][name]
        emb = np.minimum(emb, _embedding_distance(g, embeddings) / g["scale"])
        g = reference["image"][name]
        img = np.minimum(img, _image_distance(g, features) / g["scale"])
    order = np.maximum(_channel_order(reference, features), 0.0) / _ORDER_UNIT
    return np.max([emb, img, order], axis=0)


def _out_of_fold_scores(embeddings, features, groups, *, n_folds=5, seed=0, index=None):
    """Scores of each image by a reference fitted without its fold (per group folds)."""
    n = len(features)
    index = np.arange(n) if index is None else np.asarray(index)
    folds = np.empty(n, dtype=int)
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups, dtype=str)
    for name in sorted(set(groups[index])):  # sorted: folds must not depend on hashing
        members = index[groups[index] == name]
        folds[members] = rng.permutation(len(members)) % n_folds
    scores = np.full(n, np.nan)
    for k in range(n_folds):
        fit = index[folds[index] != k]
        test = index[folds[index] == k]
        ref = _fit_reference(embeddings[fit], features[fit], groups[fit])
        scores[test] = _scores(ref, embeddings[test], features[test])
    return scores, folds


def _calibrate(embeddings, features, groups, *, calibration_group, quantile=0.98,
               n_folds=5, seed=0, derived=None):
    """Threshold from out-of-fold scores, and a nested estimate of its flag rate.

    The threshold is the ``quantile`` of the out-of-fold scores of
    ``calibration_group`` (5-fold). The reported flag rates come from nested
    cross-validation: for each outer fold, the threshold is chosen from inner
    out-of-fold scores of the other folds only, the reference is fitted on the
    other folds, and the outer fold is scored, so no fold is flagged with a
    threshold that saw it.

    ``derived``, optional ``(embeddings, features, source)``, are images made
    from the reference images (``source``: the index of the image each was made
    from, for example by swapping its channels): each is scored with the outer
    fold's reference and threshold, which never saw its source image.

    Returns
    -------
    threshold : float
    report : dict
        ``'nested_flag_rate'`` per group, ``'oof_scores'`` per group (arrays),
        and with ``derived`` ``'derived_flagged'`` (bool array).
    """
    groups = np.asarray(groups, dtype=str)
    cal = groups == calibration_group
    oof, folds = _out_of_fold_scores(embeddings, features, groups, n_folds=n_folds, seed=seed)
    threshold = float(np.quantile(oof[cal], quantile))
    flagged = np.zeros(len(groups), dtype=bool)
    derived_flagged = None if derived is None else np.zeros(len(derived[2]), dtype=bool)
    for k in range(n_folds):
        inner = np.flatnonzero(folds != k)
        inner_scores, _ = _out_of_fold_scores(embeddings, features, groups, n_folds=n_folds - 1,
                                              seed=seed + 1 + k, index=inner)
        t_k = float(np.quantile(inner_scores[inner][cal[inner]], quantile))
        ref = _fit_reference(embeddings[inner], features[inner], groups[inner])
        test = np.flatnonzero(folds == k)
        flagged[test] = _scores(ref, embeddings[test], features[test]) > t_k
        if derived is not None:
            d_emb, d_feat, source = derived
            sel = folds[np.asarray(source)] == k
            derived_flagged[sel] = _scores(ref, d_emb[sel], d_feat[sel]) > t_k
    report = {
        "nested_flag_rate": {name: float(np.mean(flagged[groups == name]))
                             for name in sorted(set(groups))},
        "oof_flag_rate": {name: float(np.mean(oof[groups == name] > threshold))
                          for name in sorted(set(groups))},
        "oof_scores": {name: oof[groups == name] for name in sorted(set(groups))},
    }
    if derived is not None:
        report["derived_flagged"] = derived_flagged
    return threshold, report


# --------------------------------------------------------------------------- scoring


def _threshold(model):
    """The model's OOD threshold, or NaN without reference statistics."""
    if getattr(model, "ood_reference", None) is None:
        return float("nan")
    return float(model.metadata["ood"]["threshold"])


def _score_from_run(model, embedding, images):
    """Scores of images whose embeddings came from the model's own forward pass."""
    n = len(images)
    reference = getattr(model, "ood_reference", None)
    if reference is None or n == 0:
        return np.full(n, np.nan)
    return _scores(reference, embedding, _image_features(images, checks=True))


def _ood_flag(score, threshold):
    """The flag of a prediction whose OOD score exceeds the threshold."""
    return f"ood: unlike the training images (score {score:.1f} > {threshold:.1f})"


def ood_score(images, *, model=None, device=None, batch_size=None):
    """How unlike the model's training images colour cutouts are.

    Parameters
    ----------
    images : array-like
        ``uint8`` RGB composites, ``(N, H, W, 3)`` or one ``(H, W, 3)``, in the
        SDSS ImgCutout convention and at the model's cutout size (as in
        `astro_metallicity.MetallicityModel.predict`).
    model : str, path-like or `~astro_metallicity.MetallicityModel`, optional
        Default ``conf.model_path`` or the bundled model.
    device : str, optional
        Torch device. Default ``conf.device``.
    batch_size : int, optional
        Images per forward pass; default ``conf.batch_size``.

    Returns
    -------
    score : `~numpy.ndarray`
        float64 of length N: about 0.5 for a typical training image, about 1
        at the edge of the training set, larger the more unusual. Compare it
        with ``model.metadata['ood']['threshold']`` (the ``ood`` flag of the
        result tables). All NaN when the model has no
        reference statistics (``<name>_ood.npz`` beside its weights).

    Raises
    ------
    ValueError
        If ``images`` are not uint8 RGB arrays of the model's cutout size.

    Examples
    --------
    Noise without a galaxy is nothing like the bundled model's training images:

    >>> import numpy as np
    >>> from astro_metallicity import load_model
    >>> from astro_metallicity.ood import ood_score
    >>> model = load_model()
    >>> noise = np.random.default_rng(0).normal(12, 3, (2, 128, 128, 3))
    >>> noise = np.clip(noise, 0, 255).astype(np.uint8)
    >>> bool(np.all(ood_score(noise, model=model) > model.metadata["ood"]["threshold"]))
    True
    """
    from ._network import validate_images
    from .model import _as_model

    images = validate_images(images)
    model = _as_model(model, device)
    size = model.cutout_size
    if images.shape[1:3] != (size, size):
        msg = (f"images are {images.shape[2]}x{images.shape[1]} px; the model's statistics "
               f"describe {size}x{size} px cutouts: resize them first (as "
               "predict_metallicity_from_images does)")
        raise ValueError(msg)
    if getattr(model, "ood_reference", None) is None:
        log.info("the model has no out-of-distribution reference statistics: ood_score is NaN")
        return np.full(len(images), np.nan)
    _, embedding = model._run(images, batch_size=batch_size, embed=True)
    return _score_from_run(model, embedding, images)
