"""Training data: cutouts plus labels, on disk (HDF5) and in memory.

`build_dataset` fetches and preprocesses a cutout for every galaxy of a
catalogue with the prediction pipeline's own code
(`astro_metallicity.fetch_cutouts`), chunk by chunk, into one HDF5 file: ``images``
(uint8, N x size x size x 3), ``flags`` (empty string = good cutout) and the
catalogue (with units). A chunk is marked done only after it is written, so
a crashed or interrupted build resumes where it stopped.

`dataset_from_images` makes the same kind of store from a folder of JPEG/PNG
cutouts and a CSV of labels (e.g. the real SDSS ImgCutout JPEGs with MPA-JHU
metallicities). `read_dataset` loads a store as a `LabelledCutouts`.
"""

import json
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Table

from .. import __version__
from ..acquire import fetch_cutouts
from ..logger import log
from ..preprocess import adaptive_scale

__all__ = ["LabelledCutouts", "build_dataset", "dataset_from_images", "read_dataset"]

# Catalogue column holding each model output.
_TARGET_COLUMNS = {"metallicity": "oh_p50", "log_mstar": "lgm_tot_p50"}

_STORE_FORMAT = "astro_metallicity-cutouts"
_STORE_VERSION = 1


class LabelledCutouts:
    """Cutouts with their catalogue, in memory.

    Parameters
    ----------
    images : `~numpy.ndarray`
        ``uint8`` array ``(N, size, size, 3)``.
    catalog : `~astropy.table.Table`
        N rows; labels in the columns named by ``oh_p50`` (metallicity) and ``lgm_tot_p50`` (log_mstar).
    flags : array of str, optional
        Per-row flag; empty string means the cutout is good.
    meta : dict, optional
        Provenance of the cutouts (source, scale convention, ...).
    """

    def __init__(self, images, catalog, flags=None, meta=None):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            msg = f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
            raise ValueError(msg)
        if len(catalog) != len(images):
            msg = f"catalog has {len(catalog)} rows but there are {len(images)} images"
            raise ValueError(msg)
        self.images = images
        self.catalog = catalog
        self.flags = (np.full(len(images), "", dtype=object) if flags is None
                      else np.asarray(flags, dtype=object))
        self.meta = dict(meta or {})

    def __len__(self):
        return len(self.images)

    def __repr__(self):
        return (f"<LabelledCutouts n={len(self)} size={self.images.shape[1]} "
                f"good={int(self.good.sum())}>")

    @property
    def good(self):
        """Boolean mask of rows with a usable cutout."""
        return np.array([not f for f in self.flags], dtype=bool)

    def subset(self, index):
        """A new `LabelledCutouts` with the rows selected by ``index`` (mask or integers)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return LabelledCutouts(self.images[index], self.catalog[index], self.flags[index], self.meta)

    def split(self, fractions, *, seed=0):
        """Random disjoint parts, e.g. training, validation and test sets.

        Parameters
        ----------
        fractions : sequence of float
            Fraction of the rows in each part, e.g. ``(0.8, 0.1, 0.1)``; must sum to 1.
        seed : int
            Seed of the random permutation.

        Returns
        -------
        parts : list of `LabelledCutouts`
            One per fraction, each with its rows in their original order.

        Raises
        ------
        ValueError
            If a fraction is negative or they do not sum to 1.
        """
        return [self.subset(index) for index in _split_indices(len(self), fractions, seed=seed)]

    def resample(self, weights, *, size=None, seed=0):
        """Rows drawn with replacement, each with probability proportional to its weight.

        Importance resampling: a training set whose distribution leans the way the
        weights say (e.g. to lower stellar masses) without simulating new galaxies.
        A row can appear several times; the augmentation makes the copies differ.

        Parameters
        ----------
        weights : array-like
            One finite weight >= 0 per row, not all zero.
        size : int, optional
            Number of rows to draw; default the number of rows.
        seed : int
            Seed of the random draw.

        Returns
        -------
        resampled : `LabelledCutouts`
            The drawn rows, in their original order.

        Raises
        ------
        ValueError
            If there is not one weight per row, a weight is negative or not finite, or
            all are zero.
        """
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(self),):
            msg = f"weights must have one value per row ({len(self)}), got shape {weights.shape}"
            raise ValueError(msg)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or not weights.sum() > 0:
            msg = "weights must be finite and >= 0, with at least one > 0"
            raise ValueError(msg)
        size = len(self) if size is None else int(size)
        index = np.random.default_rng(seed).choice(len(self), size, replace=True,
                                                   p=weights / weights.sum())
        return self.subset(np.sort(index))

    def targets(self, outputs):
        """Labels as a float array ``(N, len(outputs))``, NaN where missing.

        Parameters
        ----------
        outputs : sequence of str
            Output names, keys of ``oh_p50`` (metallicity) and ``lgm_tot_p50`` (log_mstar).

        Returns
        -------
        targets : `~numpy.ndarray`
        """
        columns = []
        for name in outputs:
            column = _TARGET_COLUMNS.get(name, name)
            if column not in self.catalog.colnames:
                columns.append(np.full(len(self), np.nan))
                continue
            values = self.catalog[column]
            values = np.ma.filled(np.ma.asarray(getattr(values, "value", values), dtype=float),
                                  np.nan)
            values = np.where(values <= -999, np.nan, values)  # SDSS -9999 sentinels
            columns.append(values)
        return np.stack(columns, axis=1).astype(np.float64)


def _as_cutouts(data, name):
    """``data`` as a `LabelledCutouts`: itself, read from a store path, or None."""
    if data is None or isinstance(data, LabelledCutouts):
        return data
    if isinstance(data, (str, Path)):
        return read_dataset(data)
    msg = f"{name} must be a LabelledCutouts or the path of a cutout store, got {type(data).__name__}"
    raise TypeError(msg)


def _concat_cutouts(parts):
    """Stack several `LabelledCutouts` (e.g. real and simulated) into one.

    Parameters
    ----------
    parts : sequence of `LabelledCutouts`
        Sets with cutouts of one size. A set may appear more than once (to
        weight it up).

    Returns
    -------
    cutouts : `LabelledCutouts`
        Images stacked; the catalogue keeps the label columns of ``oh_p50`` (metallicity) and ``lgm_tot_p50`` (log_mstar)
        (NaN where a part has no such label) and a ``part`` column (index in
        ``parts``).
    """
    parts = list(parts)
    if not parts:
        msg = "parts must contain at least one LabelledCutouts"
        raise ValueError(msg)
    sizes = {p.images.shape[1:] for p in parts}
    if len(sizes) != 1:
        msg = f"all parts must have cutouts of one shape, got {sorted(sizes)}"
        raise ValueError(msg)
    names = list(_TARGET_COLUMNS)
    targets = np.concatenate([p.targets(names) for p in parts])
    catalog = Table({_TARGET_COLUMNS[name]: targets[:, j] for j, name in enumerate(names)})
    catalog["oh_p50"].unit = u.dex
    catalog["part"] = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)])
    images = np.concatenate([p.images for p in parts])
    flags = np.concatenate([p.flags for p in parts])
    return LabelledCutouts(images, catalog, flags, {"parts": len(parts)})


def _split_indices(n, fractions, *, seed=0):
    """Random disjoint index sets covering ``range(n)``.

    Parameters
    ----------
    n : int
        Number of items.
    fractions : sequence of float
        Fraction of items in each part, e.g. ``(0.8, 0.1, 0.1)``; must sum to 1.
    seed : int
        Seed of the permutation.

    Returns
    -------
    parts : list of `~numpy.ndarray`
        Sorted integer indices of each part.
    """
    fractions = np.asarray(fractions, dtype=float)
    if np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        msg = f"fractions must be non-negative and sum to 1, got {fractions.tolist()}"
        raise ValueError(msg)
    order = np.random.default_rng(seed).permutation(n)
    edges = np.round(np.cumsum(fractions) * n).astype(int)
    edges[-1] = n
    return [np.sort(part) for part in np.split(order, edges[:-1])]


# --------------------------------------------------------------------------- HDF5 store


def _catalog_fingerprint(catalog):
    """A short hash of a catalogue's positions and labels.

    `build_dataset` stores it and resumes only into a store built from the same
    catalogue.

    Parameters
    ----------
    catalog : `~astropy.table.Table`
        With ``ra`` and ``dec`` and, if present, ``objID``/``oh_p50``/``lgm_tot_p50``.

    Returns
    -------
    fingerprint : str
        16 hexadecimal digits.
    """
    import hashlib

    digest = hashlib.sha256()
    for name in ("objID", "ra", "dec", "oh_p50", "lgm_tot_p50"):
        if name in catalog.colnames:
            values = np.asarray(getattr(catalog[name], "value", catalog[name]))
            if values.dtype.kind == "f":
                values = np.round(values.astype(np.float64), 7)
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()[:16]


def _create_store(path, catalog, size, attrs, chunk_size):
    import h5py

    catalog = Table(catalog)
    catalog.meta = {k: v for k, v in catalog.meta.items()
                    if isinstance(v, (str, int, float, bool, list, dict))}
    catalog.write(path, path="catalog", format="hdf5", serialize_meta=True, overwrite=True)
    n = len(catalog)
    with h5py.File(path, "a") as f:
        f.create_dataset("images", shape=(n, size, size, 3), dtype="uint8",
                         chunks=(max(1, min(16, n)), size, size, 3), compression="lzf")
        f.create_dataset("flags", shape=(n,), dtype=h5py.string_dtype())
        f.create_dataset("chunk_done", shape=(max(1, -(-n // chunk_size)),), dtype=bool)
        f.attrs["format"] = _STORE_FORMAT
        f.attrs["format_version"] = _STORE_VERSION
        f.attrs["n"] = n
        f.attrs["cutout_size"] = size
        f.attrs["chunk_size"] = chunk_size
        f.attrs["meta"] = json.dumps(attrs, default=str)
        f.attrs["astro_metallicity_version"] = __version__


def _check_store(path, n, size, chunk_size, attrs):
    import h5py

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != _STORE_FORMAT:
            msg = f"{path} is not an astro_metallicity cutout store; pass overwrite=True"
            raise ValueError(msg)
        old = json.loads(f.attrs["meta"])
        same = (int(f.attrs["n"]) == n and int(f.attrs["cutout_size"]) == size
                and int(f.attrs["chunk_size"]) == chunk_size
                and all(old.get(k) == json.loads(json.dumps(v, default=str))
                        for k, v in attrs.items()))
        if not same:
            msg = (f"{path} was built with other settings (n={int(f.attrs['n'])}, "
                   f"size={int(f.attrs['cutout_size'])}, {old}); pass overwrite=True to rebuild "
                   "or choose another path")
            raise ValueError(msg)
        return np.asarray(f["chunk_done"][:], dtype=bool)


def _coordinates(catalog):
    from astropy.coordinates import SkyCoord

    ra = catalog["ra"]
    dec = catalog["dec"]
    ra = ra.quantity if getattr(ra, "unit", None) is not None else np.asarray(ra) * u.deg
    dec = dec.quantity if getattr(dec, "unit", None) is not None else np.asarray(dec) * u.deg
    return SkyCoord(ra.to(u.deg), dec.to(u.deg))


def _default_cutout_func(coords, catalog, *, source, scale, size):
    if isinstance(scale, str) and scale == "adaptive" and "petroR90_r" in catalog.colnames:
        # The catalogue already has petroR90_r: per-target scales save a look-up each.
        r90 = catalog["petroR90_r"]
        r90 = r90.quantity if r90.unit is not None else np.asarray(r90, float) * u.arcsec
        scale = adaptive_scale(r90, size=size)
    result = fetch_cutouts(coords, source=source, scale=scale, size=size, progress=False)
    return np.asarray(result.images), np.asarray(result.flags, dtype=object)


def build_dataset(catalog, path, *, source="jpeg", scale="adaptive", size=128, chunk_size=256,
                  overwrite=False, progress=True, cutout_func=None):
    """Fetch and preprocess cutouts for a whole catalogue into an HDF5 store.

    Parameters
    ----------
    catalog : `~astropy.table.Table`
        Galaxies with ``ra``, ``dec`` (deg) and label columns (``oh_p50``,
        ``lgm_tot_p50``), e.g. from `query_training_catalog`.
    path : str or path-like
        The HDF5 file to write. If it exists and was built with the same settings,
        the build resumes: chunks already written are skipped.
    source : {'jpeg', 'frames'}
        Where cutouts come from: the SkyServer ImgCutout service (as in the paper) or
        SAS corrected frames, reprojected and stretched locally.
    scale : 'adaptive' or `~astropy.units.Quantity`
        Pixel scale: the paper's adaptive 2 * petroR90_r / (0.396 * size) arcsec/px,
        or a fixed angle per pixel.
    size : int
        Cutout side in pixels.
    chunk_size : int
        Galaxies fetched and written per step (the unit of resumption).
    overwrite : bool
        Rebuild from scratch even if ``path`` exists.
    progress : bool
        Show a progress bar over chunks.
    cutout_func : callable, optional
        ``cutout_func(coords, catalog_rows, source=, scale=, size=) -> (images, flags)``.
        Default: `astro_metallicity.fetch_cutouts`, the prediction
        pipeline's function.

    Returns
    -------
    path : `~pathlib.Path`
        The written store; read it with `read_dataset`.
    """
    import h5py
    from astropy.utils.console import ProgressBar

    path = Path(path)
    size = int(size)
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        msg = f"chunk_size must be a positive integer, got {chunk_size}"
        raise ValueError(msg)
    for column in ("ra", "dec"):
        if column not in catalog.colnames:
            msg = f"catalog needs an {column!r} column (degrees) to fetch cutouts"
            raise ValueError(msg)
    if source not in ("jpeg", "frames"):
        msg = f"source must be 'jpeg' or 'frames', got {source!r}"
        raise ValueError(msg)
    scale_attr = scale if isinstance(scale, str) else str(u.Quantity(scale))
    attrs = {"source": source, "scale": scale_attr,
             "catalog_fingerprint": _catalog_fingerprint(catalog)}
    cutout_func = _default_cutout_func if cutout_func is None else cutout_func
    n = len(catalog)
    if overwrite or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_store(path, catalog, size, attrs, chunk_size)
    done = _check_store(path, n, size, chunk_size, attrs)
    todo = np.flatnonzero(~done)
    if n and len(todo) < len(done):
        log.info(f"Resuming {path}: {len(done) - len(todo)} of {len(done)} chunks already built")
    coords = _coordinates(catalog) if n else None
    bar = ProgressBar(len(todo)) if (progress and len(todo)) else None
    try:
        for k in todo:
            start, stop = k * chunk_size, min(n, (k + 1) * chunk_size)
            images, flags = cutout_func(coords[start:stop], catalog[start:stop],
                                        source=source, scale=scale, size=size)
            images = np.asarray(images, dtype=np.uint8)
            if images.shape != (stop - start, size, size, 3):
                msg = (f"cutout_func returned images of shape {images.shape}, expected "
                       f"{(stop - start, size, size, 3)}")
                raise ValueError(msg)
            with h5py.File(path, "a") as f:
                f["images"][start:stop] = images
                f["flags"][start:stop] = [str(flag) for flag in flags]
                f["chunk_done"][k] = True
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    return path


def _write_dataset(cutouts, path, *, chunk_size=256):
    """Write a `LabelledCutouts` to an HDF5 store readable by `read_dataset`.

    Parameters
    ----------
    cutouts : `LabelledCutouts`
        The cutouts and catalogue.
    path : str or path-like
        Destination (overwritten).
    chunk_size : int
        Recorded chunk size (all chunks are marked done).

    Returns
    -------
    path : `~pathlib.Path`
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {k: v for k, v in cutouts.meta.items() if k in ("source", "scale")}
    attrs.setdefault("source", "images")
    attrs.setdefault("scale", "adaptive")
    _create_store(path, cutouts.catalog, cutouts.images.shape[1], attrs, chunk_size)
    with h5py.File(path, "a") as f:
        f["images"][...] = cutouts.images
        f["flags"][...] = [str(flag) for flag in cutouts.flags]
        f["chunk_done"][...] = True
        meta = json.loads(f.attrs["meta"])
        meta.update(cutouts.meta)
        f.attrs["meta"] = json.dumps(meta, default=str)
    return path


def read_dataset(path, *, good_only=True):
    """Load an HDF5 cutout store into memory.

    Parameters
    ----------
    path : str or path-like
        A store written by `build_dataset` or `dataset_from_images`.
    good_only : bool
        Keep only rows with an empty flag (a good cutout).

    Returns
    -------
    cutouts : `LabelledCutouts`

    Raises
    ------
    ValueError
        If the store is incomplete (an interrupted `build_dataset`).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        msg = f"dataset {path} not found; build it with build_dataset or dataset_from_images"
        raise FileNotFoundError(msg)
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != _STORE_FORMAT:
            msg = f"{path} is not an astro_metallicity cutout store"
            raise ValueError(msg)
        if not np.all(f["chunk_done"][:]):
            msg = (f"dataset {path} is incomplete (an interrupted build); run build_dataset "
                   "again with the same arguments to finish it")
            raise ValueError(msg)
        images = f["images"][:]
        flags = np.array([x.decode() if isinstance(x, bytes) else x for x in f["flags"][:]],
                         dtype=object)
        meta = json.loads(f.attrs["meta"])
    catalog = Table.read(path, path="catalog", format="hdf5")
    cutouts = LabelledCutouts(images, catalog, flags, meta)
    if good_only:
        cutouts = cutouts.subset(cutouts.good)
    return cutouts


def dataset_from_images(image_dir, labels, path=None, *, id_column="objID",
                        label_columns=None, pattern="{id}.jpg"):
    """Make a cutout set from a folder of colour cutouts and a table of labels.

    Parameters
    ----------
    image_dir : str or path-like
        Folder with one image per galaxy (JPEG/PNG, RGB, all the same size).
    labels : str, path-like or `~astropy.table.Table`
        Table (or CSV file) with an id column and label columns.
    path : str or path-like, optional
        If given, also write the set to this HDF5 store.
    id_column : str
        Column whose value names the image file.
    label_columns : dict, optional
        Mapping of label column to catalogue column name, e.g. ``{'Z': 'oh_p50'}``.
        Default: columns already named as in ``oh_p50`` (metallicity) and ``lgm_tot_p50`` (log_mstar) are used as they are.
    pattern : str
        File name of an image, ``{id}`` replaced by the id.

    Returns
    -------
    cutouts : `LabelledCutouts`
        Rows whose image is missing are dropped (with a warning in the log).
    """
    from PIL import Image

    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        msg = f"image_dir {image_dir} is not a folder"
        raise FileNotFoundError(msg)
    if not isinstance(labels, Table):
        labels = Table.read(labels, format="ascii.csv")
    labels = Table(labels)
    if id_column not in labels.colnames:
        msg = f"labels have no id_column {id_column!r}; columns are {labels.colnames}"
        raise ValueError(msg)
    for old, new in (label_columns or {}).items():
        labels.rename_column(old, new)
    for column in _TARGET_COLUMNS.values():
        if column in labels.colnames and labels[column].unit is None:
            labels[column].unit = u.dex
    images, keep = [], []
    for row, ident in enumerate(labels[id_column]):
        file = image_dir / pattern.format(id=ident)
        if not file.is_file():
            continue
        with Image.open(file) as im:
            images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        keep.append(row)
    if len(keep) < len(labels):
        log.warning(f"{len(labels) - len(keep)} labelled galaxies have no image in {image_dir}")
    if not images:
        msg = f"no images matching {pattern!r} for the labels found in {image_dir}"
        raise ValueError(msg)
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        msg = f"images in {image_dir} have different shapes {sorted(shapes)}; resize them first"
        raise ValueError(msg)
    cutouts = LabelledCutouts(np.stack(images), labels[keep], None,
                        {"source": "images", "image_dir": str(image_dir), "scale": "adaptive"})
    if path is not None:
        _write_dataset(cutouts, path)
    return cutouts
