# Sphinx configuration for astro-metallicity.
#
# Build with ``tox -e build_docs`` or, from this directory,
# ``sphinx-build -W --keep-going -b html . _build/html``.
#
# The package is imported from its installation (``pip install -e .`` or the tox
# env), never from the source tree: there is deliberately no ``sys.path`` edit here.
#
# Offline builds
# --------------
# Intersphinx inventories (astropy, numpy, torch, ...) are fetched over the
# network. Where the network is unreachable (CI sandboxes, trains, this project's
# build machines) set ``ASTRO_METALLICITY_DOCS_OFFLINE=1``: intersphinx is switched
# off and nitpicky mode stops checking references *into other packages* (references
# inside astro-metallicity are still checked). Unset, the build probes
# docs.python.org once (3 s timeout) and goes offline by itself when that fails;
# ``ASTRO_METALLICITY_DOCS_OFFLINE=0`` forces the online build (and fails on
# unreachable inventories, which is what a link-checking CI job wants).

import datetime
import os
import socket
import sys
import tempfile
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    from sphinx_astropy.conf.v3 import *  # noqa: F403
except ImportError:
    print("ERROR: the documentation requires sphinx-astropy[confv3]: "
          "pip install 'astro-metallicity[docs]'", file=sys.stderr)
    raise

# -- Project information -----------------------------------------------------

project = "astro-metallicity"
author = "astro-metallicity developers"
copyright = f"{datetime.datetime.now(datetime.timezone.utc).year}, {author}"

try:
    release = _version("astro-metallicity")
except PackageNotFoundError:
    print("ERROR: astro-metallicity is not installed; run 'pip install -e .' "
          "from the repository root before building the docs", file=sys.stderr)
    raise
# The short X.Y version.
version = ".".join(release.split(".")[:2])

# -- General configuration ---------------------------------------------------

exclude_patterns.extend(["_templates", "_build", "**.ipynb_checkpoints"])  # noqa: F405
templates_path = ["_templates"]

rst_epilog += """
.. |SkyCoord| replace:: `~astropy.coordinates.SkyCoord`
.. |QTable| replace:: `~astropy.table.QTable`
.. |Table| replace:: `~astropy.table.Table`
"""  # noqa: F405

nitpicky = True

# -- Intersphinx -------------------------------------------------------------

intersphinx_mapping.update({  # noqa: F405
    "python": ("https://docs.python.org/3/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
    "astropy": ("https://docs.astropy.org/en/stable/", None),
    "astroquery": ("https://astroquery.readthedocs.io/en/latest/", None),
    "pyvo": ("https://pyvo.readthedocs.io/en/latest/", None),
    "reproject": ("https://reproject.readthedocs.io/en/stable/", None),
    "photutils": ("https://photutils.readthedocs.io/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
})


def _offline():
    """Whether intersphinx inventories are unreachable (see the header comment)."""
    setting = os.environ.get("ASTRO_METALLICITY_DOCS_OFFLINE", "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    try:
        socket.create_connection(("docs.python.org", 443), timeout=3).close()
    except OSError:
        return True
    return False


DOCS_OFFLINE = _offline()
if DOCS_OFFLINE:
    print("astro-metallicity docs: building offline; intersphinx disabled, "
          "references into other packages are not checked")
    disable_intersphinx = 1  # read by sphinx_astropy.ext.intersphinx_toggle
    # Without inventories every reference into another package is unresolvable;
    # keep nitpicky mode for this package's own references only.
    _external = ("python|builtins|numpy|matplotlib|astropy|astroquery|pyvo|reproject|"
                 "photutils|torch|torchvision|h5py|sklearn|scipy|PIL|pathlib|os|io|"
                 "collections|typing|concurrent|http|urllib|logging|contextlib")
    nitpick_ignore_regex = [
        (r"py:.*", rf"(~?)({_external})(\..*)?"),
        # builtin type names as they appear in numpydoc "Parameters" sections
        (r"py:.*", r"(int|float|str|bytes|bool|dict|list|tuple|set|callable|"
                   r"None|True|False|object|type|Exception|ValueError|TypeError|"
                   r"RuntimeError|OSError|KeyError|path-like|file-like|array-like)"),
    ]

# -- Extensions ---------------------------------------------------------------

# matplotlib's plot directive runs the example code at build time, so every
# figure in the tutorials is produced by the code shown beside it.
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]
plot_rcparams = {"figure.dpi": 100, "savefig.bbox": "tight"}
plot_apply_rcparams = True
# The tutorials' code writes files (tables, datasets, models) relative to the
# working directory and downloads into the astro-metallicity cache: during the
# build both go to a scratch directory, never into docs/ or the user's cache.
_scratch = tempfile.mkdtemp(prefix="astro-metallicity-docs-")
plot_working_directory = _scratch
try:
    from astro_metallicity import conf as _am_conf
except ImportError:
    print("ERROR: astro-metallicity is not importable; install it first", file=sys.stderr)
    raise
_am_conf.cache_dir = os.path.join(_scratch, "cache")

numpydoc_xref_param_type = False
automodsumm_inherited_members = False

# -- HTML output ---------------------------------------------------------------

html_title = f"{project} v{release}"
htmlhelp_basename = project + "doc"
html_theme_options = {
    "github_url": "https://github.com/astro-metallicity/astro-metallicity",
    "use_edit_page_button": False,
}

# -- LaTeX / man ----------------------------------------------------------------

latex_documents = [("index", project + ".tex", project + " Documentation", author, "manual")]
man_pages = [("index", project.lower(), project + " Documentation", [author], 1)]
