"""Gas-phase metallicity, 12 + log(O/H), of galaxies from SDSS *gri* images.

The public verbs and types are re-exported here, loaded on first use (PEP
562): torch and the network stack are imported only when needed, so
``import astro_metallicity`` stays cheap.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from ._config import conf
from .logger import log

try:
    __version__ = version("astro-metallicity")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

# public name -> module that defines it
_LAZY = {
    "predict_metallicity": "predict",
    "predict_metallicity_from_images": "predict",
    "load_model": "model",
    "save_model": "model",
    "MetallicityModel": "model",
    "fetch_cutouts": "acquire",
    "CutoutSet": "acquire",
    "FetchError": "acquire",
    "resolve_targets": "targets",
    "ResolvedTargets": "targets",
    "predict_metallicity_catalog": "distributed",  # needs the [distributed] extra when called
}

__all__ = ["__version__", "conf", "log", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
