"""`MockSky`: simulated catalogue plus lazily rendered, cached SDSS frames and cutouts."""

import bz2
import functools
import io
import math
import weakref

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord, search_around_sky

from . import appearance as _app
from ._footprint import BANDS, NCOL, NROW, PIXEL_SCALE, RERUN, Footprint, make_objid, wrap_ra
from .population import simulate_galaxies
from .real_sky import SKY_BANDS, SkyFrames
from .render import SEEING_RATIO, SKY_MAG, _band_index, frame_hdulist, render_frame

__all__ = ["MockSky"]

_STAR_COLOURS = {"u": 1.3, "g": 0.45, "r": 0.0, "i": -0.15, "z": -0.22}  # m_b - m_r at g-r=0.45
_FRAME_PARAMETERS = """Parameters
        ----------
        run, camcol, field : int
            Frame identifiers.
        band : str
            One of ``ugriz``."""


def _frame_doc(method):
    """Put the parameters of a frame (run, camcol, field, band) into a method's docstring."""
    method.__doc__ = method.__doc__.replace("{frame_parameters}", _FRAME_PARAMETERS)
    return method


def _uniform_positions(rng, footprint, n):
    """RA and Dec (deg) of ``n`` points spread uniformly over the fields of ``footprint``."""
    k = rng.integers(0, len(footprint), n)
    col = rng.uniform(0, NCOL, n) - 0.5
    row = rng.uniform(0, NROW, n) - 0.5
    ra, dec = np.empty(n), np.empty(n)
    for field in np.unique(k):
        sel = k == field
        ra[sel], dec[sel] = footprint.wcs(field).wcs_pix2world(col[sel], row[sel], 0)
    return ra, dec


class MockSky:
    """A simulated SDSS sky: truth catalogue, frames and ImgCutout-style JPEGs.

    Frames are rendered on first use and kept in a bounded in-memory cache,
    so creating a sky of 10,000 galaxies takes about a second.

    Parameters
    ----------
    n_galaxies : int, optional
        Number of galaxies (ignored if ``catalog`` is given).
    seed : int, optional
        Seed for the catalogue, the stars and the noise.
    catalog : `~astropy.table.QTable`, optional
        A catalogue from `~astro_metallicity.mock.simulate_galaxies`.
    stars_per_field : float, optional
        Mean number of stars (14 < r < 21) per field; default 40, or
        ``astro_metallicity.mock.appearance.SDSS_STARS_PER_FIELD`` for
        ``appearance="sdss"``.
    max_cached_frames : int, optional
        How many rendered single-band frames to keep in memory (12 MB each).
    noise : bool, optional
        Add sky, Poisson and read noise (default True).
    appearance : {"classic", "sdss"}, optional
        ``"classic"``: the original simulation, unchanged (the previous bundled
        model was trained on it; the bundled model's pretraining sky is ``"sdss"``). ``"sdss"``: the realistic preset of
        ``astro_metallicity.mock.appearance`` (galaxy structure in the catalogue,
        more stars, faint background galaxies, SkyServer-like JPEG sky and
        double compression). Default: the catalogue's (``catalog.meta``), else
        ``"classic"``.
    sky_frames : sequence of path-like or `~astro_metallicity.mock.SkyFrames`, optional
        Real SDSS corrected frames (*g*, *r*, *i* of one or more fields): their
        pixels are added to the noiseless galaxies of the *g*, *r* and *i* frames
        in place of the simulated sky noise, stars and faint background galaxies
        (source injection, see `~astro_metallicity.mock.SkyFrames`); no stars or
        faint galaxies are simulated then, in any band, and the *u* and *z*
        frames keep the simulated sky noise. With ``noise=False`` the real frames
        are not added either. Default: none.
    **kwargs
        Passed to `~astro_metallicity.mock.simulate_galaxies`.
    """

    def __init__(self, n_galaxies=1000, seed=0, *, catalog=None, stars_per_field=None,
                 max_cached_frames=36, noise=True, appearance=None, sky_frames=None, **kwargs):
        if appearance is None:
            appearance = "classic" if catalog is None else catalog.meta.get("appearance", "classic")
        self.appearance = _app.check_appearance(appearance)
        sdss = appearance == "sdss"
        if sky_frames is not None and not isinstance(sky_frames, SkyFrames):
            sky_frames = SkyFrames(sky_frames)
        self.sky_frames = sky_frames
        if stars_per_field is None and sky_frames is not None:
            stars_per_field = 0  # real frames bring their own stars and faint galaxies
        elif stars_per_field is None:
            stars_per_field = _app.SDSS_STARS_PER_FIELD if sdss else 40
        if catalog is None:
            catalog = simulate_galaxies(n_galaxies, seed, appearance=appearance, **kwargs)
        self.catalog = catalog
        self.seed = int(catalog.meta.get("seed", seed))
        meta = catalog.meta
        self.footprint = Footprint(meta["n_fields"], run=meta["run"], ra0=meta["ra0"], dec0=meta["dec0"])
        self.fwhm_r = np.asarray(meta["fwhm_r"], dtype=float)
        self.noise = noise
        fp = self.footprint
        rng = np.random.default_rng([self.seed, 7])
        nf = len(fp)
        # per field and band: sub-pixel WCS offsets, sky brightness, MJD
        self._offsets = rng.uniform(-0.45, 0.45, (nf, len(BANDS), 2))
        self._offsets[:, BANDS.index("r")] = 0.0
        self._sky_dmag = rng.normal(0.0, 0.15, (nf, len(BANDS)))
        self._mjd = 52000.0 + rng.uniform(0, 3000) + np.arange(nf) * 0.0  # one night per run
        # stars, uniform over the footprint
        nstar = rng.poisson(stars_per_field * nf)
        sra, sdec = _uniform_positions(rng, fp, nstar)
        rmag = 21.0 - rng.exponential(1.8, nstar)
        rmag = np.clip(rmag, 13.5, 21.0)
        gr = rng.uniform(0.2, 1.4, nstar)
        self.stars = {"ra": sra, "dec": sdec, "r": rmag}
        for b in BANDS:
            self.stars[b] = rmag + _STAR_COLOURS[b] + (gr - 0.45) * {"u": 2.0, "g": 1.0, "r": 0.0,
                                                                       "i": -0.4, "z": -0.6}[b]
        # galaxy arrays for fast rendering
        c = catalog
        self._gal = {
            "ra": np.asarray(c["ra"].to_value(u.deg)), "dec": np.asarray(c["dec"].to_value(u.deg)),
            "r50_disk": np.asarray(c["r50_disk"].to_value(u.arcsec)),
            "r50_bulge": np.asarray(c["r50_bulge"].to_value(u.arcsec)),
            "q": np.asarray(c["axis_ratio"]), "qb": np.asarray(c["bulge_axis_ratio"]),
            "pos_angle": np.asarray(c["pos_angle"].to_value(u.deg)),
        }
        if "arm_amp" in c.colnames:
            self._gal.update(arm_amp=np.asarray(c["arm_amp"]), arm_m=np.asarray(c["arm_m"]),
                             arm_pitch=np.asarray(c["arm_pitch"].to_value(u.deg)),
                             arm_phase=np.asarray(c["arm_phase"].to_value(u.rad)))
        self._mags = {b: np.asarray(c[f"modelMag_{b}"].to_value(u.mag)) for b in BANDS}
        self._bulge_frac = {b: np.asarray(c[f"bulge_frac_{b}"]) for b in BANDS}
        # what is rendered: the catalogue galaxies (at the centre of their light) and, for
        # the "sdss" appearance, faint background galaxies that are not in the catalogue
        self._render_gal, self._render_mags, self._render_bulge_frac = self._gal, self._mags, self._bulge_frac
        if sdss:
            self._setup_sdss_rendering()
        # Per-instance LRU caches (lru_cache on methods would be shared by all skies and
        # keep them alive). The weak mapping sees the frames the cache still holds, so
        # cutouts can use a rendered frame without rendering one.
        self._frames = functools.lru_cache(maxsize=max_cached_frames)(self._render_frame)
        self._cached_frames = weakref.WeakValueDictionary()
        self._files = functools.lru_cache(maxsize=max(4, max_cached_frames // 3))(self._frame_bytes)
        # astropy caches the KD-tree of the catalogue on this SkyCoord, built at the first match
        self._coords = SkyCoord(self._gal["ra"], self._gal["dec"], unit="deg")

    def _setup_sdss_rendering(self):
        """Render arrays of the "sdss" appearance (see ``astro_metallicity.mock.appearance``)."""
        c = self.catalog
        g = dict(self._gal)
        extra = {"lopsided_amp": 0.0, "lopsided_phase": 0.0, "clump_n": 0, "clump_frac": 0.0,
                 "clump_seed": 0, "tau_v": 0.0, "cos_i": 1.0}
        for name, fill in extra.items():
            if name in c.colnames:
                g[name] = np.asarray(getattr(c[name], "value", c[name]))
            else:
                g[name] = np.full(len(c), fill)
        if "light_offset_ra" in c.colnames:
            cosd = np.cos(np.deg2rad(g["dec"]))
            g["ra"] = (g["ra"] + c["light_offset_ra"].to_value(u.arcsec) / 3600.0 / cosd) % 360.0
            g["dec"] = g["dec"] + c["light_offset_dec"].to_value(u.arcsec) / 3600.0
        if "arm_amp" not in g:
            g.update(arm_amp=np.zeros(len(c)), arm_m=np.full(len(c), 2), arm_pitch=np.full(len(c), 20.0),
                     arm_phase=np.zeros(len(c)))
        # field-to-field sky: brightness (noise) and the residual level of the sky
        # subtraction, which the JPEG pedestal stands for
        fp = self.footprint
        var = np.random.default_rng([self.seed, 7, 2027])
        self._sky_dmag = self._sky_dmag + var.normal(0.0, _app.SDSS_SKY_VARIATION["sky_mag"], len(fp))[:, None]
        self._pedestal_factor = np.exp(var.normal(0.0, _app.SDSS_SKY_VARIATION["pedestal"], len(fp)))
        mags, bfrac = dict(self._mags), dict(self._bulge_frac)
        if "companion_dmag" in c.colnames:
            g, mags, bfrac = self._add_companions(g, mags, bfrac, extra)
        # faint background galaxies (17.8 < r < 22), not in the catalogue
        fp = self.footprint
        rng = np.random.default_rng([self.seed, 7, 2026])
        nf = len(fp)
        nbg = rng.poisson(_app.SDSS_BACKGROUND_GALAXIES * nf) if self.sky_frames is None else 0
        if nbg:
            bra, bdec = _uniform_positions(rng, fp, nbg)
            # number counts dN/dm ~ 10^(0.45 m) (Yasuda et al. 2001) between 17.8 and 22
            a = 0.45 * math.log(10)
            uu = rng.random(nbg)
            rmag = np.log(math.exp(a * 17.8) + uu * (math.exp(a * 22.0) - math.exp(a * 17.8))) / a
            red = rng.random(nbg) < 0.4
            gr = np.where(red, rng.normal(1.2, 0.15, nbg), rng.normal(0.6, 0.2, nbg))
            ri = np.where(red, rng.normal(0.5, 0.1, nbg), rng.normal(0.3, 0.1, nbg))
            colour = {"u": gr * 1.8 + 0.6, "g": gr, "r": 0.0 * gr, "i": -ri, "z": -1.5 * ri}
            r50 = 1.6 * 10 ** (-0.12 * (rmag - 18.0)) * np.exp(rng.normal(0.0, 0.3, nbg))
            cos_i = rng.random(nbg)
            q = np.sqrt((1 - 0.2 ** 2) * cos_i ** 2 + 0.2 ** 2)
            bt = np.where(red, 0.6, 0.15)
            bg = {"ra": bra % 360.0, "dec": bdec, "r50_disk": r50, "r50_bulge": 0.35 * r50, "q": q,
                  "qb": np.maximum(q, 0.7), "pos_angle": rng.uniform(0, 180, nbg),
                  "arm_amp": np.zeros(nbg), "arm_m": np.full(nbg, 2), "arm_pitch": np.full(nbg, 20.0),
                  "arm_phase": np.zeros(nbg)}
            bg.update({name: np.full(nbg, fill) for name, fill in extra.items()})
            g = {name: np.concatenate([g[name], bg[name]]) for name in g}
            for b in BANDS:
                mags[b] = np.concatenate([mags[b], rmag + colour[b]])
                bfrac[b] = np.concatenate([bfrac[b], bt])
        self._render_gal, self._render_mags, self._render_bulge_frac = g, mags, bfrac

    def _add_companions(self, g, mags, bfrac, extra):
        """Render arrays with the interacting companions of the "sdss" catalogue appended."""
        c = self.catalog
        dmag = c["companion_dmag"].to_value(u.mag)
        host = np.flatnonzero(np.isfinite(dmag))
        if len(host) == 0:
            return g, mags, bfrac
        n = len(host)
        rng = np.random.default_rng(np.asarray(c["companion_seed"])[host].tolist() + [self.seed, 31])
        sep = c["companion_sep"].to_value(u.arcsec)[host] / 3600.0
        pa = np.deg2rad(c["companion_pa"].to_value(u.deg)[host])
        cosd = np.cos(np.deg2rad(g["dec"][host]))
        # sizes of disks scale roughly as L^0.25 at these masses (Shen et al. 2003)
        size = 10 ** (-0.1 * dmag[host])
        cos_i = rng.random(n)
        q0 = _app.SDSS_DISK_THICKNESS
        q = np.sqrt((1 - q0 ** 2) * cos_i ** 2 + q0 ** 2)
        comp = {"ra": (g["ra"][host] + sep * np.sin(pa) / cosd) % 360.0,
                "dec": g["dec"][host] + sep * np.cos(pa),
                "r50_disk": g["r50_disk"][host] * size, "r50_bulge": g["r50_bulge"][host] * size,
                "q": q, "qb": np.maximum(q, 0.6), "pos_angle": rng.uniform(0.0, 180.0, n),
                "arm_amp": rng.uniform(0.2, 0.5, n), "arm_m": rng.choice(np.array(_app.SDSS_ARM_M), n),
                "arm_pitch": rng.uniform(12.0, 30.0, n), "arm_phase": rng.uniform(0.0, 2 * np.pi, n),
                "lopsided_amp": rng.uniform(0.3, 0.6, n), "lopsided_phase": rng.uniform(0.0, 2 * np.pi, n),
                "clump_n": rng.integers(4, 11, n), "clump_frac": rng.uniform(0.1, 0.25, n),
                "clump_seed": rng.integers(0, 2 ** 31, n), "tau_v": g["tau_v"][host], "cos_i": cos_i}
        g = {name: np.concatenate([g[name], np.asarray(comp[name], dtype=g[name].dtype)]) for name in g}
        mags = {b: np.concatenate([mags[b], mags[b][host] + dmag[host]]) for b in BANDS}
        bfrac = {b: np.concatenate([bfrac[b], bfrac[b][host]]) for b in BANDS}
        return g, mags, bfrac

    # ----------------------------------------------------------------- catalogue
    def sql_columns(self):
        """Catalogue columns for the mock SkyServer (lower-case name -> plain array).

        Returns
        -------
        columns : dict
        """
        if getattr(self, "_sql_columns", None) is None:
            c = self.catalog
            n = len(c)
            cols = {}
            for name in c.colnames:
                value = c[name]
                cols[name.lower()] = np.asarray(getattr(value, "value", value))
            for b in BANDS:
                cols[f"dered_{b}"] = cols[f"modelmag_{b}"] - cols[f"extinction_{b}"]
            cols["_one"] = np.ones(n, dtype=np.int32)
            cols["_zero"] = np.zeros(n, dtype=np.int32)
            cols["_class"] = np.full(n, "GALAXY", dtype=object)
            cols["_subclass"] = np.where(cols["bptclass"] == 1, "STARFORMING", "AGN").astype(object)
            cols["_run2d"] = np.full(n, "26", dtype=object)
            cols["_release"] = np.full(n, "dr8", dtype=object)
            cols["_veldisp"] = 40.0 + 60.0 * np.clip(cols["lgm_tot_p50"] - 9.0, 0, None)
            cols["_veldisperr"] = 0.1 * cols["_veldisp"] + 5.0
            cols["_d4000_err"] = np.full(n, 0.03)
            self._sql_columns = cols
        return self._sql_columns

    def match(self, ra, dec, radius_arcsec, nearest=True):
        """Catalogue galaxies within a radius of each position.

        Parameters
        ----------
        ra, dec : array-like
            Positions in degrees.
        radius_arcsec : float
            Search radius.
        nearest : bool, optional
            Return only the nearest galaxy of each position.

        Returns
        -------
        up_index, rows, distance : `~numpy.ndarray`
            Index of the input position, catalogue row and distance (arcmin) of each match,
            ordered by input position then distance.
        """
        coords = SkyCoord(np.atleast_1d(np.asarray(ra, dtype=float)),
                          np.atleast_1d(np.asarray(dec, dtype=float)), unit="deg")
        if len(coords) == 0 or len(self._coords) == 0:
            empty = np.zeros(0, dtype=np.intp)
            return empty, empty, np.zeros(0)
        radius = radius_arcsec * u.arcsec
        if nearest:
            rows, sep, _ = coords.match_to_catalog_sky(self._coords)
            up = np.flatnonzero(sep <= radius)
            rows, sep = rows[up], sep[up]
        else:
            up, rows, sep, _ = search_around_sky(coords, self._coords, radius)
            order = np.lexsort((sep.deg, up))
            up, rows, sep = up[order], rows[order], sep[order]
        return up.astype(np.intp), rows.astype(np.intp), sep.to_value(u.arcmin)

    # ----------------------------------------------------------------- fields
    def field_table(self):
        """The SDSS ``Field`` table of the footprint (one row per field).

        Returns
        -------
        table : `~astropy.table.Table`
            run, rerun, camcol, field, fieldID, ra, dec, raMin, raMax, decMin, decMax, nObjects.
        """
        from astropy.table import Table

        fp = self.footprint
        counts = {}
        for cc, ff in zip(np.asarray(self.catalog["camcol"]), np.asarray(self.catalog["field"])):
            counts[(cc, ff)] = counts.get((cc, ff), 0) + 1
        t = Table()
        n = len(fp)
        t["fieldID"] = make_objid(fp.run, fp.camcol, fp.field, 0)  # SDSS: the objID bits, obj = 0
        t["run"] = np.full(n, fp.run, dtype=np.int32)
        t["rerun"] = np.full(n, RERUN, dtype=np.int32)
        t["camcol"] = fp.camcol.astype(np.int32)
        t["field"] = fp.field.astype(np.int32)
        t["ra"] = fp.ra_center
        t["dec"] = fp.dec_center
        t["raMin"] = fp.ra_min
        t["raMax"] = fp.ra_max
        t["decMin"] = fp.dec_min
        t["decMax"] = fp.dec_max
        t["mjd_r"] = self._mjd
        t["nObjects"] = np.array([counts.get((c, f), 0) for c, f in zip(fp.camcol, fp.field)])
        t["psfWidth_r"] = self.fwhm_r
        return t

    def _field_index(self, run, camcol, field):
        k = self.footprint.index(camcol, field) if int(run) == self.footprint.run else None
        if k is None:
            msg = (f"no field run={run} camcol={camcol} field={field} in this mock sky "
                   f"(run {self.footprint.run}, camcols 1-{self.footprint.ncamcol}, "
                   f"fields {self.footprint.field.min()}-{self.footprint.field.max()})")
            raise KeyError(msg)
        return k

    @_frame_doc
    def wcs(self, run, camcol, field, band):
        """TAN WCS of a frame (with the sub-pixel offset of that band).

        {frame_parameters}

        Returns
        -------
        wcs : `~astropy.wcs.WCS`
        """
        k = self._field_index(run, camcol, field)
        return self.footprint.wcs(k, self._offsets[k, _band_index(band)])

    @_frame_doc
    def fwhm(self, run, camcol, field, band):
        """Seeing FWHM of a frame.

        {frame_parameters}

        Returns
        -------
        fwhm : float
            PSF full width at half maximum in arcsec.
        """
        k = self._field_index(run, camcol, field)
        return float(self.fwhm_r[k] * SEEING_RATIO[band])

    @_frame_doc
    def sky_level(self, run, camcol, field, band):
        """Sky level of a frame (subtracted in the frame; it sets the noise).

        {frame_parameters}

        Returns
        -------
        sky : float
            Nanomaggies per pixel.
        """
        k = self._field_index(run, camcol, field)
        mu = SKY_MAG[band] + self._sky_dmag[k, _band_index(band)]
        return float(10 ** (-0.4 * (mu - 22.5)) * PIXEL_SCALE ** 2)

    def _sources(self, k, band):
        """Galaxies and stars that can touch field ``k`` (cached per field and band)."""
        key = (int(k), band)
        cache = self.__dict__.setdefault("_source_cache", {})
        if key not in cache:
            fp = self.footprint
            margin = 0.03
            cosd = math.cos(math.radians(fp.dec_center[k]))
            g = self._render_gal
            half = (fp.ra_max[k] - fp.ra_min[k]) / 2.0  # RA offsets wrapped, for fields at RA 0/360
            sel = ((np.abs(wrap_ra(g["ra"] - fp.ra_center[k])) < half + margin / cosd)
                   & (g["dec"] > fp.dec_min[k] - margin) & (g["dec"] < fp.dec_max[k] + margin))
            gals = {name: v[sel] for name, v in g.items()}
            gals["mag"] = self._render_mags[band][sel]
            gals["bulge_frac"] = self._render_bulge_frac[band][sel]
            s = self.stars
            ssel = ((np.abs(wrap_ra(s["ra"] - fp.ra_center[k])) < half + 0.01)
                    & (s["dec"] > fp.dec_min[k] - 0.01) & (s["dec"] < fp.dec_max[k] + 0.01))
            stars = {"ra": s["ra"][ssel], "dec": s["dec"][ssel], "mag": s[band][ssel]}
            run, camcol, field = fp.run, int(fp.camcol[k]), int(fp.field[k])
            cache[key] = {
                "galaxies": gals, "stars": stars, "band": band,
                "wcs": fp.wcs(k, self._offsets[k, _band_index(band)]),
                "fwhm_arcsec": self.fwhm(run, camcol, field, band),
                "sky_nmgy": self.sky_level(run, camcol, field, band),
                "noise_seed": [self.seed, int(run), camcol, field, _band_index(band)],
                "noise": self.noise}
        return cache[key]

    def _render_frame(self, k, band):
        img = self._render(k, band)
        img.flags.writeable = False
        self._cached_frames[(k, band)] = img
        return img

    def _render(self, k, band, region=None):
        sources = self._sources(k, band)
        if self.sky_frames is None or band not in SKY_BANDS or not self.noise:
            return render_frame(**sources, region=region)
        # the real frame carries the sky noise: only the galaxies' own photon noise is drawn
        image = render_frame(**{**sources, "sky_nmgy": 0.0}, region=region)
        return image + self.sky_frames.region(self.seed, k, band, region)

    @_frame_doc
    def frame(self, run, camcol, field, band):
        """Rendered frame image (cached).

        {frame_parameters}

        Returns
        -------
        image : `~numpy.ndarray`
            ``float32`` (1489, 2048) in nanomaggies per pixel, sky subtracted. Read only.
        """
        k = self._field_index(run, camcol, field)
        _band_index(band)
        return self._frame_k(k, band)

    def _frame_k(self, k, band):
        return self._frames(int(k), band)

    @_frame_doc
    def frame_hdulist(self, run, camcol, field, band):
        """The frame as an SDSS corrected-frame `~astropy.io.fits.HDUList` (four HDUs).

        {frame_parameters}

        Returns
        -------
        hdul : `~astropy.io.fits.HDUList`
        """
        k = self._field_index(run, camcol, field)
        image = self.frame(run, camcol, field, band)
        return frame_hdulist(image, band, wcs=self.wcs(run, camcol, field, band), run=run,
                             camcol=camcol, field=field, sky_nmgy=self.sky_level(run, camcol, field, band),
                             mjd=float(self._mjd[k]), fwhm_arcsec=self.fwhm(run, camcol, field, band))

    @_frame_doc
    def frame_file(self, run, camcol, field, band):
        """Bytes of ``frame-{band}-{run:06d}-{camcol}-{field:04d}.fits.bz2`` (cached).

        {frame_parameters}

        Returns
        -------
        data : bytes
            bzip2-compressed FITS file.
        """
        self._field_index(run, camcol, field)
        _band_index(band)
        return self._files(int(run), int(camcol), int(field), band)

    def _frame_bytes(self, run, camcol, field, band):
        buf = io.BytesIO()
        self.frame_hdulist(run, camcol, field, band).writeto(buf)
        return bz2.compress(buf.getvalue(), compresslevel=1)

    # ----------------------------------------------------------------- cutouts
    def cutout(self, ra, dec, scale, width, height, bands="gri"):
        """Resample the frames onto a north-up, east-left TAN grid.

        Parameters
        ----------
        ra, dec : float
            Centre in degrees.
        scale : float
            Pixel scale in arcsec per pixel.
        width, height : int
            Size in pixels.
        bands : str, optional
            Bands to return.

        Returns
        -------
        images : list of `~numpy.ndarray`
            One ``float32`` (height, width) image per band in nanomaggies per
            0.396" pixel (surface brightness is preserved); zero outside the survey.
        """
        from scipy.ndimage import map_coordinates

        ra, dec, scale = float(ra), float(dec), float(scale)
        width, height = int(width), int(height)
        if not (scale > 0 and math.isfinite(scale)):
            msg = f"scale must be a positive number of arcsec per pixel, got {scale!r}"
            raise ValueError(msg)
        if not (0 < width <= 2048 and 0 < height <= 2048):
            msg = f"width and height must be between 1 and 2048 pixels, got {width} x {height}"
            raise ValueError(msg)
        if not (-90 <= dec <= 90):
            msg = f"dec must be within [-90, 90] degrees, got {dec!r}"
            raise ValueError(msg)
        # average f x f sub-samples per output pixel when the output is coarser than the frames
        f = max(1, math.ceil(scale / PIXEL_SCALE - 0.25))
        sub = (np.arange(f) + 0.5) / f - 0.5
        px = (np.arange(width)[:, None] + sub[None, :]).ravel() - (width - 1) / 2.0
        py = (np.arange(height)[:, None] + sub[None, :]).ravel() - (height - 1) / 2.0
        # gnomonic projection about (ra, dec); x to the east is to the left
        xi = np.deg2rad(-px * scale / 3600.0)[None, :]
        eta = np.deg2rad(py * scale / 3600.0)[:, None]
        a0, d0 = math.radians(ra), math.radians(dec)
        denom = math.cos(d0) - eta * math.sin(d0)
        ra_g = a0 + np.arctan2(xi, denom)
        dec_g = np.arctan2(math.sin(d0) + eta * math.cos(d0), np.sqrt(xi ** 2 + denom ** 2))
        ra_g = np.rad2deg(ra_g) % 360.0
        dec_g = np.rad2deg(dec_g)
        shape = dec_g.shape
        ra_g = np.broadcast_to(ra_g, shape)
        # Frame pixel coordinates: TAN to TAN is affine to < 1e-3 px over a cutout, so fit an
        # affine map on a coarse grid of exact nodes (checked; exact everywhere otherwise).
        nodes = [np.unique(np.r_[0:n:max(n // 4, 1), n - 1]) for n in shape]
        node_i, node_j = np.meshgrid(*nodes, indexing="ij")
        design = np.column_stack([np.ones(node_i.size), node_i.ravel(), node_j.ravel()])
        sub_ra, sub_dec = ra_g[node_i, node_j].ravel(), dec_g[node_i, node_j].ravel()
        grid_i = np.arange(shape[0], dtype=float)[:, None]
        grid_j = np.arange(shape[1], dtype=float)[None, :]

        def frame_pixels(wcs):
            cx, cy = wcs.wcs_world2pix(sub_ra, sub_dec, 0)
            (ax, *_), (ay, *_) = (np.linalg.lstsq(design, v, rcond=None) for v in (cx, cy))
            if max(np.abs(design @ ax - cx).max(), np.abs(design @ ay - cy).max()) > 1e-3:
                xx, yy = wcs.wcs_world2pix(ra_g.ravel(), dec_g.ravel(), 0)
                return xx, yy
            return ((ax[0] + ax[1] * grid_i + ax[2] * grid_j).ravel(),
                    (ay[0] + ay[1] * grid_i + ay[2] * grid_j).ravel())

        n_points = ra_g.size
        radius = math.hypot(width, height) * f * scale / 3600.0 / 2.0 / f
        fields = self.footprint.fields_near(ra, dec, radius)
        out = []
        for band in bands:
            bi = _band_index(band)
            acc = np.zeros(n_points, dtype=np.float32)
            filled = np.zeros(n_points, dtype=bool)
            for k in fields:
                todo = np.flatnonzero(~filled)
                if len(todo) == 0:
                    break
                x, y = frame_pixels(self.footprint.wcs(k, self._offsets[k, bi]))
                x, y = x[todo], y[todo]
                inside = (x > -0.5) & (x < NCOL - 0.5) & (y > -0.5) & (y < NROW - 0.5)
                if not inside.any():
                    continue
                xs, ys = x[inside], y[inside]
                # pixels needed for bilinear interpolation; from the cached frame if there
                # is one, else render just that region (identical pixels, much faster)
                x0 = max(math.floor(xs.min()) - 1, 0)
                x1 = min(math.ceil(xs.max()) + 2, NCOL)
                y0 = max(math.floor(ys.min()) - 1, 0)
                y1 = min(math.ceil(ys.max()) + 2, NROW)
                full = self._cached_frames.get((int(k), band))
                if full is not None:
                    img = full[y0:y1, x0:x1]
                else:
                    img = self._render(k, band, region=(x0, x1, y0, y1))
                idx = todo[inside]
                order = _app.SDSS_CUTOUT_ORDER if self.appearance == "sdss" else 1
                acc[idx] = map_coordinates(img, [ys - y0, xs - x0], order=order, mode="nearest")
                filled[idx] = True
            img = acc.reshape(height, f, width, f).mean(axis=(1, 3)) if f > 1 else acc.reshape(height, width)
            out.append(img)
        return out

    def cutout_jpeg(self, ra, dec, scale=0.396, width=128, height=128, *, quality=None):
        """An ImgCutout-style *gri* JPEG, rendered from the (cached) frames.

        With ``appearance="sdss"`` a sky pedestal is added before the asinh
        stretch where the survey covers the cutout
        (``astro_metallicity.mock.appearance.SDSS_JPEG_SKY_PEDESTAL``) and the
        JPEG is compressed twice, at IJG quality
        ``astro_metallicity.mock.appearance.SDSS_JPEG_FIRST_QUALITY`` then
        ``quality``, on the same 8-px grid.

        Parameters
        ----------
        ra, dec : float
            Centre in degrees.
        scale : float, optional
            Arcsec per pixel.
        width, height : int, optional
            Size in pixels.
        quality : int, optional
            JPEG quality of the (final) save: default 75 (``"classic"``) or
            ``astro_metallicity.mock.appearance.SDSS_JPEG_QUALITY`` (92, ``"sdss"``).

        Returns
        -------
        data : bytes
            JPEG file contents.
        """
        from PIL import Image

        from ..preprocess import gri_composite

        sdss = self.appearance == "sdss"
        if quality is None:
            quality = _app.SDSS_JPEG_QUALITY if sdss else 75
        if sdss:
            return self._sdss_jpeg(ra, dec, float(scale), int(width), int(height), quality)
        g, r, i = self.cutout(ra, dec, scale, width, height, bands="gri")
        # make_lupton_rgb divides by the intensity everywhere, also where it is 0 (off the survey)
        with np.errstate(invalid="ignore", divide="ignore"):
            rgb = gri_composite(g, r, i)
        buf = io.BytesIO()
        Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality)
        return buf.getvalue()

    def _sdss_jpeg(self, ra, dec, scale, width, height, quality):
        """The "sdss" appearance JPEG (see ``astro_metallicity.mock.appearance``).

        The colour image is made at the native 0.396" scale (pedestal, asinh stretch,
        first JPEG compression, like the frame JPEGs SkyServer cuts from), then
        resampled onto the requested grid and saved again.
        """
        from PIL import Image
        from scipy.ndimage import map_coordinates

        from ..preprocess import gri_composite

        native = _app.SDSS_JPEG_NATIVE
        base = PIXEL_SCALE if native else scale
        wn = int(math.ceil(width * scale / base)) + 4 if native else width
        hn = int(math.ceil(height * scale / base)) + 4 if native else height
        sigma = _app.SDSS_BAND_REGISTRATION * PIXEL_SCALE / 3600.0  # deg
        fields = self.footprint.fields_near(ra, dec, 0.0)
        k = int(fields[0]) if len(fields) else -1
        if sigma > 0:
            # residual misregistration of the g and i images relative to r, per field
            off = np.random.default_rng([self.seed, 13, k + 1]).normal(0.0, sigma, (3, 2))
            off[1] = 0.0
            cosd = max(math.cos(math.radians(dec)), 1e-6)
            g, r, i = (self.cutout(ra + o[0] / cosd, dec + o[1], base, wn, hn, bands=b)[0]
                       for b, o in zip("gri", off))
        else:
            g, r, i = self.cutout(ra, dec, base, wn, hn, bands="gri")
        covered = (g != 0) | (r != 0) | (i != 0)
        if _app.SDSS_JPEG_SMOOTHING > 0:
            from scipy.ndimage import gaussian_filter

            g, r, i = (gaussian_filter(band, _app.SDSS_JPEG_SMOOTHING) for band in (g, r, i))
        factor = self._pedestal_factor[k] if k >= 0 else 1.0
        ped = {b: np.float32(v * factor) for b, v in _app.SDSS_JPEG_SKY_PEDESTAL.items()}
        g, r, i = (np.where(covered, band + ped[b], band) for band, b in ((g, "g"), (r, "r"), (i, "i")))
        with np.errstate(invalid="ignore", divide="ignore"):
            rgb = gri_composite(g, r, i, **_app.SDSS_JPEG_STRETCH)

        def compress(rgb, q):
            buf = io.BytesIO()
            Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=q)
            return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

        if native and _app.SDSS_JPEG_NATIVE_QUALITY:
            rgb = compress(rgb, _app.SDSS_JPEG_NATIVE_QUALITY)
        if native:
            f = max(1, math.ceil(scale / PIXEL_SCALE - 0.25))
            sub = (np.arange(f) + 0.5) / f - 0.5
            px = (np.arange(width)[:, None] + sub[None, :]).ravel() - (width - 1) / 2.0
            py = (np.arange(height)[:, None] + sub[None, :]).ravel() - (height - 1) / 2.0
            xs = (wn - 1) / 2.0 + px * scale / base
            ys = (hn - 1) / 2.0 + py * scale / base
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            chans = []
            for k in range(3):
                v = map_coordinates(rgb[..., k].astype(np.float32), [yy, xx], order=_app.SDSS_CUTOUT_ORDER,
                                    mode="nearest")
                if f > 1:
                    v = v.reshape(height, f, width, f).mean(axis=(1, 3))
                chans.append(v)
            rgb = np.clip(np.rint(np.stack(chans, axis=-1)), 0, 255).astype(np.uint8)
        rgb = compress(rgb, _app.SDSS_JPEG_FIRST_QUALITY)
        buf = io.BytesIO()
        Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
