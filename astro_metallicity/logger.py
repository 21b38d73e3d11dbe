"""The package logger, an `~astropy.logger.AstropyLogger` named ``astro_metallicity``."""

import logging

from astropy.logger import AstropyLogger

__all__ = ["log"]


def _init_log():
    """Create the ``astro_metallicity`` logger without changing the global logger class."""
    previous_class = logging.getLoggerClass()
    try:
        logging.setLoggerClass(AstropyLogger)
        logger = logging.getLogger("astro_metallicity")
        logger._set_defaults()
    finally:
        logging.setLoggerClass(previous_class)
    return logger


log = _init_log()
