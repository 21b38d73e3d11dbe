"""Simulated population of SDSS main-sample star-forming galaxies.

The scaling relations and their references:

* stellar mass function: double Schechter fit of Baldry et al. (2012, MNRAS 421, 621),
  times a star-forming fraction falling through 50 per cent at 10^10.5 Msun;
* redshifts uniform in comoving volume for 0.02 < z < 0.3 (Planck 2018 cosmology);
* star-forming sequence: log sSFR = -0.35 (log M* - 10) - 9.83, scatter 0.3 dex
  (Salim et al. 2007, ApJS 173, 267);
* mass-metallicity relation Z = -1.492 + 1.847 x - 0.08026 x^2
  (Tremonti et al. 2004, ApJ 613, 898), with the SFR dependence at fixed mass
  of the fundamental metallicity relation (Mannucci et al. 2010, MNRAS 408, 2115)
  and an intrinsic Gaussian scatter (both relations from `astro_metallicity.relations`);
* late-type mass-size relation R50 = 0.10 kpc M^0.14 (1 + M / 3.98e10)^0.25
  with its mass-dependent log-normal scatter (Shen et al. 2003, MNRAS 343, 978);
* colour-based mass-to-light ratio log M*/L_i = -0.68 + 0.70 (g - i)
  (Taylor et al. 2011, MNRAS 418, 1587);
* dust in the star-forming disk (see below);
* MPA-JHU-like measurement noise of the catalogue stellar mass ``lgm_tot_p50``
  (0.1 dex; the true mass is kept in ``logm_true``);
* the SDSS main-sample cut petroMag_r < 17.77 (Strauss et al. 2002, AJ 124, 1810),
  applied to the observed (dust-attenuated) magnitudes.

Dust and metallicity. The dust-to-gas ratio scales about linearly with the
gas-phase metallicity (Draine et al. 2007, ApJ 663, 866; Remy-Ruyer et al. 2014,
A&A 563, A31), so the face-on V-band optical depth of the disk is

    tau_V = tau0 * 10**(oh - 8.9) * (Sigma_SFR / Sigma_ref)**0.25,

with ``tau0 = 0.7`` (`DUST_TAU0`) and a weak gas-surface-density factor through the
Kennicutt (1998) law, Sigma_SFR = SFR / (2 pi R50^2), Sigma_ref = 0.05 Msun/yr/kpc^2
(close to the median, 0.04, of the selected sample). Stars and dust are mixed in a uniform slab
(sandwich) seen at the galaxy's inclination i (the same cos i that sets its axis
ratio), so the disk is attenuated by

    A_b = -2.5 log10((1 - exp(-tau_b / cos i)) / (tau_b / cos i)),  tau_b = k_b tau_V,

in each band, with k_b = A_b / A_V of the Cardelli, Clayton & Mathis (1989) R_V = 3.1
law at the SDSS effective wavelengths 3551, 4770, 6231, 7625, 8913 A:
k = 1.579 (u), 1.194 (g), 0.869 (r), 0.653 (i), 0.487 (z) (`DUST_K`). This gives a
typical disk A_V of 0.3-1 mag, more for metal-rich and edge-on disks, the strong
inclination dependence of disk attenuation (Giovanelli et al. 1994, AJ 107, 2036;
Unterborn & Ryden 2008, ApJ 687, 976; Masters et al. 2010, MNRAS 404, 792).
Bulges are taken as dust free. The colour-mass locus and M/L above describe
observed (reddened) galaxies, so magnitudes are dimmed relative to a typical galaxy
of the same mass (MZR metallicity, mean sSFR, median size and bulge fraction,
cos i = 0.5), which keeps the locus colours: the mean colours stay those of real
star-forming galaxies and the dust adds the galaxy-to-galaxy differences.
**This prescription is the only channel through which
the images carry the intrinsic (0.08 dex) metallicity scatter at fixed mass and SFR**:
it is a design choice of the test bed, so an accuracy reached on the simulation says
nothing about real galaxies.

Photometric, structural and spectroscopic columns mimic the SDSS ``PhotoObj``,
``SpecObj`` and MPA-JHU ``GalSpec*`` tables, so that the mock SkyServer can
answer the project's training query. A simulated survey is a test bed, not the
sky.
"""

import math

import numpy as np
from astropy import units as u
from astropy.table import QTable

from ..relations import mannucci_fmr, tremonti_mzr
from . import appearance as _app
from ._footprint import (
    BANDS,
    COL_STEP,
    NCOL,
    NROW,
    PIXEL_SCALE,
    RERUN,
    ROW_STEP,
    Footprint,
    make_objid,
    make_specobjid,
)

__all__ = ["DUST_K", "DUST_TAU0", "MAIN_SAMPLE_RLIM", "ccm89_ratio", "simulate_galaxies",
           "slab_attenuation"]

#: SDSS main galaxy sample limit in Petrosian r magnitude (Strauss et al. 2002).
MAIN_SAMPLE_RLIM = 17.77

_ZMIN, _ZMAX = 0.02, 0.3
_LOGM_MIN, _LOGM_MAX = 8.5, 11.5
_MSUN_I = 4.58  # AB absolute magnitude of the Sun in i (Taylor et al. 2011)
# Rough K-corrections of blue galaxies, K_b ~ k_b z (mag).
_KCORR = {"u": 2.5, "g": 2.0, "r": 1.0, "i": 0.5, "z": 0.4}
# Relative bulge-to-disk flux weight per band (bulges are redder than disks).
_BULGE_WEIGHT = {"u": 0.4, "g": 0.65, "r": 1.0, "i": 1.25, "z": 1.4}
#: SDSS effective wavelengths (Angstrom) used for the disk dust law.
_EFF_WAVELENGTH = {"u": 3551.0, "g": 4770.0, "r": 6231.0, "i": 7625.0, "z": 8913.0}
#: Face-on V-band optical depth of a disk at 12+log(O/H) = 8.9 and the reference Sigma_SFR.
DUST_TAU0 = 0.7
_SIGMA_SFR_REF = 0.05  # Msun / yr / kpc^2
_SIGMA_SFR_INDEX = 0.25
_COS_I_MIN = 0.05  # a thin slab seen exactly edge-on would have infinite optical depth
# Half- and 90 per cent-light radii in circular apertures of an exponential disk of axis
# ratio q, relative to its major-axis radii (numerical integration; "sdss" appearance).
_CIRC_Q = np.array([0.12, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0])
_CIRC_R50 = np.array([0.576, 0.600, 0.643, 0.693, 0.744, 0.796, 0.900, 1.0])
_CIRC_R90 = np.array([0.730, 0.735, 0.747, 0.766, 0.792, 0.824, 0.905, 1.0])
# Galactic extinction coefficients A_b / E(B-V) (Schlafly & Finkbeiner 2011).
_EXT = {"u": 4.239, "g": 3.303, "r": 2.285, "i": 1.698, "z": 1.263}


def ccm89_ratio(wavelength, r_v=3.1):
    """Extinction ratio A_lambda / A_V of Cardelli, Clayton & Mathis (1989), optical/NIR.

    Parameters
    ----------
    wavelength : float or array-like
        Wavelength in Angstrom (valid 3030-9090 A for the optical polynomial,
        and down to 9090-33000 A for the infrared power law).
    r_v : float, optional
        Total-to-selective extinction ratio.

    Returns
    -------
    ratio : `~numpy.ndarray`
        A_lambda / A_V.
    """
    x = 1e4 / np.asarray(wavelength, dtype=float)
    if np.any((x < 0.3) | (x > 3.3)):
        msg = f"wavelength must be within 3030-33000 Angstrom for CCM89 here, got {wavelength!r}"
        raise ValueError(msg)
    y = x - 1.82
    a = (1 + 0.17699 * y - 0.50447 * y ** 2 - 0.02427 * y ** 3 + 0.72085 * y ** 4 + 0.01979 * y ** 5
         - 0.77530 * y ** 6 + 0.32999 * y ** 7)
    b = (1.41338 * y + 2.28305 * y ** 2 + 1.07233 * y ** 3 - 5.38434 * y ** 4 - 0.62251 * y ** 5
         + 5.30260 * y ** 6 - 2.09002 * y ** 7)
    ir = x < 1.1
    a = np.where(ir, 0.574 * x ** 1.61, a)
    b = np.where(ir, -0.527 * x ** 1.61, b)
    return a + b / r_v


#: Disk dust law A_b / A_V per band (CCM89, R_V = 3.1, at the SDSS effective wavelengths).
DUST_K = {b: float(ccm89_ratio(w)) for b, w in _EFF_WAVELENGTH.items()}


def slab_attenuation(tau, cos_i):
    """Attenuation (mag) of a uniform slab of mixed stars and dust.

    Parameters
    ----------
    tau : array-like
        Face-on optical depth of the slab in the band.
    cos_i : array-like
        Cosine of the inclination (1 face-on); clipped below at 0.05.

    Returns
    -------
    a : `~numpy.ndarray`
        ``-2.5 log10((1 - exp(-t)) / t)`` with ``t = tau / cos_i`` (0 where tau = 0).
    """
    t = np.asarray(tau, dtype=float) / np.clip(np.asarray(cos_i, dtype=float), _COS_I_MIN, 1.0)
    small = t < 1e-8
    ts = np.where(small, 1.0, t)
    return np.where(small, 1.0857362 * t, -2.5 * np.log10(-np.expm1(-ts) / ts))


def _ssfr_mean(logm):
    """Star-forming sequence of Salim et al. (2007): mean log sSFR [1/yr]."""
    return -0.35 * (np.asarray(logm) - 10.0) - 9.83


def _inverse_cdf_sampler(x, pdf):
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x))])
    cdf /= cdf[-1]
    return lambda uniform: np.interp(uniform, cdf, x)


def _cosmology_grids(cosmology):
    zg = np.linspace(_ZMIN, _ZMAX, 600)
    dvdz = cosmology.differential_comoving_volume(zg).value
    distmod = cosmology.distmod(zg).value
    kpc_per_arcsec = cosmology.kpc_proper_per_arcmin(zg).to_value(u.kpc / u.arcmin) / 60.0
    dl_cm = cosmology.luminosity_distance(zg).to_value(u.cm)
    return zg, dvdz, distmod, kpc_per_arcsec, dl_cm


def _field_seeing(rng, n_fields, seeing):
    """r-band seeing FWHM per field (arcsec): log-normal around ``seeing``."""
    fwhm = seeing * np.exp(rng.normal(0.0, 0.12, n_fields))
    return np.clip(fwhm, 0.9, 2.3)


def simulate_galaxies(n, seed=0, *, galaxies_per_field=100, seeing=1.4, metallicity_scatter=0.08,
                      ra0=185.0, dec0=1.0, run=4294, min_separation=12.0 * u.arcsec,
                      cosmology=None, dust_tau0=DUST_TAU0, mass_error=0.1, appearance="classic"):
    """Draw a simulated SDSS main-sample population of star-forming galaxies.

    Galaxies are drawn from a stellar mass function and uniformly in comoving
    volume, given star formation rates, metallicities, sizes, disk+bulge
    structure and *ugriz* photometry, attenuated by dust in the disk, and kept if
    the observed Petrosian r is brighter than the main-sample limit 17.77. They are
    placed on a compact patch of overlapping SDSS-like fields. Deterministic for a
    given ``seed``.

    The disk's face-on optical depth is ``tau_V = dust_tau0 * 10**(oh - 8.9) *
    (Sigma_SFR / 0.05 Msun/yr/kpc^2)**0.25`` (dust-to-gas ratio proportional to
    metallicity: Draine et al. 2007; Remy-Ruyer et al. 2014), applied to the disk
    component only through a slab geometry at the galaxy's inclination with the
    CCM89 dust law (see the module docstring). This is the only way the intrinsic
    metallicity scatter reaches the images: a design choice of the simulation, so
    accuracy on simulated galaxies says nothing about real ones.

    Parameters
    ----------
    n : int
        Number of galaxies to return (after the magnitude cut).
    seed : int, optional
        Seed of the random generator.
    galaxies_per_field : float, optional
        Mean number of galaxies per field; sets how many fields the sky has.
    seeing : float, optional
        Median r-band seeing FWHM in arcsec (varies per field).
    metallicity_scatter : float, optional
        Intrinsic Gaussian scatter (dex) of 12+log(O/H) about the relation.
    ra0, dec0 : float, optional
        Centre of the footprint in degrees.
    run : int, optional
        SDSS run number of the simulated imaging.
    min_separation : `~astropy.units.Quantity`, optional
        Minimum distance between two galaxies (angle).
    cosmology : `~astropy.cosmology.Cosmology`, optional
        Default `~astropy.cosmology.Planck18`.
    dust_tau0 : float, optional
        Face-on V-band optical depth of a disk at 12+log(O/H) = 8.9 and the
        reference SFR surface density; 0 for dust-free disks.
    mass_error : float, optional
        Gaussian error (dex) of the catalogue mass ``lgm_tot_p50`` about the true
        mass ``logm_true`` (MPA-JHU-like; 0 for the true mass).
    appearance : {"classic", "sdss"}, optional
        ``"classic"`` (default): the population the previous bundled model was
        trained on, unchanged. ``"sdss"``: the realistic preset of
        ``astro_metallicity.mock.appearance`` (thin disks, red bulges and bluer
        disks, lopsided disks with odd-numbered arms, star-forming clumps, dust
        lanes, catalogue positions offset from the light centre, irregular and
        interacting galaxies, compact bulges, Petrosian radii with the PSF wings,
        masses down to 10^8 Msun); it adds the columns ``lopsided_amp``,
        ``lopsided_phase``, ``clump_n``, ``clump_frac``, ``clump_seed``,
        ``light_offset_ra`` and ``light_offset_dec`` (arcsec), ``irregular``,
        ``companion_dmag`` (mag; NaN without a companion), ``companion_sep``
        (arcsec), ``companion_pa`` (deg) and ``companion_seed`` that
        `~astro_metallicity.mock.MockSky` renders.

    Returns
    -------
    catalog : `~astropy.table.QTable`
        One row per galaxy with positions (deg), identifiers (objid, specobjid,
        run, rerun, camcol, field, obj), redshift, 12+log(O/H) ``oh_p50`` and
        its percentiles (dex), ``lgm_tot_p50`` (measured log M*/Msun, dex),
        ``logm_true`` (true log M*/Msun, dex),
        ``sfr_tot_p50`` (log SFR/(Msun/yr), dex), Petrosian radii (arcsec),
        model/Petrosian/PSF magnitudes and errors in *ugriz*, line fluxes,
        ``d4000``, ``bptclass``, ``rChi2`` and the structural parameters the
        renderer uses (``r50_disk``, ``r50_bulge`` in arcsec, ``bulge_frac_*``,
        ``axis_ratio``, ``bulge_axis_ratio``, ``pos_angle`` in deg, spiral-arm
        ``arm_amp``, ``arm_m``, ``arm_pitch``, ``arm_phase``), the dust truth
        ``tau_v`` (face-on V optical depth), ``cos_i`` and ``dust_disk_*`` (disk
        attenuation per band, mag), the intrinsic r-band ``bulge_to_total`` and
        the disk half-light radius ``r50_kpc``. Magnitudes and ``bulge_frac_*`` are observed,
        i.e. bulge plus attenuated disk. The footprint, per-field seeing and
        dust parameters (and, for ``appearance="sdss"``, the appearance) are
        stored in ``catalog.meta``.
    """
    _app.check_appearance(appearance)
    sdss = appearance == "sdss"
    logm_min = _app.SDSS_LOGM_MIN if sdss else _LOGM_MIN
    bulge_weight = _app.SDSS_BULGE_WEIGHT if sdss else _BULGE_WEIGHT
    if int(n) != n or n < 1:
        msg = f"n must be a positive integer number of galaxies, got {n!r}"
        raise ValueError(msg)
    n = int(n)
    if galaxies_per_field <= 0:
        msg = f"galaxies_per_field must be positive, got {galaxies_per_field!r}"
        raise ValueError(msg)
    if not (dust_tau0 >= 0 and math.isfinite(dust_tau0)):
        msg = f"dust_tau0 must be a finite optical depth >= 0, got {dust_tau0!r}"
        raise ValueError(msg)
    if not (mass_error >= 0 and math.isfinite(mass_error)):
        msg = f"mass_error must be a finite number of dex >= 0, got {mass_error!r}"
        raise ValueError(msg)
    if cosmology is None:
        from astropy.cosmology import Planck18 as cosmology
    rng = np.random.default_rng(seed)

    zg, dvdz, distmod_g, kpc_arcsec_g, dl_g = _cosmology_grids(cosmology)
    draw_z = _inverse_cdf_sampler(zg, dvdz)
    # Double Schechter stellar mass function (Baldry et al. 2012).
    mg = np.linspace(logm_min, _LOGM_MAX, 800)
    mu = 10 ** (mg - 10.66)
    phi = np.log(10) * np.exp(-mu) * (3.96e-3 * mu ** (1 - 0.35) + 0.79e-3 * mu ** (1 - 1.47))
    # keep the star-forming share only: it falls from ~1 at low mass to ~0 above 10^11
    phi /= 1.0 + np.exp((mg - 10.5) / 0.25)
    draw_logm = _inverse_cdf_sampler(mg, phi)

    chunks = []
    kept = 0
    while kept < n:
        m = max(20000, 40 * (n - kept))
        z = draw_z(rng.random(m))
        logm = draw_logm(rng.random(m))
        gal = _photometry(rng, z, logm, np.interp(z, zg, distmod_g))
        # metallicity: MZR + FMR SFR term + intrinsic scatter (the part only the dust traces)
        x = np.clip(logm, logm_min, _LOGM_MAX)
        logsfr = logm + gal["logssfr"]
        scatter = rng.normal(0.0, metallicity_scatter, m)
        if sdss:
            # the scatter about the MZR grows towards low masses (Tremonti et al. 2004, Fig. 6)
            scatter *= np.clip(1.0 + _app.SDSS_MZR_SCATTER_SLOPE * (10.0 - logm), 1.0, 2.5)
        gal["oh"] = (tremonti_mzr(x) + mannucci_fmr(x, logsfr) - mannucci_fmr(x, x + _ssfr_mean(x))
                     + scatter)
        # sizes and structure (Shen et al. 2003, late types)
        mass = 10 ** logm
        r50_kpc = _median_r50_kpc(logm)
        sig_ln = 0.34 + (0.47 - 0.34) / (1 + (mass / 3.98e10) ** 2)
        if sdss:
            r50_kpc = r50_kpc * _app.SDSS_SIZE_SCALE
        gal["r50_kpc"] = r50_kpc * np.exp(rng.normal(0.0, 1.0, m) * sig_ln)
        gal["bt"] = np.clip(0.12 + 0.22 * (logm - 10.0) + rng.normal(0, 0.08, m), 0.0, 0.7)
        gal["cos_i"] = rng.random(m)
        if sdss:
            # bulge weight per galaxy: disks bluer the faster the galaxy forms stars
            dssfr = gal["logssfr"] - _ssfr_mean(logm)
            expo = np.clip(1.0 + _app.SDSS_DISK_SSFR_COLOUR * dssfr / 0.3, 0.3, 2.0)
            weights = {b: bulge_weight[b] ** expo for b in BANDS}
            _apply_disk_dust(gal, logsfr, dust_tau0, bulge_weight=weights, logm_min=logm_min,
                             typical_weight=bulge_weight)
        else:
            _apply_disk_dust(gal, logsfr, dust_tau0)
        sel = gal["mag_r"] + gal["petro_offset"] < MAIN_SAMPLE_RLIM
        gal = {k: v[sel] for k, v in gal.items()}
        chunks.append(gal)
        kept += int(sel.sum())
    gal = {k: np.concatenate([c[k] for c in chunks])[:n] for k in chunks[0]}

    # --- sizes and structure
    r50 = gal["r50_kpc"] / np.interp(gal["z"], zg, kpc_arcsec_g)  # arcsec
    bt = gal["bt"]
    q0 = _app.SDSS_DISK_THICKNESS if sdss else 0.2
    axis_ratio = np.sqrt((1 - q0 ** 2) * gal["cos_i"] ** 2 + q0 ** 2)
    if sdss:
        # Shen et al. (2003) radii are Petrosian radii, measured in circular apertures: the
        # major-axis half-light radius of an inclined disk is larger
        r50 = r50 / np.interp(axis_ratio, _CIRC_Q, _CIRC_R50)
    r50 = np.clip(r50, 0.3, 30.0)
    lo_q, hi_q = _app.SDSS_BULGE_AXIS_RATIO if sdss else (0.7, 1.0)
    bulge_q = np.clip(rng.uniform(lo_q, hi_q, n), axis_ratio, 1.0)
    pos_angle = rng.uniform(0.0, 180.0, n)
    r50_disk = r50
    r50_bulge = (_app.SDSS_BULGE_SIZE if sdss else 0.35) * r50
    # MPA-JHU-like error of the catalogue stellar mass
    gal["logm_obs"] = gal["logm"] + rng.normal(0.0, mass_error, n)

    # --- sky positions on the footprint
    n_fields = max(1, math.ceil(n / galaxies_per_field))
    fp = Footprint(n_fields, run=run, ra0=ra0, dec0=dec0)
    fwhm = _field_seeing(rng, len(fp), seeing)
    k, col, row = _place(rng, fp, n, min_separation.to_value(u.arcsec))
    ra = np.empty(n)
    dec = np.empty(n)
    for kk in np.unique(k):
        sel = k == kk
        ra[sel], dec[sel] = fp.wcs(kk).wcs_pix2world(col[sel], row[sel], 0)
    ra %= 360.0

    # sort by (camcol, field, row) like an SDSS photometric catalogue; assign obj numbers
    order = np.lexsort((row, fp.field[k], fp.camcol[k]))
    k = k[order]
    ra, dec = ra[order], dec[order]
    perm = {name: v[order] for name, v in gal.items()}
    r50_disk, r50_bulge, bt = r50_disk[order], r50_bulge[order], bt[order]
    axis_ratio, bulge_q, pos_angle = axis_ratio[order], bulge_q[order], pos_angle[order]
    gal = perm
    obj = np.zeros(n, dtype=np.int64)
    for kk in np.unique(k):
        sel = np.flatnonzero(k == kk)
        obj[sel] = 1 + np.arange(len(sel)) * 3 + rng.integers(0, 3, len(sel))
    camcol = fp.camcol[k]
    field = fp.field[k]
    objid = make_objid(fp.run, camcol, field, obj)
    seeing_gal = fwhm[k]

    # Observed Petrosian radii: intrinsic radii added in quadrature with the PSF.
    r50_int = r50_disk * (1 - 0.45 * bt)
    conc = 2.3 + 1.0 * bt
    r90_int = conc * r50_int
    if sdss:
        # SDSS Petrosian radii are measured in circular apertures (Blanton et al. 2001,
        # AJ 121, 2358): smaller than the major-axis radii for inclined disks.
        r50_int = r50_int * np.interp(axis_ratio, _CIRC_Q, _CIRC_R50)
        r90_int = r90_int * np.interp(axis_ratio, _CIRC_Q, _CIRC_R90)
    psf50, psf90 = _app.SDSS_PETRO_PSF if sdss else (0.5, 0.91)
    petro_r50 = np.sqrt(r50_int ** 2 + (psf50 * seeing_gal) ** 2)
    petro_r90 = np.sqrt(r90_int ** 2 + (psf90 * seeing_gal) ** 2)

    # --- spectroscopy (SpecObj + MPA-JHU GalSpec*)
    idx = np.arange(n)
    plate = 1000 + idx // 640
    fiber = 1 + idx % 640
    mjd = 52000 + (plate * 7) % 2500
    specobjid = make_specobjid(plate, fiber, mjd)
    zerr = np.abs(rng.normal(1.5e-5, 0.5e-5, n)) + 2e-6
    rchi2 = np.clip(rng.normal(1.05, 0.15, n), 0.6, None)
    bad_fit = rng.random(n) < 0.02
    rchi2[bad_fit] = rng.uniform(2.05, 4.0, bad_fit.sum())

    logm, z = gal["logm"], gal["z"]
    logsfr = logm + gal["logssfr"]
    oh = gal["oh"]
    oh_err = np.clip(rng.normal(0.04, 0.01, n), 0.015, None)
    # MPA-JHU gives no metallicity for AGN/composites; a few such galaxies fail the query cut.
    agn = rng.random(n) < 0.03
    bptclass = np.where(agn, rng.choice([3, 4], n), 1).astype(np.int32)

    # Emission lines (1e-17 erg/s/cm^2): Halpha from SFR (Kennicutt 1998) in a 3" fibre,
    # [NII] from the N2 calibration of Pettini & Pagel (2004), Balmer decrement for A_V ~ 1.
    dl = np.interp(z, zg, dl_g)
    fib = np.clip(1.5 ** 2 / (petro_r50 ** 2 + 1.5 ** 2), 0.1, 0.9)
    ha = 10 ** logsfr / 7.9e-42 / (4 * np.pi * dl ** 2) * 1e17 * fib * 10 ** (-0.4 * 0.8)
    n2 = np.clip((oh - 8.90) / 0.57, -2.5, 0.0)
    nii = ha * 10 ** n2
    hb = ha / 2.86 / 1.35
    o3n2 = np.clip((8.73 - oh) / 0.32, -1.0, 2.5)
    oiii = hb * 10 ** (o3n2 + n2)
    oii = hb * 10 ** (0.6 - 1.2 * (oh - 8.7))
    line_err = 0.05 * ha + 3.0
    d4000 = np.clip(1.25 + 0.12 * (logm - 10) - 0.35 * (gal["logssfr"] - _ssfr_mean(logm))
                    + rng.normal(0, 0.05, n), 0.9, 2.0)

    t = QTable(meta={
        "description": "Simulated SDSS main-sample star-forming galaxies (astro_metallicity.mock)",
        "seed": seed, "n_fields": n_fields, "run": fp.run, "ra0": ra0, "dec0": dec0,
        "seeing": seeing, "fwhm_r": fwhm.tolist(), "galaxies_per_field": galaxies_per_field,
        "metallicity_scatter": metallicity_scatter, "cosmology": cosmology.name,
        "mass_error": mass_error, "dust_tau0": dust_tau0, "dust_sigma_sfr_ref": _SIGMA_SFR_REF,
        "dust_sigma_sfr_index": _SIGMA_SFR_INDEX, "dust_k": dict(DUST_K),
        "dust_law": "CCM89 R_V=3.1 at SDSS effective wavelengths; slab geometry; disk only",
    })
    if sdss:  # only in the preset, so the classic metadata stay as they were
        t.meta["appearance"] = appearance
    t["objid"] = objid
    t["ra"] = ra * u.deg
    t["dec"] = dec * u.deg
    t["run"] = np.full(n, fp.run, dtype=np.int32)
    t["rerun"] = np.full(n, RERUN, dtype=np.int32)
    t["camcol"] = camcol.astype(np.int32)
    t["field"] = field.astype(np.int32)
    t["obj"] = obj.astype(np.int32)
    t["type"] = np.full(n, 3, dtype=np.int32)
    t["specobjid"] = specobjid
    t["plate"] = plate.astype(np.int32)
    t["mjd"] = mjd.astype(np.int32)
    t["fiberID"] = fiber.astype(np.int32)
    t["z"] = z
    t["zErr"] = zerr
    t["rChi2"] = rchi2
    t["oh_p50"] = oh * u.dex
    t["oh_p2p5"] = (oh - 2 * oh_err) * u.dex
    t["oh_p16"] = (oh - oh_err) * u.dex
    t["oh_p84"] = (oh + oh_err) * u.dex
    t["oh_p97p5"] = (oh + 2 * oh_err) * u.dex
    for name in ("oh_p50", "oh_p2p5", "oh_p16", "oh_p84", "oh_p97p5"):
        t[name][agn] = -9999 * u.dex
    t["lgm_tot_p50"] = gal["logm_obs"] * u.dex
    t["logm_true"] = logm * u.dex
    t["sfr_tot_p50"] = logsfr * u.dex
    t["bptclass"] = bptclass
    t["d4000"] = d4000
    lines = {"h_alpha": ha, "h_beta": hb, "h_delta": 0.26 * hb, "oiii_5007": oiii,
             "nii_6584": nii, "oii_3726": 0.45 * oii, "oii_3729": 0.55 * oii}
    for line, flux in lines.items():  # GalSpecLine columns, in its order
        t[f"{line}_flux"] = flux
        t[f"{line}_flux_err"] = line_err
    t["petroR50_r"] = petro_r50 * u.arcsec
    t["petroR90_r"] = petro_r90 * u.arcsec
    for b in BANDS:
        t[f"modelMag_{b}"] = gal[f"mag_{b}"] * u.mag
        t[f"modelMagErr_{b}"] = gal[f"err_{b}"] * u.mag
    for b in BANDS:
        t[f"petroMag_{b}"] = (gal[f"mag_{b}"] + gal["petro_offset"]) * u.mag
    for b in BANDS:
        conc_term = 2.5 * np.log10(1 + (petro_r50 / (0.5 * seeing_gal)) ** 2)
        t[f"psfMag_{b}"] = (gal[f"mag_{b}"] + 0.3 + conc_term) * u.mag
        t[f"psfMagErr_{b}"] = 1.5 * gal[f"err_{b}"] * u.mag
    for b in BANDS:
        t[f"extinction_{b}"] = _EXT[b] * gal["ebv"] * u.mag
    for b in BANDS:
        t[f"bulge_frac_{b}"] = gal[f"bulge_frac_{b}"]
    t["tau_v"] = gal["tau_v"]
    for b in BANDS:
        t[f"dust_disk_{b}"] = gal[f"dust_disk_{b}"] * u.mag
    t["cos_i"] = gal["cos_i"]
    t["bulge_to_total"] = bt
    t["r50_kpc"] = gal["r50_kpc"] * u.kpc
    t["r50_disk"] = r50_disk * u.arcsec
    t["r50_bulge"] = r50_bulge * u.arcsec
    t["axis_ratio"] = axis_ratio
    t["bulge_axis_ratio"] = bulge_q
    t["pos_angle"] = pos_angle * u.deg
    t["seeing_r"] = seeing_gal * u.arcsec
    # Spiral arms of the disk (drawn last so the other columns do not depend on them):
    # stronger in galaxies above the star-forming sequence.
    dssfr = (logsfr - logm) - _ssfr_mean(logm)
    t["arm_amp"] = np.clip(0.4 + 0.25 * dssfr / 0.3 + rng.normal(0.0, 0.1, n), 0.05, 0.85)
    t["arm_m"] = rng.choice(np.array([2, 2, 2, 3, 4], dtype=np.int32), n)
    t["arm_pitch"] = rng.uniform(12.0, 30.0, n) * u.deg
    t["arm_phase"] = rng.uniform(0.0, 2 * np.pi, n) * u.rad
    if sdss:
        _add_sdss_structure(t, np.random.default_rng([seed, 2026, 11]), dssfr)
        _add_sdss_interactions(t, np.random.default_rng([seed, 2026, 12]), dssfr,
                               np.interp(np.asarray(t["z"]), zg, kpc_arcsec_g))
    return t


def _add_sdss_structure(t, rng, dssfr):
    """Columns of the "sdss" appearance: arms, lopsidedness, clumps, light offsets (in place).

    See ``astro_metallicity.mock.appearance`` for the references of each ingredient.
    """
    n = len(t)
    t["arm_m"] = rng.choice(np.array(_app.SDSS_ARM_M, dtype=np.int32), n)
    # lopsidedness A1 (Zaritsky & Rix 1997; Bournaud et al. 2005), capped
    t["lopsided_amp"] = np.clip(rng.exponential(_app.SDSS_LOPSIDED_MEAN, n), 0.0, 0.6)
    t["lopsided_phase"] = rng.uniform(0.0, 2 * np.pi, n) * u.rad
    # star-forming clumps: more, and brighter, above the star-forming sequence
    frac = _app.SDSS_CLUMP_FRACTION + _app.SDSS_CLUMP_SSFR_SLOPE * dssfr / 0.3
    t["clump_frac"] = np.clip(frac + rng.normal(0.0, 0.02, n), 0.0, 0.25)
    t["clump_n"] = rng.poisson(np.clip(4.0 + 3.0 * dssfr / 0.3, 1.0, None)).astype(np.int32)
    t["clump_seed"] = rng.integers(0, 2 ** 31, n, dtype=np.int64)
    # centre of the light relative to the catalogue position (arcsec, per axis)
    t["light_offset_ra"] = rng.normal(0.0, _app.SDSS_POSITION_SCATTER, n) * u.arcsec
    t["light_offset_dec"] = rng.normal(0.0, _app.SDSS_POSITION_SCATTER, n) * u.arcsec


def _add_sdss_interactions(t, rng, dssfr, kpc_per_arcsec):
    """Irregular and interacting galaxies of the "sdss" appearance (in place).

    Irregulars (column ``irregular``): no spiral arms, strongly lopsided, a large share
    of the light in many clumps; more common at low mass and high sSFR
    (`SDSS_IRREGULAR_FRACTION`). Interacting galaxies (``companion_dmag`` finite): a
    companion fainter by ``companion_dmag`` (r mag) at a projected distance
    ``companion_sep`` (arcsec) and position angle ``companion_pa`` (deg), both tidally
    distorted (`SDSS_INTERACTING_FRACTION`); `~astro_metallicity.mock.MockSky` renders
    the companion. Only the rendering columns change: the photometry, sizes and labels
    are the ones the relations gave.
    """
    n = len(t)
    logm = np.asarray(t["logm_true"].value)
    frac_irr = np.clip(_app.SDSS_IRREGULAR_FRACTION["base"]
                       + _app.SDSS_IRREGULAR_FRACTION["per_dex"] * (10.0 - logm)
                       + _app.SDSS_IRREGULAR_FRACTION["per_dssfr"] * dssfr / 0.3, 0.0, 0.5)
    irr = rng.random(n) < frac_irr
    t["irregular"] = irr
    a1 = np.asarray(t["lopsided_amp"])
    a1[irr] = rng.uniform(0.3, 0.6, irr.sum())
    t["arm_amp"][irr] = 0.0
    t["clump_frac"][irr] = rng.uniform(0.12, 0.25, irr.sum())
    t["clump_n"][irr] = rng.integers(6, 16, irr.sum())
    inter = rng.random(n) < _app.SDSS_INTERACTING_FRACTION
    dmag = np.full(n, np.nan)
    dmag[inter] = rng.uniform(0.0, 2.5, inter.sum())  # mass ratios 1:1 to 1:10
    sep_kpc = rng.uniform(*_app.SDSS_COMPANION_SEPARATION_KPC, n)
    t["companion_dmag"] = dmag * u.mag
    t["companion_sep"] = np.where(inter, sep_kpc / kpc_per_arcsec, np.nan) * u.arcsec
    t["companion_pa"] = np.where(inter, rng.uniform(0.0, 360.0, n), np.nan) * u.deg
    t["companion_seed"] = rng.integers(0, 2 ** 31, n, dtype=np.int64)
    # tidal distortion of the host: a strong m = 1 mode
    a1[inter] = np.maximum(a1[inter], rng.uniform(0.25, 0.5, inter.sum()))
    t["lopsided_amp"] = a1


def _photometry(rng, z, logm, distmod):
    """Rest-frame colours from mass and sSFR, M/L from Taylor et al. (2011), observed mags."""
    m = len(z)
    logssfr = _ssfr_mean(logm) + rng.normal(0.0, 0.3, m)
    dssfr = logssfr - _ssfr_mean(logm)
    gi = np.clip(0.78 + 0.16 * (logm - 10.0) - 0.25 * dssfr + rng.normal(0, 0.06, m), 0.2, 1.4)
    log_ml_i = -0.68 + 0.70 * gi
    abs_i = _MSUN_I - 2.5 * (logm - log_ml_i)
    colours = {"u": abs_i + gi + 1.1 + 0.8 * (gi - 0.75), "g": abs_i + gi,
               "r": abs_i + 0.36 * gi, "i": abs_i, "z": abs_i - (0.1 + 0.3 * (gi - 0.75))}
    out = {"z": z, "logm": logm, "logssfr": logssfr}
    for b, absmag in colours.items():
        mag = absmag + distmod + _KCORR[b] * z
        out[f"mag_{b}"] = mag
    out["petro_offset"] = 0.05 + rng.normal(0.0, 0.03, m)
    out["ebv"] = rng.uniform(0.01, 0.06, m)
    return out


def _median_r50_kpc(logm):
    """Median half-light radius (kpc) of late-type galaxies (Shen et al. 2003)."""
    mass = 10 ** np.asarray(logm, dtype=float)
    return 0.10 * mass ** 0.14 * (1 + mass / 3.98e10) ** (0.39 - 0.14)


def _disk_dimming(tau_v, cos_i, bt, band, weight=None):
    """Disk attenuation (mag) and observed/intrinsic flux of a bulge + dusty-disk galaxy."""
    wb = _BULGE_WEIGHT[band] if weight is None else weight
    fb = bt * wb / (bt * wb + (1 - bt))  # intrinsic bulge share of the flux
    a_disk = slab_attenuation(DUST_K[band] * tau_v, cos_i)
    return a_disk, fb, fb + (1 - fb) * 10 ** (-0.4 * a_disk)


def _typical_galaxy_dimming(logm, tau0, band, logm_min=_LOGM_MIN, weight=None):
    """Flux dimming (observed/intrinsic) by disk dust of a typical galaxy of mass ``logm``.

    Typical: MZR metallicity, mean specific SFR, median size and bulge fraction,
    median inclination (cos i = 0.5).
    """
    x = np.clip(logm, logm_min, _LOGM_MAX)
    sigma_sfr = 10 ** (x + _ssfr_mean(x)) / (2 * np.pi * _median_r50_kpc(x) ** 2)
    tau_v = tau0 * 10 ** (tremonti_mzr(x) - 8.9) * (sigma_sfr / _SIGMA_SFR_REF) ** _SIGMA_SFR_INDEX
    bt = np.clip(0.12 + 0.22 * (x - 10.0), 0.0, 0.7)
    return _disk_dimming(tau_v, 0.5, bt, band, weight)[2]


def _apply_disk_dust(gal, logsfr, tau0, bulge_weight=None, logm_min=_LOGM_MIN, typical_weight=None):
    """Dim the disks of ``gal`` (in place): observed mags, bulge fractions, errors, dust truth.

    The colour-mass locus and the M/L of `_photometry` (Taylor et al. 2011) describe
    observed, dust-reddened galaxies, so the dust is applied relative to a typical
    galaxy of the same mass: that galaxy keeps its locus magnitudes, and a disk
    dustier than typical (metal-richer, more inclined, denser) is redder and fainter,
    a less dusty one bluer and brighter.
    """
    sigma_sfr = 10 ** logsfr / (2 * np.pi * gal["r50_kpc"] ** 2)
    tau_v = tau0 * 10 ** (gal["oh"] - 8.9) * (sigma_sfr / _SIGMA_SFR_REF) ** _SIGMA_SFR_INDEX
    gal["tau_v"] = tau_v
    bt = gal["bt"]
    for b in BANDS:
        wb = None if bulge_weight is None else bulge_weight[b]
        a_disk, fb, total = _disk_dimming(tau_v, gal["cos_i"], bt, b, wb)
        gal[f"dust_disk_{b}"] = a_disk
        gal[f"bulge_frac_{b}"] = fb / total
        tw = None if typical_weight is None else typical_weight[b]
        typical = _typical_galaxy_dimming(gal["logm"], tau0, b, logm_min, tw)
        gal[f"mag_{b}"] = gal[f"mag_{b}"] - 2.5 * np.log10(total / typical)
        # errors from a sky-limited 53.9 s SDSS exposure (rough)
        gal[f"err_{b}"] = np.hypot(0.01, 0.02 * 10 ** (0.4 * (gal[f"mag_{b}"] - 18.0)) * (2.0 if b in "uz" else 1.0))


def _place(rng, fp, n, min_sep_arcsec):
    """Uniform positions on the unique (non-overlapping) part of the fields.

    Returns field index and pixel coordinates (0-based column, row). Galaxies closer
    than ``min_sep_arcsec`` to another are redrawn.
    """
    from scipy.spatial import cKDTree

    col_margin = (NCOL - COL_STEP) / 2.0
    row_margin = (NROW - ROW_STEP) / 2.0
    k = rng.integers(0, len(fp), n)
    col = rng.uniform(col_margin, NCOL - col_margin, n) - 0.5
    row = rng.uniform(row_margin, NROW - row_margin, n) - 0.5
    min_sep_px = min_sep_arcsec / PIXEL_SCALE
    for _ in range(50):
        # global plane coordinates in pixels (camcol across, field along)
        gx = (fp.camcol[k] - 1) * COL_STEP + col
        gy = (fp.field[k] - fp.field.min()) * ROW_STEP + row
        pairs = cKDTree(np.column_stack([gx, gy])).query_pairs(min_sep_px, output_type="ndarray")
        if len(pairs) == 0:
            break
        redo = np.unique(pairs[:, 1])
        k[redo] = rng.integers(0, len(fp), len(redo))
        col[redo] = rng.uniform(col_margin, NCOL - col_margin, len(redo)) - 0.5
        row[redo] = rng.uniform(row_margin, NROW - row_margin, len(redo)) - 0.5
    return k, col, row
