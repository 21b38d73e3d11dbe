"""Physics of the simulated galaxy population (astro_metallicity.mock.population)."""

import numpy as np
import pytest
from astropy import units as u

from astro_metallicity.mock import MAIN_SAMPLE_RLIM, simulate_galaxies, tremonti_mzr


@pytest.fixture(scope="module")
def big_catalog():
    return simulate_galaxies(6000, seed=11)


def test_deterministic_by_seed():
    a = simulate_galaxies(200, seed=5)
    b = simulate_galaxies(200, seed=5)
    c = simulate_galaxies(200, seed=6)
    assert np.array_equal(a["objid"], b["objid"])
    assert np.array_equal(a["oh_p50"], b["oh_p50"])
    assert not np.allclose(a["lgm_tot_p50"].value, c["lgm_tot_p50"].value)


def test_selection_and_units(big_catalog):
    c = big_catalog
    assert len(c) == 6000
    assert np.all(c["petroMag_r"] < MAIN_SAMPLE_RLIM * u.mag)
    assert np.all((c["z"] > 0.02) & (c["z"] < 0.3))
    assert 0.06 < np.median(c["z"]) < 0.14  # SDSS main sample: median z ~ 0.1
    assert c["oh_p50"].unit == u.dex and c["ra"].unit == u.deg
    assert c["petroR50_r"].unit == u.arcsec
    assert np.all(c["petroR90_r"] > c["petroR50_r"])
    assert len(np.unique(c["objid"])) == len(c) and len(np.unique(c["specobjid"])) == len(c)
    # objID bit layout encodes run, camcol and field
    objid = np.asarray(c["objid"], dtype=np.uint64)
    assert np.array_equal((objid >> np.uint64(32)) & np.uint64(0xFFFF), np.asarray(c["run"], dtype=np.uint64))
    assert np.array_equal((objid >> np.uint64(29)) & np.uint64(7), np.asarray(c["camcol"], dtype=np.uint64))
    assert np.array_equal((objid >> np.uint64(16)) & np.uint64(0xFFF), np.asarray(c["field"], dtype=np.uint64))


def test_mass_metallicity_relation(big_catalog):
    """The catalogue recovers the Tremonti et al. (2004) MZR and its ~0.1 dex scatter."""
    c = big_catalog
    good = c["oh_p50"].value > 0
    x = c["lgm_tot_p50"].value[good]
    oh = c["oh_p50"].value[good]
    coef = np.polyfit(x - 10.0, oh, 2)
    fit = np.poly1d(coef)
    for logm in (9.5, 10.0, 10.5, 10.8):
        assert abs(fit(logm - 10.0) - tremonti_mzr(logm)) < 0.03, logm
    slope_at_10 = coef[1]
    assert slope_at_10 == pytest.approx(1.847 - 2 * 0.08026 * 10.0, abs=0.05)
    scatter = np.std(oh - tremonti_mzr(x))
    # intrinsic 0.08 dex plus the FMR's SFR term (Mannucci et al. 2010)
    assert 0.08 < scatter < 0.12


def test_fmr_sfr_dependence(big_catalog):
    """At fixed mass, galaxies with higher SFR are more metal poor (Mannucci et al. 2010)."""
    c = big_catalog
    good = c["oh_p50"].value > 0
    x = c["lgm_tot_p50"].value[good]
    dz = c["oh_p50"].value[good] - tremonti_mzr(x)
    dsfr = c["sfr_tot_p50"].value[good] - (x - 0.35 * (x - 10.0) - 9.83)
    slope = np.polyfit(dsfr, dz, 1)[0]
    assert -0.25 < slope < -0.05


def test_star_forming_sequence(big_catalog):
    c = big_catalog
    x = c["lgm_tot_p50"].value
    ssfr = c["sfr_tot_p50"].value - x
    resid = ssfr - (-0.35 * (x - 10.0) - 9.83)
    # flux-limited selection biases sSFR slightly high, scatter stays ~0.3 dex
    assert abs(np.median(resid)) < 0.15
    assert 0.22 < np.std(resid) < 0.36


def test_mass_to_light(big_catalog):
    """i-band luminosity follows the Taylor et al. (2011) colour-based M/L (before K-corrections)."""
    c = big_catalog
    near = c["z"] < 0.05  # small K-corrections
    from astropy.cosmology import Planck18

    gi = (c["modelMag_g"] - c["modelMag_i"]).value[near]
    abs_i = c["modelMag_i"].value[near] - Planck18.distmod(c["z"][near]).value
    logl = (4.58 - abs_i) / 2.5
    log_ml = c["lgm_tot_p50"].value[near] - logl
    assert np.median(log_ml - (-0.68 + 0.70 * gi)) == pytest.approx(0.0, abs=0.08)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="n must be a positive integer"):
        simulate_galaxies(0)
    with pytest.raises(ValueError, match="galaxies_per_field must be positive"):
        simulate_galaxies(10, galaxies_per_field=0)
