"""The baselines a CNN must beat (private; scored by `astro_metallicity.train.evaluate`).

The baselines of Wu & Boada (2018):

* ``mzr``: the mass-metallicity relation of Tremonti et al. (2004)
  (`astro_metallicity.relations.tremonti_mzr`) applied to the catalogue
  stellar mass (no fitting);
* ``gri_photometry``: gradient boosting on the *gri* model magnitudes and
  colours of the catalogue (the paper used a random forest);
* ``image_colours``: gradient boosting on mean colours of the cutout itself
  (R, G, B and their differences in the central quarter, central half and
  whole image, plus a concentration ratio): a CNN that does not beat it has
  learned little beyond colour;
* ``training_mean``: predicting the mean training label.
"""

import numpy as np

from ..relations import tremonti_mzr

__all__ = [
    "fit_baselines",
    "image_colour_features",
    "label_values",
    "photometry_features",
    "predict_baselines",
]


def image_colour_features(images):
    """Mean-colour features of colour cutouts (the ``image_colours`` baseline).

    Parameters
    ----------
    images : `~numpy.ndarray`
        uint8 ``(N, H, W, 3)``.

    Returns
    -------
    features : `~numpy.ndarray`
        ``(N, 16)``: mean R, G, B, R-G and G-B in the central quarter, the central
        half and the whole image, and the ratio of central-quarter to whole-image
        brightness.
    """
    images = np.asarray(images)
    n, h, w = images.shape[:3]
    feats = []
    brightness = []
    for frac in (4, 2, 1):
        ch, cw = max(1, h // frac), max(1, w // frac)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        mean = images[:, y0:y0 + ch, x0:x0 + cw].reshape(n, -1, 3).astype(np.float64).mean(1)
        feats += [mean, mean[:, :1] - mean[:, 1:2], mean[:, 1:2] - mean[:, 2:3]]
        brightness.append(mean.sum(axis=1))
    feats.append((brightness[0] / np.maximum(brightness[2], 1e-3))[:, None])
    return np.concatenate(feats, axis=1)


def photometry_features(catalog):
    """*gri* magnitudes and colours from a catalogue (the ``gri_photometry`` baseline).

    Parameters
    ----------
    catalog : `~astropy.table.Table`
        With ``modelMag_g``, ``modelMag_r``, ``modelMag_i``.

    Returns
    -------
    features : `~numpy.ndarray` or None
        ``(N, 6)``: g, r, i, g-r, r-i, g-i; None if the columns are missing.
    """
    names = ("modelMag_g", "modelMag_r", "modelMag_i")
    if not all(name in catalog.colnames for name in names):
        return None
    g, r, i = (np.asarray(getattr(catalog[k], "value", catalog[k]), dtype=float) for k in names)
    return np.stack([g, r, i, g - r, r - i, g - i], axis=1)


def label_values(cutouts, name):
    return cutouts.targets([name])[:, 0]


def fit_baselines(train, *, seed=0):
    """Fit the learned baselines on a training `LabelledCutouts`.

    Parameters
    ----------
    train : `~astro_metallicity.train.LabelledCutouts`
        Training cutouts with ``oh_p50`` (and model magnitudes for ``gri_photometry``).
    seed : int
        Random seed of the gradient boosting.

    Returns
    -------
    baselines : dict
        ``'training_mean'`` (float), ``'image_colours'`` and, when the catalogue has
        *gri* magnitudes, ``'gri_photometry'`` (fitted scikit-learn regressors).
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    y = label_values(train, "metallicity")
    ok = np.isfinite(y)
    baselines = {"training_mean": float(np.mean(y[ok]))}

    def fit(features):
        model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05,
                                              max_leaf_nodes=15, random_state=seed)
        good = ok & np.all(np.isfinite(features), axis=1)
        return model.fit(features[good], y[good])

    baselines["image_colours"] = fit(image_colour_features(train.images))
    photometry = photometry_features(train.catalog)
    if photometry is not None:
        baselines["gri_photometry"] = fit(photometry)
    return baselines


def predict_baselines(baselines, cutouts):
    """Predictions of every baseline that applies to ``cutouts``.

    Parameters
    ----------
    baselines : dict or None
        From `fit_baselines` (None: only the MZR baseline).
    cutouts : `~astro_metallicity.train.LabelledCutouts`
        The test set.

    Returns
    -------
    predictions : dict of `~numpy.ndarray`
    """
    out = {}
    mass = label_values(cutouts, "log_mstar")
    if np.isfinite(mass).any():
        out["mzr"] = np.where(np.isfinite(mass), tremonti_mzr(np.nan_to_num(mass, nan=10)),
                              np.nan)
    for name, model in (baselines or {}).items():
        if name == "training_mean":
            out[name] = np.full(len(cutouts), model)
        elif name == "image_colours":
            out[name] = model.predict(image_colour_features(cutouts.images))
        elif name == "gri_photometry":
            features = photometry_features(cutouts.catalog)
            if features is not None:
                pred = np.full(len(cutouts), np.nan)
                good = np.all(np.isfinite(features), axis=1)
                if good.any():
                    pred[good] = model.predict(features[good])
                out[name] = pred
    return out
