"""A simulated SDSS: galaxy population, frames, cutouts and a local SDSS-protocol server.

SDSS cannot be reached from the machines this project is built and tested on,
so `MockSDSS` serves a simulated sky on 127.0.0.1 through the same protocols
(SkyServer SQL and CrossID, SAS corrected frames, ImgCutout JPEGs); astroquery
and this package's own client code run against it unmodified. A simulated
survey is a test bed, not the sky.
"""

from .population import *  # noqa: F401,F403
from .population import __all__ as _pop_all
from .server import *  # noqa: F401,F403
from .server import __all__ as _server_all
from .sky import *  # noqa: F401,F403
from .sky import __all__ as _sky_all
from .sql import SkyServerError

__all__ = [*_pop_all, *_sky_all, *_server_all, "SkyServerError"]
