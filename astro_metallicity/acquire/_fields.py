"""Field geometry: which SDSS fields cover a cutout, and footprint tests."""

import warnings

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle

from ..logger import log
from ..preprocess import cutout_wcs
from ._http import FetchError
from ._sdss import load_frame_wcs, query_fields

__all__ = ["frames_for_target", "group_targets", "half_width_deg", "in_footprint",
           "ra_interval", "sky_order"]

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


def _frame_covers(wcs, shape, points):
    """Which ``points`` fall on the pixels of a frame of ``shape`` (ny, nx)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a point far off the frame may not convert
        try:
            x, y = points.to_pixel(wcs)
        except Exception:  # noqa: BLE001 - no point is on the frame
            return np.zeros(points.shape, dtype=bool)
    # The frame's pixel edges are at -0.5 and N - 0.5 (where reproject's coverage ends).
    covers = (x > -0.5) & (x < shape[1] - 0.5) & (y > -0.5) & (y < shape[0] - 0.5)
    return np.broadcast_to(covers, points.shape)


def _boxes_cover(candidates, points):
    """``(n_candidates, n_points)``: which points each candidate's bounding box holds."""
    ra_min = np.asarray(candidates["raMin"], dtype=float)
    width = _ra_offset(np.asarray(candidates["raMax"], dtype=float), ra_min)
    width = np.where(width < 0, width + 360.0, width)[:, None]
    dra = _ra_offset(points.ra.deg[None, :], ra_min[:, None])
    dec = points.dec.deg[None, :]
    return ((dra >= 0) & (dra <= width)
            & (dec >= np.asarray(candidates["decMin"], float)[:, None])
            & (dec <= np.asarray(candidates["decMax"], float)[:, None]))


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
        ``{'g': [(data, wcs), ...], 'r': [...], 'i': [...]}`` (empty lists
        when no field holds the target), with each frame's celestial
        `~astropy.wcs.WCS` (its header is parsed once per frame).
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
    in_box = (_boxes_cover(candidates, points) if len(candidates)
              else np.zeros((0, len(points)), dtype=bool))
    untried = np.ones(len(in_box), dtype=bool)
    while uncovered.any() and untried.any():
        counts = np.where(untried, np.sum(in_box & uncovered, axis=1), 0)
        best = int(np.argmax(counts))  # the first of the best ranked
        if counts[best] == 0:
            break
        untried[best] = False
        row = candidates[best]
        ident = (int(row["run"]), int(row["camcol"]), int(row["field"]), int(row["rerun"]))
        try:
            data, _, wcs = load_frame_wcs(ident[0], ident[1], ident[2], "r", rerun=ident[3])
        except FetchError as exc:
            if exc.reason.startswith("HTTP 404"):  # listed but not on the SAS: try the others
                log.debug(f"frame {ident} not found on the SAS; skipping it")
                continue
            raise
        covers = _frame_covers(wcs, data.shape, points)
        if np.any(covers & uncovered):
            chosen.append(ident)
            uncovered &= ~covers
    frames = {"g": [], "r": [], "i": []}
    if not chosen or uncovered[center_index]:
        return frames, False
    for run, camcol, field, rerun in chosen:
        for band in "gri":
            data, _, wcs = load_frame_wcs(run, camcol, field, band, rerun=rerun)
            frames[band].append((data, wcs))
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


def sky_order(coords):
    """An order of the targets in which neighbours on the sky follow each other.

    Targets are ordered by the sky cell of `group_targets` (0.5 deg cells,
    row by row in Dec) and by RA within a cell, so that a run of consecutive
    targets falls on few SDSS fields: a chunk of such a run needs few Field
    queries and few frames.

    Parameters
    ----------
    coords : `~astropy.coordinates.SkyCoord`
        1-D array of positions.

    Returns
    -------
    order : `~numpy.ndarray` of int
        Indices into ``coords`` (a stable sort: ties keep their input order).
    """
    ra = np.asarray(coords.ra.deg, dtype=float)
    dec = np.asarray(coords.dec.deg, dtype=float)
    return np.lexsort((ra, np.floor(ra / _GROUP_CELL_DEG), np.floor(dec / _GROUP_CELL_DEG)))


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
