"""Published scaling relations of galaxy gas-phase metallicity.

The simulated survey (`astro_metallicity.mock`) draws metallicities from them
and the training evaluation (`astro_metallicity.train.evaluate`) scores the
mass-metallicity relation as a baseline, so both read the same numbers from
here.

References
----------
* Tremonti, C. A., et al. 2004, ApJ, 613, 898: the mass-metallicity relation
  of about 53,000 SDSS star-forming galaxies.
* Mannucci, F., et al. 2010, MNRAS, 408, 2115: the fundamental metallicity
  relation (metallicity as a function of stellar mass and star formation rate).
"""

import numpy as np

__all__ = ["mannucci_fmr", "tremonti_mzr"]

# Stellar-mass range (log10 Msun) over which Tremonti et al. (2004) fitted their relation.
_TREMONTI_LOGM_RANGE = (8.5, 11.5)


def tremonti_mzr(logm):
    """Mass-metallicity relation of Tremonti et al. (2004, ApJ 613, 898), their eq. 3.

    12 + log(O/H) = -1.492 + 1.847 x - 0.08026 x^2 with x = log(M*/Msun),
    clipped to the range 8.5 < x < 11.5 where the fit holds.

    Parameters
    ----------
    logm : array-like or `~astropy.units.Quantity`
        log10 stellar mass in solar masses.

    Returns
    -------
    oh : `~numpy.ndarray`
        12 + log(O/H) in the calibration of Tremonti et al., that of the MPA-JHU
        ``oh_p50`` labels.

    Examples
    --------
    >>> from astro_metallicity.relations import tremonti_mzr
    >>> print(f"{tremonti_mzr(10.0):.3f}")
    8.952
    """
    x = np.clip(np.asarray(getattr(logm, "value", logm), dtype=float), *_TREMONTI_LOGM_RANGE)
    return -1.492 + 1.847 * x - 0.08026 * x ** 2


def mannucci_fmr(logm, logsfr):
    """Fundamental metallicity relation of Mannucci et al. (2010, MNRAS 408, 2115), their eq. 2.

    12 + log(O/H) = 8.90 + 0.37 m - 0.14 s - 0.19 m^2 + 0.12 m s - 0.054 s^2
    with m = log(M*/Msun) - 10 and s = log(SFR / (Msun/yr)).

    Parameters
    ----------
    logm : array-like
        log10 stellar mass in solar masses.
    logsfr : array-like
        log10 star formation rate in solar masses per year.

    Returns
    -------
    oh : `~numpy.ndarray`
        12 + log(O/H) in the strong-line calibrations of Maiolino et al. (2008)
        that Mannucci et al. used.

    Examples
    --------
    >>> from astro_metallicity.relations import mannucci_fmr
    >>> print(f"{mannucci_fmr(10.0, 0.0):.2f}")
    8.90
    """
    m = np.asarray(logm, dtype=float) - 10.0
    s = np.asarray(logsfr, dtype=float)
    return 8.90 + 0.37 * m - 0.14 * s - 0.19 * m ** 2 + 0.12 * m * s - 0.054 * s ** 2
