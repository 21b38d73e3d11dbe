"""A simulated SDSS: galaxy population, frames, cutouts and a local SDSS-protocol server.

SDSS cannot be reached from the machines this project is built and tested on,
so `MockSDSS` serves a simulated sky on 127.0.0.1 through the same protocols
(SkyServer SQL and CrossID, SAS corrected frames, ImgCutout JPEGs); astroquery
and this package's own client code run against it unmodified. A simulated
survey is a test bed, not the sky.
"""

from .population import simulate_galaxies
from .real_sky import SkyFrames
from .server import Faults, MockSDSS, serve
from .sky import MockSky

__all__ = [
    "Faults",
    "MockSDSS",
    "MockSky",
    "SkyFrames",
    "serve",
    "simulate_galaxies",
]
