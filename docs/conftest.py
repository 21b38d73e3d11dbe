"""pytest configuration for the executed documentation (``docs/**/*.rst``).

Every ``>>>`` example in the documentation runs under pytest-doctestplus
(``--doctest-rst``). Each page runs in its own scratch directory with its own
download cache, so pages never see each other's files or a user's cache.
"""

import pytest

# conf.py is Sphinx configuration, not a module with doctests; _build and the
# automodapi stubs are generated.
collect_ignore = ["conf.py"]
collect_ignore_glob = ["_build/*", "api/*", "generated/*"]


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
