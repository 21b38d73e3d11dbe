"""Gas-phase metallicity, 12 + log(O/H), of galaxies from SDSS *gri* images.

The public verbs are re-exported here; torch is imported only when a model
is loaded, so ``import astro_metallicity`` stays cheap.
"""

from importlib.metadata import PackageNotFoundError, version

from ._config import conf
from .logger import log

try:
    __version__ = version("astro-metallicity")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "__version__",
    "conf",
    "load_model",
    "log",
    "predict_metallicity",
    "predict_metallicity_from_images",
]


def __getattr__(name):
    # PEP 562: keep torch and the network stack out of import time.
    if name in ("predict_metallicity", "predict_metallicity_from_images"):
        from . import predict

        return getattr(predict, name)
    if name == "load_model":
        from .model import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
