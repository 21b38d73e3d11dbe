"""Shared fixtures. Fixtures that need the network use the local mock SDSS server."""

import importlib.util
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "ASTRO_METALLICITY_SHARED_DATA" in os.environ:
    SHARED_DATA = Path(os.environ["ASTRO_METALLICITY_SHARED_DATA"])


def pytest_configure(config):
    try:
        from pytest_astropy_header.display import PYTEST_HEADER_MODULES
    except ImportError:
        pass
    else:
        for name in ("astroquery", "pyvo", "photutils", "reproject", "torch", "torchvision"):
            PYTEST_HEADER_MODULES[name] = name
    from astropy.utils import iers

    iers.conf.auto_download = False


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Give every test its own download cache so tests never see each other's files."""
    from astro_metallicity import conf
    from astro_metallicity.acquire._sdss import clear_memory_cache

    # The decompressed-frame memo would otherwise carry frames from one test's cache to the next.
    clear_memory_cache()
    with conf.set_temp("cache_dir", str(tmp_path / "cache")):
        yield
    clear_memory_cache()


@pytest.fixture
def fast_retries():
    """Retry quickly and with few workers, so fault-injection tests stay fast on 2 cores."""
    from astro_metallicity import conf

    with conf.set_temp("retry_backoff", 0.01), conf.set_temp("max_retries", 4), \
            conf.set_temp("timeout", 10.0), conf.set_temp("max_workers", 2):
        yield


@pytest.fixture
def shared_data():
    """The real SDSS material in ``../shared/data``; skips where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (real SDSS sample) is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def load_benchmark():
    """A function importing ``benchmarks/NAME.py`` as a module (the scripts are not part of
    the package); the test skips where the checkout has no ``benchmarks/``."""
    def load(name):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        if not path.is_file():
            pytest.skip("benchmarks/ is not in this installation")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def pipeline_model(tmp_path_factory):
    """Path of a tiny untrained checkpoint (64 px cutouts, adaptive scale) for pipeline tests.

    Written with the package's own `save_model` (via `save_untrained_model`) and
    loaded by the same `load_model` users get.
    """
    from astro_metallicity.model import _save_untrained_model as save_untrained_model

    path = tmp_path_factory.mktemp("pipeline_model") / "tiny"
    return save_untrained_model(path, arch="tiny", input_size=32, cutout_size=64, seed=0)


@pytest.fixture
def mock_sdss():
    """A small simulated SDSS served on 127.0.0.1 (`astro_metallicity.mock.MockSDSS`).

    astroquery's and this package's SkyServer/SAS URLs point at it for the test.
    """
    from astro_metallicity.mock import MockSDSS

    with MockSDSS(n_galaxies=40, seed=0) as sky:
        yield sky
