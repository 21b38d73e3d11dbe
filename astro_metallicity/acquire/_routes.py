"""The two acquisition routes: corrected frames (cutouts built here) and ImgCutout JPEGs.

Both fetch with bounded concurrency (``conf.max_workers``) and turn the
failure of a single target into a flag (``'outside_footprint'``,
``'partial_coverage'``, ``'fetch_failed: <reason>'``), never an exception
in the middle of a table. A Ctrl-C (`KeyboardInterrupt`) is the exception:
it cancels the queued targets and propagates at once.
"""

from concurrent.futures import as_completed

import numpy as np
from astropy import units as u
from astropy.utils.console import ProgressBar

from ..logger import log
from ..preprocess import make_cutout
from ._fields import frames_for_target, group_targets, half_width_deg, ra_interval
from ._http import thread_pool
from ._sdss import fetch_jpeg, flag_from_error, query_fields

__all__ = ["fetch_frame_cutouts", "fetch_jpeg_cutouts"]


def _progress_bar(total, progress):
    if not progress or total == 0:
        return None
    return ProgressBar(total, ipython_widget=False)


def _run_all(work, indices, progress, store):
    """``store(i, work(i))`` for each index, on ``conf.max_workers`` threads.

    A failing target gets ``store(i, exc)`` (an exception instance) instead.
    A `KeyboardInterrupt` (or any other exception that is not a target's
    failure) cancels the targets still queued and is raised at once, without
    waiting for them; downloads already complete stay in the cache.
    """
    bar = _progress_bar(len(indices), progress)
    with thread_pool() as pool:
        futures = {pool.submit(work, i): i for i in indices}
        for future in as_completed(futures):
            i = futures[future]
            try:
                value = future.result()
            except Exception as exc:  # noqa: BLE001 - becomes a flag
                value = exc
            store(i, value)
            if bar is not None:
                bar.update()


def fetch_frame_cutouts(coords, scales, size, *, stretch=None, progress=False):
    """Cutouts from SDSS corrected frames (the ``frames`` route of `fetch_cutouts`).

    Parameters
    ----------
    coords : `~astropy.coordinates.SkyCoord`
        1-D array of valid target positions.
    scales : array of float
        Pixel scale of each cutout (arcsec/pix).
    size : int
        Cutout side in pixels.
    stretch : dict, optional
        Colour stretch for `~astro_metallicity.preprocess.gri_composite`.
    progress : bool
        Show a progress bar.

    Returns
    -------
    images : `~numpy.ndarray`
        uint8 ``(N, size, size, 3)``; zeros where a target failed.
    flags : `~numpy.ndarray` of object
        ``''`` or the reason of failure per target.
    """
    n = len(coords)
    scales = np.asarray(scales, dtype=float)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    flags = np.full(n, "", dtype=object)
    if n == 0:
        return images, flags
    half = half_width_deg(scales, size)
    groups, boxes = group_targets(coords, half)
    # 1. Field look-ups, one per sky cell
    candidates = {}

    def store_fields(key, value):
        if isinstance(value, Exception):
            for i in groups[key]:
                flags[i] = flag_from_error(value)
        else:
            candidates[key] = value

    _run_all(lambda key: query_fields(*boxes[key]), list(groups), False, store_fields)
    # 2. Per target: the fields whose box reaches its cutout
    ra_all, dec_all = coords.ra.deg, coords.dec.deg
    target_fields = {}
    field_key = {}
    for key, idx in groups.items():
        if key not in candidates:
            continue
        table = candidates[key]
        for i in idx:
            if len(table) == 0:
                target_fields[i] = table
                field_key[i] = ()
                continue
            ra, dec, h = ra_all[i], dec_all[i], half[i]
            cosd = max(np.cos(np.deg2rad(abs(dec) + h)), 1e-3)
            lo, hi = ra_interval(table, ra)
            sel = ((hi > -h / cosd) & (lo < h / cosd)
                   & (table["decMax"] > dec - h) & (table["decMin"] < dec + h))
            target_fields[i] = table[sel]
            # the first field whose box holds the centre: targets of one field run
            # together, so each frame is decompressed about once per chunk
            inside = np.flatnonzero(sel & (lo <= 0) & (hi >= 0) & (table["decMin"] <= dec)
                                    & (table["decMax"] >= dec))
            row = table[inside[0]] if inside.size else None
            field_key[i] = () if row is None else (int(row["run"]), int(row["camcol"]),
                                                   int(row["field"]))
    order = sorted(target_fields, key=lambda i: (field_key[i], i))

    # 3. Per target: choose and download frames, build the cutout
    def work(i):
        table = target_fields[i]
        if len(table) == 0:
            return None, "outside_footprint"
        frames, complete = frames_for_target(coords[i], scales[i], size, table)
        if not frames["r"]:
            return None, "outside_footprint"
        rgb, _, coverage = make_cutout(frames, coords[i], size=size,
                                       scale=scales[i] * u.arcsec / u.pix, stretch=stretch,
                                       return_bands=True)
        if not complete or np.mean(coverage < 0.5) > 0.001:
            return rgb, "partial_coverage"
        return rgb, ""

    def store_cutout(i, value):
        if isinstance(value, Exception):
            value = (None, flag_from_error(value))
            log.debug(f"target {i}: {value[1]}")
        rgb, flags[i] = value
        if rgb is not None and flags[i] == "":
            images[i] = rgb

    _run_all(work, order, progress, store_cutout)
    return images, flags


def fetch_jpeg_cutouts(coords, scales, size, *, progress=False):
    """Cutouts from the ImgCutout service (the ``jpeg`` route of `fetch_cutouts`).

    Takes and returns what `fetch_frame_cutouts` does, less ``stretch`` (the
    server applies SDSS's own); a blank image is flagged ``'outside_footprint'``.
    """
    n = len(coords)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    flags = np.full(n, "", dtype=object)
    ra = coords.ra.deg
    dec = coords.dec.deg
    scales = np.asarray(scales, dtype=float)

    def store(i, value):
        if isinstance(value, Exception):
            flags[i] = flag_from_error(value)
        elif int(value.max()) - int(value.min()) < 2:
            flags[i] = "outside_footprint"
        else:
            images[i] = value

    _run_all(lambda i: fetch_jpeg(ra[i], dec[i], scales[i], size, size), range(n), progress,
             store)
    return images, flags
