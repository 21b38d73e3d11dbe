"""A simulated SDSS: galaxy population, frames, cutouts and a local SDSS-protocol server.

SDSS cannot be reached from the machines this project is built and tested on,
so `MockSDSS` serves a simulated sky on 127.0.0.1 through the same protocols
(SkyServer SQL and CrossID, SAS corrected frames, ImgCutout JPEGs); astroquery
and this package's own client code run against it unmodified. A simulated
survey is a test bed, not the sky.
"""

from .population import MAIN_SAMPLE_RLIM, mannucci_fmr, simulate_galaxies, tremonti_mzr
from .server import Faults, MockSDSS, MockSDSSServer, serve
from .sky import MockSky
from .sql import SkyServerError

__all__ = [
    "MAIN_SAMPLE_RLIM",
    "Faults",
    "MockSDSS",
    "MockSDSSServer",
    "MockSky",
    "SkyServerError",
    "mannucci_fmr",
    "serve",
    "simulate_galaxies",
    "tremonti_mzr",
]
