"""Physics of the simulated galaxy population (astro_metallicity.mock.population)."""

import numpy as np
import pytest
from astropy import units as u

from astro_metallicity.mock.population import (
    DUST_K,
    MAIN_SAMPLE_RLIM,
    ccm89_ratio,
    simulate_galaxies,
    slab_attenuation,
)
from astro_metallicity.relations import mannucci_fmr, tremonti_mzr


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
    with pytest.raises(ValueError, match="dust_tau0 must be"):
        simulate_galaxies(10, dust_tau0=-1.0)
    with pytest.raises(ValueError, match="mass_error must be"):
        simulate_galaxies(10, mass_error=float("nan"))


def test_ccm89_ratios():
    """CCM89 (R_V = 3.1) at the SDSS effective wavelengths; A_V / A_V = 1 at 5495 A."""
    assert ccm89_ratio(5495.0) == pytest.approx(1.0, abs=0.01)
    assert DUST_K["g"] == pytest.approx(1.194, abs=0.002)
    assert DUST_K["r"] == pytest.approx(0.869, abs=0.002)
    assert DUST_K["i"] == pytest.approx(0.653, abs=0.002)
    assert DUST_K["u"] > DUST_K["g"] > DUST_K["r"] > DUST_K["i"] > DUST_K["z"]
    with pytest.raises(ValueError, match="wavelength must be within"):
        ccm89_ratio(1000.0)


def test_slab_attenuation_formula():
    # optically thin limit: A = 1.086 tau / cos i / 2 (half the slab in front on average)
    assert slab_attenuation(1e-4, 1.0) == pytest.approx(1.0857362 * 1e-4 / 2, rel=1e-3)
    # optically thick: A -> 2.5 log10(tau / cos i)
    assert slab_attenuation(50.0, 0.5) == pytest.approx(2.5 * np.log10(100.0), rel=1e-6)
    t = 0.8 / 0.3
    assert slab_attenuation(0.8, 0.3) == pytest.approx(-2.5 * np.log10((1 - np.exp(-t)) / t))
    assert slab_attenuation(0.0, 0.5) == 0.0


def _residual_from_slab(c, band):
    tau = DUST_K[band] * c["tau_v"]
    return c[f"dust_disk_{band}"].value - slab_attenuation(tau, c["cos_i"])


def test_disk_dust_follows_metallicity_and_inclination(big_catalog):
    """Disk attenuation is the slab formula of tau_V ~ 10**(oh - 8.9), rising with oh and inclination."""
    c = big_catalog
    for band in "gri":
        np.testing.assert_allclose(_residual_from_slab(c, band), 0.0, atol=1e-12)
    tau0 = c.meta["dust_tau0"]
    sig = 10 ** c["sfr_tot_p50"].value / (2 * np.pi * c["r50_kpc"].to_value(u.kpc) ** 2)
    ok = c["oh_p50"].value > 0
    expected_tau = tau0 * 10 ** (c["oh_p50"].value - 8.9) * (sig / c.meta["dust_sigma_sfr_ref"]) ** 0.25
    np.testing.assert_allclose(c["tau_v"][ok], expected_tau[ok], rtol=1e-10)
    # at fixed inclination, metal-richer disks are more attenuated (monotonic in oh at fixed Sigma_SFR)
    a_lo = slab_attenuation(DUST_K["r"] * tau0 * 10 ** (8.6 - 8.9), 0.5)
    a_hi = slab_attenuation(DUST_K["r"] * tau0 * 10 ** (9.1 - 8.9), 0.5)
    assert a_hi > 1.8 * a_lo
    # in the catalogue: A_r / (k_r tau_V) at similar inclination is ~constant, so A_r tracks oh
    face = c["cos_i"] > 0.8
    good = face & (c["oh_p50"].value > 0)
    rho = np.corrcoef(c["oh_p50"].value[good], c["dust_disk_r"].value[good])[0, 1]
    assert rho > 0.4
    # at fixed metallicity, edge-on disks are more attenuated
    mid = (c["oh_p50"].value > 8.95) & (c["oh_p50"].value < 9.05)
    a_r = c["dust_disk_r"].value
    assert np.median(a_r[mid & (c["cos_i"] < 0.3)]) > 1.5 * np.median(a_r[mid & (c["cos_i"] > 0.7)])
    # typical disk A_V of a few tenths of a magnitude to ~1 mag
    a_v = slab_attenuation(c["tau_v"], c["cos_i"])
    assert 0.3 < np.median(a_v) < 1.0
    # bluer bands are more attenuated
    assert np.all(c["dust_disk_g"] > c["dust_disk_r"]) and np.all(c["dust_disk_r"] > c["dust_disk_i"])


def test_catalog_magnitudes_are_bulge_plus_dimmed_disk():
    """modelMag = intrinsic bulge + dust-dimmed disk; the bulge is undimmed; r < 17.77 after dust."""
    dusty = simulate_galaxies(300, seed=4)
    assert np.all(dusty["petroMag_r"] < MAIN_SAMPLE_RLIM * u.mag)
    assert np.all(dusty["dust_disk_r"] > 0)
    for band in "gri":
        f_obs = 10 ** (-0.4 * dusty[f"modelMag_{band}"].value)
        fb_obs = np.asarray(dusty[f"bulge_frac_{band}"])
        bulge = fb_obs * f_obs
        disk = (1 - fb_obs) * f_obs
        # undo the disk dust: the bulge-to-total ratio returns to the intrinsic (dust-free) one
        disk_int = disk * 10 ** (0.4 * dusty[f"dust_disk_{band}"].value)
        fb_int = bulge / (bulge + disk_int)
        bt = np.asarray(dusty["bulge_to_total"])
        from astro_metallicity.mock.population import _BULGE_WEIGHT

        w = _BULGE_WEIGHT[band]
        np.testing.assert_allclose(fb_int, bt * w / (bt * w + 1 - bt), atol=1e-10)
        assert np.all(fb_obs >= fb_int - 1e-12)  # dust makes galaxies more bulge dominated
    # dust can be switched off
    clean = simulate_galaxies(300, seed=4, dust_tau0=0.0)
    assert np.all(clean["dust_disk_r"].value == 0.0)
    assert clean.meta["dust_tau0"] == 0.0 and dusty.meta["dust_tau0"] > 0


def test_measured_mass_noise(big_catalog):
    c = big_catalog
    d = c["lgm_tot_p50"].value - c["logm_true"].value
    assert np.std(d) == pytest.approx(c.meta["mass_error"], rel=0.1)
    assert abs(np.mean(d)) < 0.01
    exact = simulate_galaxies(50, seed=4, mass_error=0.0)
    np.testing.assert_array_equal(exact["lgm_tot_p50"].value, exact["logm_true"].value)


def test_published_relations_by_hand():
    """The relations the mock draws from, at points computed from the papers' equations."""
    # Tremonti et al. (2004) eq. 3 at log M* = 10, and clipped to its 8.5-11.5 fit range
    assert tremonti_mzr(10.0) == pytest.approx(-1.492 + 18.47 - 8.026)
    assert tremonti_mzr(7.0) == pytest.approx(tremonti_mzr(8.5))
    assert tremonti_mzr(12.0) == pytest.approx(tremonti_mzr(11.5))
    assert tremonti_mzr(10.0 * u.dex(u.Msun)) == pytest.approx(tremonti_mzr(10.0))
    # Mannucci et al. (2010) eq. 2: 8.90 at m = s = 0; m = 1, s = 1: 8.90+.37-.14-.19+.12-.054
    assert mannucci_fmr(10.0, 0.0) == pytest.approx(8.90)
    assert mannucci_fmr(11.0, 1.0) == pytest.approx(9.006)
    np.testing.assert_allclose(mannucci_fmr([10.0, 10.0], [-1.0, 1.0]),
                               [8.90 + 0.14 - 0.054, 8.90 - 0.14 - 0.054])
