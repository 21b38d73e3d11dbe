"""Real SDSS sky behind simulated galaxies (source injection).

The realism benchmark (``benchmarks/sim_realism.py``) tells the simulated sky
from the real one at a CNN AUC of ~0.96 from the background alone: its noise,
faint sources, stars and sky-subtraction residuals are not SDSS's. Surveys
solve the same problem by injecting simulated sources into their real images
(Balrog: Suchyta et al. 2016, MNRAS 457, 786; Everett et al. 2022, ApJS 258,
15; SynPipe: Huang et al. 2018, PASJ 70, S6). `SkyFrames` holds real SDSS
corrected frames (*g*, *r*, *i* of one or more fields) that `MockSky` adds to
its noiseless galaxies, in place of its simulated sky noise, stars and faint
background galaxies (``MockSky(sky_frames=...)``): no stars or faint galaxies are
simulated then, in any band, and the *u* and *z* frames keep only the simulated
sky noise.

Each simulated field gets one real field, shifted by a random whole-pixel
offset (with wrap-around) and flipped at random, so that neighbouring cutouts
of a simulated field share their sky as they would in SDSS.
"""

import hashlib
from pathlib import Path

import numpy as np

from ._footprint import NCOL, NROW

__all__ = ["SkyFrames"]

#: Bands taken from real frames; the others keep the simulated sky noise.
SKY_BANDS = "gri"


def _read_frame(path):
    """Image, WCS and band of a corrected-frame file (`~astro_metallicity.acquire` parses it)."""
    from ..acquire._sdss import parse_frame
    from ..preprocess import header_wcs

    try:
        image, header = parse_frame(Path(path).read_bytes())
    except ValueError as exc:
        msg = f"{path}: not an SDSS corrected frame ({exc})"
        raise ValueError(msg) from None
    return image, header_wcs(header), header.get("FILTER", "").strip()


class SkyFrames:
    """Real SDSS corrected frames used as the sky of simulated fields.

    Parameters
    ----------
    paths : sequence of path-like
        SDSS corrected-frame files (``frame-{band}-{run}-{camcol}-{field}.fits[.bz2]``),
        one per band *g*, *r* and *i* of each field (the band is read from the
        ``FILTER`` keyword). The *g* and *i* images of a field are resampled onto
        its *r* frame's pixel grid (`reproject.reproject_interp`), as SkyServer
        aligns the bands of its colour images. A simulated field larger than the
        real one sees it repeated (wrapped around).

    Attributes
    ----------
    fields : list of dict
        Per real field: ``{band: float32 image}`` in nanomaggies per pixel, all
        on the *r* frame's grid, cut to the rectangle the three bands cover
        (a few rows fewer than a frame: the bands are offset along the scan).
    names : list of str
        The fields as ``"{run:06d}-{camcol}-{field:04d}"``, in the order of ``fields``.
    digest : str
        Short hash of the pixels (part of a `~astro_metallicity.mock.MockSDSS` URL token).

    Raises
    ------
    ValueError
        If a field lacks one of the *g*, *r*, *i* frames, a file is not an SDSS
        corrected frame (1489 x 2048 pixels, TAN WCS, ``NMGY``), or the bands of a
        field overlap on less than half a frame.
    """

    def __init__(self, paths):
        from reproject import reproject_interp

        by_field = {}
        for path in paths:
            image, wcs, band = _read_frame(path)
            field = "-".join(Path(path).name.split("-")[2:5]).split(".")[0]
            by_field.setdefault(field, {})[band] = (image, wcs)
        if not by_field:
            raise ValueError("no sky frames given")
        self.fields = []
        digest = hashlib.sha1()
        for field, bands in sorted(by_field.items()):
            missing = [b for b in SKY_BANDS if b not in bands]
            if missing:
                msg = f"field {field}: no frame for band(s) {', '.join(missing)} (need {SKY_BANDS})"
                raise ValueError(msg)
            r_image, r_wcs = bands["r"]
            aligned = {"r": r_image}
            covered = np.ones((NROW, NCOL), dtype=bool)
            for b in SKY_BANDS.replace("r", ""):
                image, footprint = reproject_interp(bands[b], r_wcs, shape_out=(NROW, NCOL),
                                                    order="bilinear")
                aligned[b] = image
                covered &= footprint > 0
            # The bands of a field are offset along the scan (the g frame of 3918/3/213 by ~9
            # rows): keep the rectangle all three cover, so that no band has blank strips.
            rows = np.flatnonzero(covered.mean(axis=1) > 0.99)
            cols = np.flatnonzero(covered.mean(axis=0) > 0.99)
            if len(rows) < NROW // 2 or len(cols) < NCOL // 2:
                msg = f"field {field}: the g, r and i frames overlap on less than half a frame"
                raise ValueError(msg)
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            inside = covered[box]
            for b in SKY_BANDS:
                image = np.where(inside, aligned[b][box], 0.0)
                aligned[b] = np.ascontiguousarray(image, dtype=np.float32)
                digest.update(aligned[b].tobytes())
            self.fields.append(aligned)
        self.names = sorted(by_field)
        self.digest = digest.hexdigest()[:12]

    def placement(self, seed, k):
        """Real field, offset and flips used for simulated field ``k`` of sky ``seed``."""
        rng = np.random.default_rng([int(seed), 29, int(k)])
        which = int(rng.integers(len(self.fields)))
        height, width = self.fields[which]["r"].shape
        dy, dx = int(rng.integers(height)), int(rng.integers(width))
        flip_y, flip_x = (bool(v) for v in rng.integers(2, size=2))
        return which, dy, dx, flip_y, flip_x

    def region(self, seed, k, band, region=None):
        """Real sky of simulated field ``k`` in ``band`` over ``region`` (nanomaggies per pixel).

        Parameters
        ----------
        seed : int
            Seed of the simulated sky.
        k : int
            Index of the simulated field.
        band : str
            One of ``"g"``, ``"r"``, ``"i"``.
        region : tuple of int, optional
            ``(x0, x1, y0, y1)`` in frame pixels (columns then rows, ends excluded);
            default the whole frame.

        Returns
        -------
        image : `~numpy.ndarray`
            ``float32`` array of shape ``(y1 - y0, x1 - x0)``.
        """
        x0, x1, y0, y1 = region if region is not None else (0, NCOL, 0, NROW)
        which, dy, dx, flip_y, flip_x = self.placement(seed, k)
        sky = self.fields[which][band]
        height, width = sky.shape
        rows = (np.arange(y0, y1) + dy) % height
        cols = (np.arange(x0, x1) + dx) % width
        if flip_y:
            rows = height - 1 - rows
        if flip_x:
            cols = width - 1 - cols
        return sky[np.ix_(rows, cols)]
