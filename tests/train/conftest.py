"""Fixtures for the training tests: a tiny labelled set whose colours encode metallicity."""

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table


def make_labelled_set(n=160, size=24, seed=0):
    """Synthetic cutouts: a blob whose brightness and colour follow 12+log(O/H)."""
    from astro_metallicity.train import LabelledCutouts

    rng = np.random.default_rng(seed)
    logm = rng.uniform(9.0, 11.0, n)
    oh = -1.492 + 1.847 * logm - 0.08026 * logm**2 + rng.normal(0, 0.05, n)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * (size / 6) ** 2))
    level = (oh - 8.3) / 1.0  # ~0..1
    images = np.empty((n, size, size, 3))
    for c, weight in enumerate((1.0, 0.7, 0.4)):
        images[..., c] = 255 * blob[None] * (0.3 + 0.6 * level[:, None, None] * weight)
    images += rng.normal(0, 3, images.shape)
    images = np.clip(images, 0, 255).astype(np.uint8)
    catalog = Table({
        "objID": np.arange(n, dtype=np.int64) + 1000,
        "ra": rng.uniform(180, 181, n) * u.deg,
        "dec": rng.uniform(0, 1, n) * u.deg,
        "oh_p50": oh * u.dex,
        "lgm_tot_p50": logm * u.dex(u.Msun),
        "modelMag_g": (17.0 - (logm - 10) + rng.normal(0, 0.1, n)) * u.mag,
        "modelMag_r": (16.5 - (logm - 10) + rng.normal(0, 0.1, n)) * u.mag,
        "modelMag_i": (16.2 - (logm - 10) + rng.normal(0, 0.1, n)) * u.mag,
    })
    return LabelledCutouts(images, catalog)


@pytest.fixture
def labelled_set():
    return make_labelled_set()


@pytest.fixture(autouse=True)
def _one_thread():
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
