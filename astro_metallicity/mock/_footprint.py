"""Geometry of the simulated survey: one drift-scan run, a few camcols, overlapping fields.

Each field is an SDSS-like corrected frame of 2048 columns x 1489 rows at
0.396 arcsec/px. Rows run along the scan (increasing right ascension) and
columns across it (increasing declination), as for an equatorial SDSS stripe.
Consecutive fields of a camcol overlap by 128 rows, as in SDSS; adjacent
camcols overlap by 64 columns so that the footprint has no gaps.
"""

import math

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.wcs import WCS

__all__ = []

PIXEL_SCALE = 0.396  # arcsec / px
NROW = 1489
NCOL = 2048
ROW_OVERLAP = 128
ROW_STEP = NROW - ROW_OVERLAP  # 1361 rows of unique sky per field
COL_STEP = 1984  # adjacent camcols overlap by 64 columns (SDSS leaves gaps the other strip fills)
FIRST_FIELD = 11
RERUN = 301
BANDS = "ugriz"


class Footprint:
    """Layout of fields: ``ncamcol`` camcols x ``nfield`` fields of one run."""

    def __init__(self, n_fields, *, run=4294, ra0=185.0, dec0=1.0):
        n_fields = max(1, int(n_fields))
        self.ncamcol = min(6, n_fields)
        self.nfield = math.ceil(n_fields / self.ncamcol)
        self.run = int(run)
        self.ra0 = float(ra0)
        self.dec0 = float(dec0)
        s = PIXEL_SCALE / 3600.0
        # Field table, camcol-major (one row per field).
        camcols, fields = np.meshgrid(np.arange(1, self.ncamcol + 1),
                                      np.arange(FIRST_FIELD, FIRST_FIELD + self.nfield),
                                      indexing="ij")
        self.camcol = camcols.ravel()
        self.field = fields.ravel()
        self.dec_center = self.dec0 + (self.camcol - (self.ncamcol + 1) / 2.0) * COL_STEP * s
        cosd = np.cos(np.deg2rad(self.dec_center))
        self.ra_center = self.ra0 + (self.field - FIRST_FIELD - (self.nfield - 1) / 2.0) * ROW_STEP * s / cosd
        self._index = {(int(c), int(f)): k for k, (c, f) in enumerate(zip(self.camcol, self.field))}
        # Bounding boxes of the full frames (for the Field table).
        half_ra = NROW / 2.0 * s / cosd
        half_dec = NCOL / 2.0 * s
        self.ra_min = self.ra_center - half_ra
        self.ra_max = self.ra_center + half_ra
        self.dec_min = self.dec_center - half_dec
        self.dec_max = self.dec_center + half_dec

    def __len__(self):
        return len(self.camcol)

    def index(self, camcol, field):
        """Row index of a field, or `None` if it is not part of the footprint."""
        return self._index.get((int(camcol), int(field)))

    def wcs(self, k, offset=(0.0, 0.0)):
        """TAN WCS of field ``k``; ``offset`` shifts the reference pixel (columns, rows)."""
        s = PIXEL_SCALE / 3600.0
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.cunit = ["deg", "deg"]
        w.wcs.crpix = [NCOL / 2.0 + 0.5 + offset[0], NROW / 2.0 + 0.5 + offset[1]]
        w.wcs.crval = [self.ra_center[k], self.dec_center[k]]
        # columns -> +dec, rows -> +ra: the orientation of an equatorial SDSS stripe.
        w.wcs.cd = [[0.0, s], [s, 0.0]]
        w.wcs.radesys = "ICRS"
        w.wcs.equinox = 2000.0
        return w

    def fields_near(self, ra, dec, radius_deg):
        """Indices of fields whose frame bounding box comes within ``radius_deg`` of (ra, dec)."""
        cosd = max(math.cos(math.radians(dec)), 1e-6)
        dra = radius_deg / cosd
        # RA offset from each field centre wrapped to [-180, 180): the field table may hold
        # raMin < 0 or raMax > 360 near RA 0 while positions are given in [0, 360)
        off = wrap_ra(ra - self.ra_center)
        half = (self.ra_max - self.ra_min) / 2.0
        sel = ((np.abs(off) < half + dra)
               & (self.dec_max + radius_deg > dec) & (self.dec_min - radius_deg < dec))
        idx = np.flatnonzero(sel)
        d2 = (off[idx] * cosd) ** 2 + (self.dec_center[idx] - dec) ** 2
        return idx[np.argsort(d2)]


def wrap_ra(dra):
    """RA difference(s) in degrees wrapped to [-180, 180)."""
    return Angle(dra, u.deg).wrap_at(180 * u.deg).deg


def make_objid(run, camcol, field, obj, rerun=RERUN, sky_version=2):
    """SDSS photometric objID from its parts (DR8+ bit layout)."""
    run, camcol, field, obj = (np.asarray(a, dtype=np.uint64) for a in (run, camcol, field, obj))
    return ((np.uint64(sky_version) << np.uint64(59)) | (np.uint64(rerun) << np.uint64(48))
            | (run << np.uint64(32)) | (camcol << np.uint64(29)) | (field << np.uint64(16)) | obj)


def make_specobjid(plate, fiber, mjd, run2d=26):
    """SDSS specObjID from plate, fiber, MJD and run2d (DR8+ bit layout)."""
    plate, fiber, mjd = (np.asarray(a, dtype=np.uint64) for a in (plate, fiber, mjd))
    return ((plate << np.uint64(50)) | (fiber << np.uint64(38))
            | ((mjd - np.uint64(50000)) << np.uint64(24)) | (np.uint64(run2d) << np.uint64(10)))
