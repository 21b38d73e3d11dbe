"""pytest configuration for the executed documentation (``docs/**/*.rst``).

Every ``>>>`` example in the documentation runs under pytest-doctestplus
(``--doctest-rst``). Each page runs in its own scratch directory with its own
download cache, so pages never see each other's files or a user's cache.
"""

from pathlib import Path

import pytest

# conf.py is Sphinx configuration, not a module with doctests; _build and the
# automodapi stubs are generated.
collect_ignore = ["conf.py"]
collect_ignore_glob = ["_build/*", "api/*", "generated/*"]

# Pages whose examples take more than ~15 s on 2 busy cores, relative to docs/. rst
# has no markers, so they are marked `slow` here: the default `pytest` skips them and
# `pytest --slow` (run by CI) runs them.
# - tutorials/training.rst trains a network on the simulated sky (14 s on an idle
#   machine; 294 s was measured under load before torch was limited to one thread).
SLOW_PAGES = {"tutorials/training.rst"}

_DOCS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before the hooks that skip or deselect by marker
def pytest_collection_modifyitems(config, items):
    """Mark the examples of the pages in ``SLOW_PAGES`` as ``slow``."""
    slow = {_DOCS / page for page in SLOW_PAGES}
    for item in items:  # all items of the session, not only this directory's
        if Path(item.path).resolve() in slow:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _docs_scratch(tmp_path, monkeypatch):
    """Run each page in an empty working directory with a private cache."""
    import matplotlib

    matplotlib.use("agg")
    from astro_metallicity import conf, log

    monkeypatch.chdir(tmp_path)
    level = log.level
    try:
        with conf.set_temp("cache_dir", str(tmp_path / "cache")):
            yield
    finally:
        log.setLevel(level)  # a page may quieten the logger
    import matplotlib.pyplot as plt

    plt.close("all")
