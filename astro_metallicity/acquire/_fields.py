"""Field geometry: which SDSS fields cover a cutout, and footprint tests."""

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle

from ..logger import log
from ..preprocess import cutout_wcs, header_wcs
from ._http import FetchError
from ._sdss import FRAME_SHAPE, load_frame, query_fields

__all__ = ["frames_for_target", "group_targets", "half_width_deg", "in_footprint",
           "ra_interval"]

_GROUP_CELL_DEG = 0.5  # targets in one cell share one Field query


def _ra_offset(ra, ref):
    """RA minus ``ref`` in degrees, wrapped into [-180, 180)."""
    return Angle(np.asarray(ra, float) - ref, u.deg).wrap_at(180 * u.deg).deg


def ra_interval(table, ref):
    """Field RA limits as offsets (deg) from ``ref``, continuous across RA = 0/360.

    Parameters
    ----------
    table : `~astropy.table.Table` or dict
        With ``raMin`` and ``raMax`` columns (deg).
    ref : float
        Reference RA (deg).

    Returns
    -------
    lo, hi : `~numpy.ndarray`
        Offsets with ``hi >= lo``.
    """
    lo = _ra_offset(table["raMin"], ref)
    hi = _ra_offset(table["raMax"], ref)
    return lo, np.where(hi < lo, hi + 360.0, hi)


def half_width_deg(scale_arcsec, size):
    """Half diagonal of a cutout in degrees, plus a few pixels for interpolation.

    Parameters
    ----------
    scale_arcsec : float or array
        Pixel scale (arcsec/pix).
    size : int
        Cutout side in pixels.

    Returns
    -------
    half : float or `~numpy.ndarray`
    """
    return (np.asarray(scale_arcsec) * (size / 2.0 + 2.0) * np.sqrt(2.0)) / 3600.0


def _sample_points(center, scale_arcsec, size, n=7):
    """A grid of sky positions spanning the cutout (corners and edges included)."""
    w = cutout_wcs(center, size, scale_arcsec * u.arcsec / u.pix)
    grid = np.linspace(-0.5, size - 0.5, n)
    x, y = np.meshgrid(grid, grid)
    return w.pixel_to_world(x.ravel(), y.ravel())


def _frame_covers(header, points):
    """Which ``points`` fall on the frame's pixels."""
    wcs = header_wcs(header)  # a new WCS, ours to change
    wcs.pixel_shape = (int(header.get("NAXIS1", FRAME_SHAPE[1])),
                       int(header.get("NAXIS2", FRAME_SHAPE[0])))
    # footprint_contains takes pixel coordinates in (0, N); the frame's pixel edges
    # are at -0.5 and N - 0.5 (where reproject's coverage ends): shift half a pixel.
    wcs.wcs.crpix = wcs.wcs.crpix + 0.5
    covers = wcs.footprint_contains(points)
    return np.broadcast_to(covers, points.shape)


def _box_covers(row, points):
    ref = float(row["raMin"])
    lo, hi = ra_interval({"raMin": [row["raMin"]], "raMax": [row["raMax"]]}, ref)
    dra = _ra_offset(points.ra.deg, ref)
    dec = points.dec.deg
    return ((dra >= lo[0]) & (dra <= hi[0])
            & (dec >= row["decMin"]) & (dec <= row["decMax"]))


def frames_for_target(center, scale, size, candidates):
    """Choose and download the fields that together cover a cutout.

    Candidates (rows of `query_fields`) are ranked by how many sample points
    of the cutout their bounding box holds; the best is downloaded and its
    real WCS checked; more fields are added while parts of the cutout are
    uncovered (a galaxy near a frame edge gets a mosaic).

    Parameters
    ----------
    center : `~astropy.coordinates.SkyCoord`
        Scalar target position.
    scale : float
        Pixel scale in arcsec/pix.
    size : int
        Cutout side in pixels.
    candidates : `~astropy.table.Table`
        Field rows around the target.

    Returns
    -------
    frames : dict
        ``{'g': [(data, header), ...], 'r': [...], 'i': [...]}`` (empty lists
        when no field holds the target).
    complete : bool
        Whether the chosen fields cover the whole cutout.

    Raises
    ------
    FetchError
        If a frame cannot be downloaded (other than one missing from the SAS).
    """
    points = _sample_points(center, scale, size)
    uncovered = np.ones(len(points), dtype=bool)
    center_index = len(points) // 2
    chosen = []
    tried = set()
    while uncovered.any():
        best, best_count = None, 0
        for k, row in enumerate(candidates):
            if k in tried:
                continue
            count = int(np.sum(_box_covers(row, points) & uncovered))
            if count > best_count:
                best, best_count = k, count
        if best is None:
            break
        tried.add(best)
        row = candidates[best]
        ident = (int(row["run"]), int(row["camcol"]), int(row["field"]), int(row["rerun"]))
        try:
            _, header = load_frame(ident[0], ident[1], ident[2], "r", rerun=ident[3])
        except FetchError as exc:
            if exc.reason.startswith("HTTP 404"):  # listed but not on the SAS: try the others
                log.debug(f"frame {ident} not found on the SAS; skipping it")
                continue
            raise
        covers = _frame_covers(header, points)
        if np.any(covers & uncovered):
            chosen.append(ident)
            uncovered &= ~covers
    frames = {"g": [], "r": [], "i": []}
    if not chosen or uncovered[center_index]:
        return frames, False
    for run, camcol, field, rerun in chosen:
        for band in "gri":
            frames[band].append(load_frame(run, camcol, field, band, rerun=rerun))
    return frames, not uncovered.any()


def group_targets(coords, half_deg):
    """Group target indices into sky cells; each group shares one Field query.

    Parameters
    ----------
    coords : `~astropy.coordinates.SkyCoord`
        1-D array of positions.
    half_deg : `~numpy.ndarray`
        Half width of each target's cutout (deg).

    Returns
    -------
    groups : dict
        Cell key -> list of target indices.
    boxes : dict
        Cell key -> ``(ra_min, ra_max, dec_min, dec_max)`` holding its cutouts.
    """
    ra = coords.ra.deg
    dec = coords.dec.deg
    keys = np.floor(dec / _GROUP_CELL_DEG).astype(int) * 100000 + np.floor(
        ra / _GROUP_CELL_DEG).astype(int)
    groups = {}
    for i, key in enumerate(keys):
        groups.setdefault(int(key), []).append(i)
    boxes = {}
    for key, idx in groups.items():
        idx = np.asarray(idx)
        cosd = np.maximum(np.cos(np.deg2rad(np.abs(dec[idx]) + half_deg[idx])), 1e-3)
        dra = half_deg[idx] / cosd
        boxes[key] = (float(np.min(ra[idx] - dra)), float(np.max(ra[idx] + dra)),
                      float(np.min(dec[idx] - half_deg[idx])), float(np.max(dec[idx] + half_deg[idx])))
    return groups, boxes


def in_footprint(coords):
    """Whether each position lies in an imaged SDSS field (``Field`` bounding boxes).

    Parameters
    ----------
    coords : `~astropy.coordinates.SkyCoord`
        1-D array of positions.

    Returns
    -------
    inside : `~numpy.ndarray` of bool
        True where some field's bounding box holds the position.

    Raises
    ------
    FetchError
        If a Field query fails after retries.
    """
    n = len(coords)
    inside = np.zeros(n, dtype=bool)
    if n == 0:
        return inside
    groups, boxes = group_targets(coords, np.full(n, 1.0 / 3600.0))
    for key, idx in groups.items():
        table = query_fields(*boxes[key])
        for i in idx:
            ra, dec = coords[i].ra.deg, coords[i].dec.deg
            lo, hi = ra_interval(table, ra)
            inside[i] = bool(np.any((lo <= 0) & (hi >= 0)
                                    & (table["decMin"] <= dec) & (table["decMax"] >= dec)))
    return inside
