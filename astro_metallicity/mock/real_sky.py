"""Real SDSS sky behind simulated galaxies (source injection).

The realism benchmark (``benchmarks/sim_realism.py``) tells the simulated sky
from the real one at a CNN AUC of ~0.96 from the background alone: its noise,
faint sources, stars and sky-subtraction residuals are not SDSS's. Surveys
solve the same problem by injecting simulated sources into their real images
(Balrog: Suchyta et al. 2016, MNRAS 457, 786; Everett et al. 2022, ApJS 258,
15; SynPipe: Huang et al. 2018, PASJ 70, S6). `SkyFrames` holds real SDSS
corrected frames (*g*, *r*, *i* of one or more fields) that `MockSky` adds to
its noiseless galaxies, in place of its simulated sky noise, stars and faint
background galaxies (``MockSky(sky_frames=...)``).

Each simulated field gets one real field, shifted by a random whole-pixel
offset (with wrap-around) and flipped at random, so that neighbouring cutouts
of a simulated field share their sky as they would in SDSS.
"""

import bz2
import hashlib
import io
from pathlib import Path

import numpy as np

from ._footprint import NCOL, NROW

__all__ = ["SkyFrames"]

#: Bands taken from real frames; the simulated sky is kept for the others.
SKY_BANDS = "gri"


def _read_frame(path):
    from astropy.io import fits

    from ..preprocess import header_wcs

    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".bz2":
        data = bz2.decompress(data)
    with fits.open(io.BytesIO(data)) as hdul:
        image = np.asarray(hdul[0].data, dtype=np.float32)
        header = hdul[0].header
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
        aligns the bands of its colour images.

    Attributes
    ----------
    fields : list of dict
        Per real field: ``{band: float32 image}`` in nanomaggies per pixel, all
        on the *r* frame's grid.
    names : list of str
        The fields as ``"{run:06d}-{camcol}-{field:04d}"``, in the order of ``fields``.
    digest : str
        Short hash of the pixels (part of a `~astro_metallicity.mock.MockSDSS` URL token).

    Raises
    ------
    ValueError
        If a field lacks one of the *g*, *r*, *i* frames, or a frame is not
        1489 x 2048 pixels.
    """

    def __init__(self, paths):
        from reproject import reproject_interp

        by_field = {}
        for path in paths:
            image, wcs, band = _read_frame(path)
            if image.shape != (NROW, NCOL):
                msg = f"{path}: expected a {NROW} x {NCOL} SDSS frame, got {image.shape}"
                raise ValueError(msg)
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
            aligned = {}
            for b in SKY_BANDS:
                image, wcs = bands[b]
                if b != "r":
                    image, footprint = reproject_interp((image, wcs), r_wcs, shape_out=(NROW, NCOL),
                                                        order="bilinear")
                    # pixels the other band does not cover (a few columns at the ends)
                    image = np.where(footprint > 0, image, 0.0).astype(np.float32)
                aligned[b] = np.ascontiguousarray(image, dtype=np.float32)
                digest.update(aligned[b].tobytes())
            self.fields.append(aligned)
        self.names = sorted(by_field)
        self.digest = digest.hexdigest()[:12]

    def placement(self, seed, k):
        """Real field, offset and flips used for simulated field ``k`` of sky ``seed``."""
        rng = np.random.default_rng([int(seed), 29, int(k)])
        which = int(rng.integers(len(self.fields)))
        dy, dx = int(rng.integers(NROW)), int(rng.integers(NCOL))
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
        rows = (np.arange(y0, y1) + dy) % NROW
        cols = (np.arange(x0, x1) + dx) % NCOL
        if flip_y:
            rows = NROW - 1 - rows
        if flip_x:
            cols = NCOL - 1 - cols
        return self.fields[which][band][np.ix_(rows, cols)]
