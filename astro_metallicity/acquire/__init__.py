"""Acquisition: positions to *gri* colour cutouts from SDSS (the package's only network code).

`fetch_cutouts` follows one of two routes, both with a validating disk cache,
bounded concurrency and retries with exponential backoff:

``frames``
    Locate the fields around each target with the SkyServer SQL search (one
    query per group of nearby targets on the ``Field`` table, through
    astroquery; or the same query as ADQL through a `pyvo` TAP service when
    ``conf.tap_url`` is set), download the g, r, i corrected frames from the
    SAS into the cache (each frame once, shared by all targets), and build the
    cutout with `astro_metallicity.preprocess.make_cutout`.
``jpeg``
    SkyServer's ImgCutout ``getjpeg`` service, the source Wu & Boada (2018)
    used.

With ``scale='adaptive'`` both use the paper's galaxy-adapted pixel scale,
with petroR90_r looked up by position through astroquery's SDSS cross-id.
Every URL comes from ``astro_metallicity.conf`` (``skyserver_baseurl``,
``sas_baseurl``, ``tap_url``, ``data_release``), read at call time, and
astroquery is pointed at the same servers for each of its queries; the mock
SDSS server (`astro_metallicity.mock.MockSDSS`) points them at 127.0.0.1.
"""

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from .._config import conf
from ..preprocess import _scale_arcsec, adaptive_scale
from ..targets import _FlaggedRows, resolve_targets
from ._fields import in_footprint
from ._http import FetchError
from ._routes import fetch_frame_cutouts, fetch_jpeg_cutouts
from ._sdss import lookup_petro_r90

__all__ = ["CutoutSet", "FetchError", "fetch_cutouts"]


class CutoutSet(_FlaggedRows):
    """Cutouts for many targets, as returned by `fetch_cutouts`.

    ``len()`` is the number of targets and ``.good`` the boolean mask of the
    usable cutouts (``flags == ''``).

    Attributes
    ----------
    images : `~numpy.ndarray`
        ``uint8`` ``(N, size, size, 3)``; all zeros where a target failed.
    flags : `~numpy.ndarray` of str
        ``''`` where the cutout is good, otherwise the reason
        (``'bad_coordinates: ...'``, ``'outside_footprint'``,
        ``'no_petrosian_radius'``, ``'fetch_failed: ...'``, ...).
    scales : `~astropy.units.Quantity`
        Pixel scale of each cutout (arcsec/pix; NaN where unknown).
    source : str
        ``'frames'`` or ``'jpeg'``.
    """

    def __init__(self, images, flags, scales, source):
        self.images = images
        self.flags = np.asarray(flags, dtype=str)
        self.scales = scales
        self.source = source

    def __repr__(self):
        return (f"<CutoutSet: {len(self)} cutouts from {self.source!r}, "
                f"{int(np.sum(~self.good))} flagged>")


def _adaptive_scales(coords, size, flags):
    """Paper's pixel scales from petroR90_r looked up by position; updates ``flags``."""
    scales = np.full(len(coords), np.nan)
    good = np.flatnonzero(flags == "")
    r90, r90_flags = lookup_petro_r90(coords[good])
    scales[good] = adaptive_scale(r90, size=size).value
    flags[good] = np.where(r90_flags == "", flags[good], r90_flags)
    # no galaxy found: say 'outside_footprint' where no field covers the position
    lost = np.flatnonzero(flags == "no_petrosian_radius")
    if lost.size:
        try:
            inside = in_footprint(coords[lost])
        except FetchError:
            inside = np.ones(lost.size, dtype=bool)
        flags[lost[~inside]] = "outside_footprint"
    return scales


def _given_scales(scale, n, flags):
    """One pixel scale per target (arcsec/pix) from a scalar or per-target ``scale``."""
    values = np.asarray(_scale_arcsec(scale), dtype=float)
    if values.ndim == 0:
        values = np.broadcast_to(values, (n,))
    if values.shape != (n,):
        msg = f"scale has {values.size} values for {n} targets; give one scale or one per target"
        raise ValueError(msg)
    scales = np.array(values, dtype=float)
    flags[(flags == "") & ~(np.isfinite(scales) & (scales > 0))] = "bad_scale"
    return scales


def fetch_cutouts(coords, *, source=None, scale="adaptive", size=128, stretch=None,
                  progress=False):
    """Fetch and build *gri* colour cutouts for many positions.

    This is the one path from positions to network input, shared by
    `~astro_metallicity.predict_metallicity` and the training-set builder.
    Failures never raise mid-list: they become per-target flags.

    Parameters
    ----------
    coords : `~astropy.coordinates.SkyCoord`
        Scalar or 1-D array of positions.
    source : {'frames', 'jpeg'}, optional
        ``'frames'``: SDSS corrected frames from the SAS, reprojected onto a
        target-centred TAN grid, background-subtracted and stretched with
        `~astro_metallicity.preprocess.gri_composite`. ``'jpeg'``: the
        SkyServer ImgCutout service. Default ``conf.cutout_source``.
    scale : 'adaptive' or `~astropy.units.Quantity`
        ``'adaptive'`` (the paper's convention, see
        `~astro_metallicity.preprocess.adaptive_scale`; looks petroR90_r up by
        position), a scalar pixel scale (arcsec/pix, also as text such as
        ``'0.4 arcsec / pix'``), or one scale per target (e.g. computed from a
        catalogue's petroR90_r, which saves the look-up).
    size : int
        Cutout width and height in pixels.
    stretch : dict, optional
        Colour stretch for the frames route (default
        `~astro_metallicity.preprocess.SDSS_JPEG_STRETCH`). The jpeg route gets
        SDSS's own stretch from the server.
    progress : bool
        Show a progress bar.

    Returns
    -------
    cutouts : `CutoutSet`
        ``.images`` uint8 ``(N, size, size, 3)``, ``.flags``, ``.scales``.

    Raises
    ------
    TypeError
        If ``coords`` is not a `~astropy.coordinates.SkyCoord`.
    ValueError
        If ``source``, ``scale`` or ``size`` is invalid.
    KeyboardInterrupt
        On Ctrl-C, at once: the downloads still queued are cancelled, and the
        files already downloaded stay in the cache for the next call.

    Notes
    -----
    A cache directory (``conf.cache_dir``) that cannot be written does not
    fail any target: the downloads are used from memory, with one warning.
    """
    if not isinstance(coords, SkyCoord):
        msg = (f"coords must be an astropy SkyCoord, got {type(coords).__name__}; for a table "
               "use astro_metallicity.resolve_targets(table).coords")
        raise TypeError(msg)
    source = conf.cutout_source if source is None else source
    if source not in ("frames", "jpeg"):
        msg = f"source must be 'frames' or 'jpeg', got {source!r}"
        raise ValueError(msg)
    size = int(size)
    if size < 2:
        msg = f"size must be at least 2 pixels, got {size}"
        raise ValueError(msg)
    if isinstance(scale, str) and scale != "adaptive":
        try:
            scale = u.Quantity(scale)  # e.g. '0.4 arcsec / pix'
        except (TypeError, ValueError):
            msg = f"scale must be 'adaptive' or an angle per pixel (Quantity), got {scale!r}"
            raise ValueError(msg) from None
    resolved = resolve_targets(coords)
    flags = np.array(resolved.flags, dtype=object)
    if isinstance(scale, str):
        scales = _adaptive_scales(resolved.coords, size, flags)
    else:
        scales = _given_scales(scale, len(resolved), flags)
    images = np.zeros((len(resolved), size, size, 3), dtype=np.uint8)
    idx = np.flatnonzero(flags == "")
    if idx.size:
        if source == "jpeg":
            imgs, fl = fetch_jpeg_cutouts(resolved.coords[idx], scales[idx], size,
                                          progress=progress)
        else:
            imgs, fl = fetch_frame_cutouts(resolved.coords[idx], scales[idx], size,
                                           stretch=stretch, progress=progress)
        images[idx] = imgs
        flags[idx] = fl
    images[flags != ""] = 0
    return CutoutSet(images, flags.astype(str), scales * u.arcsec / u.pix, source)
