"""Rendering of simulated SDSS corrected frames (``frame-{band}-{run}-{camcol}-{field}``).

Each galaxy is an exponential disk plus a de Vaucouleurs (Sersic n=4) bulge,
evaluated with sub-pixel oversampling on a local stamp, normalised to its
catalogue flux and convolved with a Moffat PSF (beta = 3) whose FWHM is the
seeing of the field in that band. Stars are Moffat point sources. The frame is
then given sky and Poisson + read noise of a 53.9 s SDSS exposure, expressed
in nanomaggies per pixel after sky subtraction, as in SDSS corrected frames.
"""

import math

import numpy as np

from ._footprint import BANDS, NCOL, NROW, PIXEL_SCALE, RERUN

__all__ = ["MOFFAT_BETA", "NOISE_TILE", "frame_hdulist", "moffat_kernel", "render_frame", "sersic_stamp"]

MOFFAT_BETA = 3.0
EXPTIME = 53.907456
#: Dark-sky surface brightness (AB mag/arcsec^2) per band (SDSS, Stoughton et al. 2002).
SKY_MAG = {"u": 22.1, "g": 21.9, "r": 20.9, "i": 20.2, "z": 18.9}
#: Calibration (nanomaggies per count) and gain (electrons per count), SDSS-like.
NMGY_PER_COUNT = {"u": 0.0105, "g": 0.00378, "r": 0.00511, "i": 0.00679, "z": 0.0331}
GAIN = {"u": 1.6, "g": 3.3, "r": 4.7, "i": 4.6, "z": 4.6}
READ_NOISE = {"u": 3.0, "g": 2.0, "r": 2.0, "i": 2.5, "z": 2.5}  # counts
#: Seeing FWHM in each band relative to r.
SEEING_RATIO = {"u": 1.15, "g": 1.07, "r": 1.0, "i": 0.95, "z": 0.93}


#: Contrast of spiral arms (young stars) relative to r: stronger in blue bands.
_ARM_BAND_FACTOR = {"u": 1.6, "g": 1.3, "r": 1.0, "i": 0.85, "z": 0.75}
#: Share of the disk light in star-forming clumps relative to r ("sdss" appearance): clumps
#: are young and blue (Guo et al. 2015, ApJ 800, 39).
_CLUMP_BAND_FACTOR = {"u": 2.0, "g": 1.5, "r": 1.0, "i": 0.8, "z": 0.7}


def _bn(n):
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def moffat_kernel(fwhm_px, *, beta=MOFFAT_BETA, size=None, center=(0.0, 0.0), oversample=3):
    """Moffat PSF image normalised to unit sum.

    Parameters
    ----------
    fwhm_px : float
        Full width at half maximum in pixels.
    beta : float, optional
        Moffat index.
    size : int, optional
        Odd side length; default ``2 * ceil(4 * fwhm_px) + 1``.
    center : tuple of float, optional
        Sub-pixel offset (x, y) of the source from the central pixel.
    oversample : int, optional
        Sub-pixel sampling per axis.

    Returns
    -------
    kernel : `~numpy.ndarray`
        ``float64`` array of shape ``(size, size)`` summing to one.
    """
    if size is None:
        size = 2 * math.ceil(4.0 * fwhm_px) + 1
    half = size // 2
    alpha = fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    grid = (np.arange(size) - half)[:, None] + sub[None, :]
    y = (grid.ravel() - center[1])[:, None]
    x = (grid.ravel() - center[0])[None, :]
    img = (1.0 + (x * x + y * y) / alpha ** 2) ** (-beta)
    img = img.reshape(size, oversample, size, oversample).mean(axis=(1, 3))
    return img / img.sum()


def sersic_stamp(shape, xc, yc, r_e, n, q, theta, oversample, arms=None, lopsided=None, lane=None):
    """Unit-sum Sersic profile on a stamp.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the stamp.
    xc, yc : float
        Centre in stamp pixel coordinates (0-based, pixel centres at integers).
    r_e : float
        Effective (half-light) radius along the major axis, pixels.
    n : float
        Sersic index.
    q : float
        Axis ratio b/a.
    theta : float
        Angle of the major axis from the +x axis, radians.
    oversample : int
        Sub-pixel samples per axis.
    arms : tuple, optional
        ``(m, amplitude, pitch_deg, phase)``: modulate the profile by
        ``1 + amplitude * cos(m (phi - ln(r / r_e) / tan(pitch) - phase))``
        (logarithmic spiral arms in the disk plane), faded out at the centre.
    lopsided : tuple, optional
        ``(a1, phase)``: an m = 1 mode, ``1 + a1(r) cos(phi - phase)`` with
        ``a1(r) = a1 min(r / r_e, 2)`` (lopsidedness growing outwards, capped at 0.9).
    lane : tuple, optional
        ``(tau, width, offset)``: a dust lane along the major axis, the profile
        multiplied by ``exp(-tau exp(-(y' - offset)^2 / (2 width^2)))`` with y' the
        distance (pixels) from the major axis.

    Returns
    -------
    stamp : `~numpy.ndarray`
        ``float64`` image summing to one.
    """
    ny, nx = shape

    def evaluate(xs, ys):
        c, s = math.cos(theta), math.sin(theta)
        xx = xs[None, :] * c + ys[:, None] * s
        yy = -xs[None, :] * s + ys[:, None] * c
        r = np.sqrt(xx * xx + (yy / q) ** 2) / r_e
        if n == 1:
            img = np.exp(-_bn(1) * r)
        else:
            img = np.exp(-_bn(n) * (r ** (1.0 / n) - 1.0))
        if arms is not None and arms[1] > 0:
            m, amp, pitch, phase = arms
            phi = np.arctan2(yy / q, xx)
            wind = np.log(np.maximum(r, 1e-3)) / math.tan(math.radians(pitch))
            img *= 1.0 + amp * (1.0 - np.exp(-(r / 0.6) ** 2)) * np.cos(m * (phi - wind - phase))
        if lopsided is not None and lopsided[0] > 0:
            a1, phase1 = lopsided
            phi = np.arctan2(yy / q, xx)
            img *= 1.0 + np.minimum(a1 * np.minimum(r, 2.0), 0.9) * np.cos(phi - phase1)
        if lane is not None and lane[0] > 0:
            tau, width, offset = lane
            img *= np.exp(-tau * np.exp(-0.5 * ((yy - offset) / width) ** 2))
        return img

    img = evaluate(np.arange(nx) - xc, np.arange(ny) - yc)
    if oversample > 1:
        # sub-pixel sampling where the profile curves fast: the central few r_e
        ix, iy = round(xc), round(yc)
        c = math.ceil(3.0 * r_e) + 2
        x0, x1 = max(ix - c, 0), min(ix + c + 1, nx)
        y0, y1 = max(iy - c, 0), min(iy + c + 1, ny)
        sub = (np.arange(oversample) + 0.5) / oversample - 0.5
        xs = (np.arange(x0, x1)[:, None] + sub[None, :]).ravel() - xc
        ys = (np.arange(y0, y1)[:, None] + sub[None, :]).ravel() - yc
        fine = evaluate(xs, ys).reshape(y1 - y0, oversample, x1 - x0, oversample).mean(axis=(1, 3))
        img[y0:y1, x0:x1] = fine
    total = img.sum()
    return img / total if total > 0 else img


def _add_stamp(image, stamp, x0, y0):
    """Add ``stamp`` into ``image`` with its [0, 0] pixel at column x0, row y0 (clipped)."""
    ny, nx = stamp.shape
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + nx, image.shape[1]), min(y0 + ny, image.shape[0])
    if ix1 <= ix0 or iy1 <= iy0:
        return
    image[iy0:iy1, ix0:ix1] += stamp[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]


def _galaxy_image(g, band, fwhm_px, psf):
    """PSF-convolved image of one galaxy (dict of scalars); returns stamp and origin offset."""
    from scipy.signal import fftconvolve

    flux = 10 ** (-0.4 * (g["mag"] - 22.5))
    fb = g["bulge_frac"]
    re_d = max(g["r50_disk"] / PIXEL_SCALE, 0.3)
    re_b = max(g["r50_bulge"] / PIXEL_SCALE, 0.2)
    theta = math.radians(g["pos_angle"])
    h = int(_galaxy_halfsize(g["r50_disk"], g["r50_bulge"]))
    xc, yc = g["x"], g["y"]
    ix, iy = round(xc), round(yc)
    size = 2 * h + 1
    cx, cy = h + (xc - ix), h + (yc - iy)
    os_d = int(min(max(math.ceil(6.0 / re_d), 1), 7))
    arms = None
    if "arm_amp" in g:
        amp = min(g["arm_amp"] * _ARM_BAND_FACTOR[band], 0.95)
        arms = (int(g["arm_m"]), amp, g["arm_pitch"], g["arm_phase"])
    lopsided = lane = None
    if "lopsided_amp" in g:  # the "sdss" appearance
        lopsided = (g["lopsided_amp"], g["lopsided_phase"])
        lane = _dust_lane(g, band, re_d)
    disk = sersic_stamp((size, size), cx, cy, re_d, 1, g["q"], theta, os_d, arms=arms,
                        lopsided=lopsided, lane=lane)
    if g.get("clump_n", 0) > 0 and g.get("clump_frac", 0) > 0:
        frac = min(g["clump_frac"] * _CLUMP_BAND_FACTOR[band], 0.5)
        clumps = _clump_stamp(size, cx, cy, re_d, g["q"], theta, int(g["clump_n"]), int(g["clump_seed"]))
        if clumps is not None:
            disk = (1.0 - frac) * disk + frac * clumps
    img = (1.0 - fb) * disk
    if fb > 0:
        hb = int(min(max(math.ceil(10.0 * re_b), 4), h))
        sb = 2 * hb + 1
        os_b = int(min(max(math.ceil(8.0 / re_b), 2), 9))
        bulge = sersic_stamp((sb, sb), hb + (xc - ix), hb + (yc - iy), re_b, 4, g["qb"], theta, os_b)
        img[h - hb:h + hb + 1, h - hb:h + hb + 1] += fb * bulge
    img = fftconvolve(img, psf, mode="full")
    kh = psf.shape[0] // 2
    return flux * img, ix - h - kh, iy - h - kh


def _dust_lane(g, band, re_d):
    """Dust-lane parameters ``(tau, width, offset)`` of an inclined disk ("sdss" appearance).

    The lane is the dust layer, thinner than the stars (``SDSS_DUST_LANE['height_ratio']``,
    Xilouris et al. 1999), seen through the disk's optical depth ``tau_v`` with the CCM89
    law: ``tau = 0.5 k_b tau_v (1 / cos i - 1)``, capped at ``SDSS_DUST_LANE['max_tau']``,
    and only for cos i < 0.5; it sits slightly to the near side of the major axis.
    """
    from .appearance import SDSS_DUST_LANE
    from .population import DUST_K

    cos_i = max(float(g.get("cos_i", 1.0)), 0.05)
    if cos_i >= 0.5 or "tau_v" not in g:
        return None
    tau = min(0.5 * DUST_K[band] * float(g["tau_v"]) * (1.0 / cos_i - 1.0), SDSS_DUST_LANE["max_tau"])
    tau *= (0.5 - cos_i) / 0.5
    width = max(SDSS_DUST_LANE["height_ratio"] * g["q"] * re_d, 0.5)
    return tau, width, 0.5 * width


def _clump_stamp(size, cx, cy, re_d, q, theta, n, seed):
    """Unit-sum image of ``n`` point-like clumps on an exponential disk (projected), or None."""
    rng = np.random.default_rng(seed)
    rad = rng.gamma(2.0, re_d / _bn(1), n)  # radii of light of an exponential disk
    ang = rng.uniform(0.0, 2 * np.pi, n)
    w = rng.lognormal(0.0, 0.6, n)
    xd, yd = rad * np.cos(ang), rad * np.sin(ang) * q
    c, s = math.cos(theta), math.sin(theta)
    x, y = cx + xd * c - yd * s, cy + xd * s + yd * c
    img = np.zeros((size, size))
    ix, iy = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - ix, y - iy
    for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        jx, jy = ix + dx, iy + dy
        ok = (jx >= 0) & (jx < size) & (jy >= 0) & (jy < size)
        np.add.at(img, (jy[ok], jx[ok]), (w * wt)[ok])
    total = img.sum()
    return img / total if total > 0 else None


def _galaxy_halfsize(r50_disk, r50_bulge):
    """Half-size (pixels) of the stamp on which a galaxy's profile is evaluated."""
    re_d = np.maximum(np.asarray(r50_disk) / PIXEL_SCALE, 0.3)
    re_b = np.maximum(np.asarray(r50_bulge) / PIXEL_SCALE, 0.2)
    return np.minimum(np.maximum(np.maximum(np.ceil(6.0 * re_d), np.ceil(10.0 * re_b)), 6), 160).astype(int)


#: Side of the square tiles of independent noise (so any region renders identically).
NOISE_TILE = 128


def render_frame(galaxies, stars, band, *, wcs, fwhm_arcsec, sky_nmgy, noise_seed, noise=True,
                 region=None):
    """Render one corrected frame, or a rectangular region of it.

    A region is bit-identical to the same pixels of the full frame: sources are
    added in the same order and the noise is drawn per `NOISE_TILE` tile from a
    generator seeded by ``noise_seed`` and the tile position.

    Parameters
    ----------
    galaxies : dict of `~numpy.ndarray`
        Per-galaxy ``ra``, ``dec`` (deg), ``mag`` (AB, this band), ``bulge_frac``,
        ``r50_disk``, ``r50_bulge`` (arcsec), ``q``, ``qb``, ``pos_angle`` (deg; the
        major axis angle east of north).
    stars : dict of `~numpy.ndarray`
        ``ra``, ``dec`` (deg) and ``mag`` of point sources.
    band : str
        One of ``ugriz``.
    wcs : `~astropy.wcs.WCS`
        WCS of the frame.
    fwhm_arcsec : float
        PSF FWHM in this band.
    sky_nmgy : float
        Sky level in nanomaggies per pixel (subtracted again; it sets the noise).
    noise_seed : sequence of int
        Seed of the noise of this frame.
    noise : bool, optional
        If False, return the noiseless image.
    region : tuple of int, optional
        ``(x0, x1, y0, y1)``: columns ``x0:x1`` and rows ``y0:y1`` of the frame.
        Default the whole frame.

    Returns
    -------
    image : `~numpy.ndarray`
        ``float32`` image in nanomaggies per pixel, sky subtracted; (1489, 2048)
        for the whole frame.
    """
    rx0, rx1, ry0, ry1 = (0, NCOL, 0, NROW) if region is None else (int(v) for v in region)
    if not (0 <= rx0 < rx1 <= NCOL and 0 <= ry0 < ry1 <= NROW):
        msg = f"region must lie within the 2048 x 1489 frame, got {region!r}"
        raise ValueError(msg)
    image = np.zeros((ry1 - ry0, rx1 - rx0), dtype=np.float64)
    fwhm_px = fwhm_arcsec / PIXEL_SCALE
    psf = moffat_kernel(fwhm_px)
    kh = psf.shape[0] // 2
    # Major axis at position angle PA east of north; in pixels north = +column (x),
    # east = +row (y) for these frames, so theta from +x is PA itself.
    if len(galaxies["ra"]):
        x, y = wcs.wcs_world2pix(galaxies["ra"], galaxies["dec"], 0)
        ext = _galaxy_halfsize(galaxies["r50_disk"], galaxies["r50_bulge"]) + kh + 1
        ix, iy = np.round(x), np.round(y)
        hit = ((ix + ext >= rx0) & (ix - ext < rx1) & (iy + ext >= ry0) & (iy - ext < ry1))
        for j in np.flatnonzero(hit):
            g = {k: v[j] for k, v in galaxies.items()}
            g["x"], g["y"] = float(x[j]), float(y[j])
            stamp, x0, y0 = _galaxy_image(g, band, fwhm_px, psf)
            _add_stamp(image, stamp, x0 - rx0, y0 - ry0)
    if len(stars["ra"]):
        x, y = wcs.wcs_world2pix(stars["ra"], stars["dec"], 0)
        hs = math.ceil(4.0 * fwhm_px) + np.where(stars["mag"] < 16, 8, 0)
        sx, sy = np.round(x), np.round(y)
        near = (sx + hs >= rx0) & (sx - hs < rx1) & (sy + hs >= ry0) & (sy - hs < ry1)
        for j in np.flatnonzero(near):
            h = int(hs[j])
            ix, iy = round(x[j]), round(y[j])
            flux = 10 ** (-0.4 * (stars["mag"][j] - 22.5))
            k = moffat_kernel(fwhm_px, size=2 * h + 1, center=(x[j] - ix, y[j] - iy))
            _add_stamp(image, flux * k, ix - h - rx0, iy - h - ry0)
    image = image.astype(np.float32)
    if noise:
        nmgy = NMGY_PER_COUNT[band]
        counts = (np.clip(image, 0, None) + np.float32(sky_nmgy)) / np.float32(nmgy)
        sigma = np.sqrt(counts / np.float32(GAIN[band]) + np.float32(READ_NOISE[band] ** 2))
        sigma *= np.float32(nmgy)
        gauss = np.empty_like(image)
        t = NOISE_TILE
        for ty in range(ry0 // t, (ry1 - 1) // t + 1):
            for tx in range(rx0 // t, (rx1 - 1) // t + 1):
                tile = np.random.default_rng([*noise_seed, tx, ty]).standard_normal((t, t), dtype=np.float32)
                ya, yb = max(ry0, ty * t), min(ry1, (ty + 1) * t)
                xa, xb = max(rx0, tx * t), min(rx1, (tx + 1) * t)
                gauss[ya - ry0:yb - ry0, xa - rx0:xb - rx0] = tile[ya - ty * t:yb - ty * t, xa - tx * t:xb - tx * t]
        image += sigma * gauss
    return image


def _truncate_mantissa(image, bits=10):
    """Keep ``bits`` mantissa bits, as the SDSS FLOATCOMPRESS step does (helps bzip2)."""
    view = np.ascontiguousarray(image, dtype=np.float32).view(np.uint32)
    mask = np.uint32((0xFFFFFFFF << (23 - bits)) & 0xFFFFFFFF)
    return (view & mask).view(np.float32)


def frame_hdulist(image, band, *, wcs, run, camcol, field, sky_nmgy, mjd, fwhm_arcsec, airmass=1.2):
    """Wrap a rendered frame in the four-HDU layout of an SDSS corrected frame.

    Parameters
    ----------
    image : `~numpy.ndarray`
        ``float32`` (1489, 2048) frame in nanomaggies per pixel.
    band : str
        Filter name.
    wcs : `~astropy.wcs.WCS`
        Frame WCS.
    run, camcol, field : int
        Frame identifiers.
    sky_nmgy : float
        Sky level (nanomaggies per pixel) for the binned sky (HDU2).
    mjd : float
        Observation date.
    fwhm_arcsec : float
        Seeing (recorded in the header as ``SEEING``).
    airmass : float, optional
        Airmass for the astrometry table.

    Returns
    -------
    hdul : `~astropy.io.fits.HDUList`
        HDU0 image + header (FILTER, RUN, CAMCOL, FIELD, NMGY, BUNIT, TAN WCS),
        HDU1 calibration vector, HDU2 binned sky (ALLSKY, XINTERP, YINTERP),
        HDU3 astrometry (asTrans).
    """
    from astropy.io import fits
    from astropy.time import Time

    nmgy = NMGY_PER_COUNT[band]
    hdr = fits.Header()
    t = Time(mjd, format="mjd")
    ra_c, dec_c = wcs.wcs.crval
    cards = [
        ("TAI", round((mjd - 0.0) * 86400.0, 2), "1st row - Number of seconds since Nov 17 1858"),
        ("RA", float(ra_c), "1st row - Right ascension of telescope boresigh"),
        ("DEC", float(dec_c), "1st row - Declination of telescope boresight (d"),
        ("SPA", 90.0, "1st row - Camera col position angle wrt north ("),
        ("DATE-OBS", t.strftime("%Y-%m-%d"), "1st row - TAI date"),
        ("TAIHMS", t.strftime("%H:%M:%S.00"), "1st row - TAI time (HH:MM:SS.SS) (TAI-UT = appr"),
        ("MJD-OBS", float(math.floor(mjd)), "MJD at start of DATE-OBS (for WCS readers)"),
        ("ORIGIN", "SDSS", None),
        ("TELESCOP", "2.5m", None),
        ("TIMESYS", "TAI", None),
        ("RUN", int(run), "Run number"),
        ("FRAME", int(field), "Frame sequence number within the run"),
        ("CCDLOC", 10 * "rgiuz".index(band) + int(camcol) + 10, "Survey location of CCD (e.g., rowCol)"),
        ("STRIPE", 10, "Stripe index number (23 <--> eta=0)"),
        ("STRIP", "N", "Strip in the stripe being tracked."),
        ("FLAVOR", "science", "Flavor of this run"),
        ("OBSERVER", "mock", "Observer"),
        ("SYS_SCN", "mean", "System of the scan great circle (e.g., mean)"),
        ("EQNX_SCN", 2000.0, "Equinox of the scan great circle. (years)"),
        ("NODE", 95.0, "RA of the great circle's ascending node (deg)"),
        ("INCL", 0.0, "Great circle's inclination wrt cel. eq. (deg)"),
        ("OBJECT", "10 N", "e.g., 'stripe 50.6 degrees, north strip'"),
        ("EXPTIME", f"{EXPTIME:.6f}", "Exposure time (seconds)"),
        ("SYSTEM", "FK5", "System of the TCC coordinates (e.g., mean)"),
        ("CCDMODE", "DRIFT", "'STARING' or 'DRIFT'"),
        ("C_OBS", 26322, "CCD row clock rate (usec/row)"),
        ("COLBIN", 1, "Binning factor perpendicular to the columns"),
        ("ROWBIN", 1, "Binning factor perpendicular to the rows"),
        ("CAMROW", "rgiuz".index(band) + 1, "Row in the imaging camera"),
        ("BADLINES", 0, "Number of bad lines in frame"),
        ("EQUINOX", 2000.0, ""),
        ("SOFTBIAS", 1000, 'software "bias" added to all DN'),
        ("BUNIT", "nanomaggy", "1 nanomaggy = 3.631e-6 Jy"),
        ("FILTER", band, "filter used"),
        ("CAMCOL", int(camcol), "column in the imaging camera"),
        ("FIELD", int(field), "field number"),
        ("VERSION", "v5_6_3", None),
        ("RADESYS", "ICRS", "International Celestial Ref. System"),
    ]
    for key, value, comment in cards:
        hdr[key] = (value, comment) if comment is not None else value
    hdr.update(wcs.to_header())
    for key in ("WCSAXES", "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2", "MJDREF",
                "LATPOLE", "LONPOLE", "DATEREF", "MJDREFI", "MJDREFF"):
        hdr.remove(key, ignore_missing=True, remove_all=True)
    cd = wcs.wcs.cd
    hdr["CD1_1"] = (float(cd[0, 0]), "RA deg per column pixel")
    hdr["CD1_2"] = (float(cd[0, 1]), "RA deg per row pixel")
    hdr["CD2_1"] = (float(cd[1, 0]), "Dec deg per column pixel")
    hdr["CD2_2"] = (float(cd[1, 1]), "Dec deg per row pixel")
    hdr["NMGY"] = (nmgy, "Calibration factor [nMgy per count]")
    hdr["NMGYIVAR"] = (0.15, "Calibration factor inverse variance")
    hdr["SEEING"] = (round(float(fwhm_arcsec), 3), "PSF FWHM (arcsec) of the simulation")
    hdr["RERUN"] = (str(RERUN), "rerun")
    hdr["COMMENT"] = "Simulated frame from astro_metallicity.mock (not real SDSS data)"
    primary = fits.PrimaryHDU(data=_truncate_mantissa(image), header=hdr)

    calib = fits.ImageHDU(data=np.full(NCOL, nmgy, dtype=np.float32)
                          * (1.0 + 0.002 * np.cos(np.linspace(0, np.pi, NCOL))).astype(np.float32))

    allsky = np.full((1, 192, 256), sky_nmgy / nmgy, dtype=np.float32)
    xinterp = ((np.arange(NCOL) - 3.5) / 8.0).astype(np.float32)[None, :]
    yinterp = ((np.arange(NROW) + 4.5) / 8.0).astype(np.float32)[None, :]
    sky = fits.BinTableHDU.from_columns([
        fits.Column(name="ALLSKY", format="49152E", dim="(256, 192)", array=allsky),
        fits.Column(name="XINTERP", format="2048E", array=xinterp),
        fits.Column(name="YINTERP", format="1489E", array=yinterp),
    ])

    s = PIXEL_SCALE / 3600.0
    ra00, dec00 = wcs.wcs_pix2world([[0.0, 0.0]], 0)[0]
    astro = {
        "RUN": ("J", [run]), "RERUN": ("3A", [str(RERUN)]), "CAMCOL": ("J", [camcol]),
        "FILTER": ("A", [band]), "NODE": ("D", [95.0]), "INCL": ("D", [0.0]),
        "NAXIS": ("2J", [[NCOL, NROW]]), "FIELD": ("J", [field]),
        "A": ("D", [ra00 - 95.0]), "B": ("D", [s]), "C": ("D", [0.0]),
        "D": ("D", [dec00]), "E": ("D", [0.0]), "F": ("D", [s]),
        "DROW0": ("D", [0.0]), "DROW1": ("D", [0.0]), "DROW2": ("D", [0.0]), "DROW3": ("D", [0.0]),
        "DCOL0": ("D", [0.0]), "DCOL1": ("D", [0.0]), "DCOL2": ("D", [0.0]), "DCOL3": ("D", [0.0]),
        "CSROW": ("D", [0.0]), "CSCOL": ("D", [0.0]), "CCROW": ("D", [0.0]), "CCCOL": ("D", [0.0]),
        "RICUT": ("D", [100.0]), "MJD": ("D", [mjd]), "AIRMASS": ("D", [airmass]),
        "MUERR": ("E", [0.05]), "NUERR": ("E", [0.05]),
    }
    astrans = fits.BinTableHDU.from_columns(
        [fits.Column(name=k, format=f, array=np.array(v)) for k, (f, v) in astro.items()])
    return fits.HDUList([primary, calib, sky, astrans])


def _band_index(band):
    """Index of ``band`` in ``ugriz``; raises a ValueError naming valid bands."""
    if band not in BANDS or len(band) != 1:
        msg = f"band must be one of {list(BANDS)}, got {band!r}"
        raise ValueError(msg)
    return BANDS.index(band)
