"""Targets: turn what the user passes into coordinates plus per-row flags.

First stage of the pipeline (targets -> acquire -> preprocess -> model ->
predict -> table). Input that is unusable *as a whole* (wrong type, no
coordinate columns) raises at once with a message naming the fix; bad
*individual rows* (NaN, out-of-range or masked coordinates) are flagged and
carried through, so one bad row never stops a table.
"""

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle, SkyCoord
from astropy.table import QTable, Table

__all__ = ["ResolvedTargets", "resolve_targets"]

# Recognised (ra, dec) column-name pairs, tried in this order (case-insensitive).
_RA_DEC_NAMES = (
    ("ra", "dec"),
    ("ra_deg", "dec_deg"),
    ("raj2000", "dej2000"),
    ("raj2000", "decj2000"),
    ("ra_icrs", "de_icrs"),
    ("ra_icrs", "dec_icrs"),
    ("_raj2000", "_dej2000"),
    ("radeg", "decdeg"),
    ("alpha", "delta"),
    ("ra_j2000", "dec_j2000"),
    ("plug_ra", "plug_dec"),
)

# Placeholder position used for rows with unusable coordinates (never fetched).
_PLACEHOLDER = (0.0, 0.0)


class _FlaggedRows:
    """Rows with a ``flags`` array, ``''`` where a row is usable (shared by the stage results)."""

    @property
    def good(self):
        """Boolean mask of rows without a flag."""
        return self.flags == ""

    def __len__(self):
        return len(self.flags)


class ResolvedTargets(_FlaggedRows):
    """Targets after validation.

    ``len()`` is the number of rows and ``.good`` the boolean mask of the rows
    without a flag.

    Attributes
    ----------
    table : `~astropy.table.QTable`
        The input as a table (a SkyCoord input becomes a one-column table
        ``coord``). Row order is the input order.
    coords : `~astropy.coordinates.SkyCoord`
        ICRS positions, one per row (array, even for a scalar input); rows
        with bad coordinates hold a placeholder position.
    flags : `~numpy.ndarray` of str
        One flag per row, ``''`` when the row is usable.
    scalar : bool
        True when the input was a scalar `~astropy.coordinates.SkyCoord`.
    """

    def __init__(self, table, coords, flags, scalar=False):
        self.table = table
        self.coords = coords
        self.flags = flags
        self.scalar = scalar

    def __repr__(self):
        return f"<ResolvedTargets: {len(self)} rows, {int(np.sum(~self.good))} flagged>"


def _find_coord_columns(table):
    """Return ('skycoord', name) or ('radec', (ra, dec)) for a table, or None."""
    for name in table.colnames:
        if isinstance(table[name], SkyCoord):
            return "skycoord", name
    lower = {name.lower(): name for name in table.colnames}
    for ra, dec in _RA_DEC_NAMES:
        if ra in lower and dec in lower:
            return "radec", (lower[ra], lower[dec])
    return None


def _column_to_degrees(col, name, is_ra=False):
    """Convert a column (plain, Quantity, masked) to float degrees with NaN for missing."""
    mask = np.zeros(len(col), dtype=bool)
    if hasattr(col, "mask") and col.mask is not None:
        mask = np.asarray(np.ma.getmaskarray(col.mask) if np.ma.isMaskedArray(col.mask)
                          else col.mask, dtype=bool)
        mask = np.broadcast_to(mask, (len(col),))
    unit = getattr(col, "unit", None)
    if unit is not None and unit != u.dimensionless_unscaled:
        if not unit.is_equivalent(u.deg):
            msg = (f"column {name!r} has unit {unit}, which is not an angle; "
                   "give it an angular unit (e.g. u.deg) or plain numbers in degrees")
            raise u.UnitsError(msg)
        values = u.Quantity(col, copy=False).to_value(u.deg) if isinstance(col, u.Quantity) \
            else (np.ma.getdata(col).astype(float) * unit).to_value(u.deg)
    else:
        data = np.ma.getdata(col)
        if data.dtype.kind in "US" or data.dtype.kind == "O":
            values = np.array([_parse_angle(v, is_ra) for v in data], dtype=float)
        elif data.dtype.kind in "fiub":
            values = np.asarray(data, dtype=float)
        else:
            msg = (f"column {name!r} has dtype {data.dtype}; give coordinates in "
                   "degrees as numbers or an angular Quantity")
            raise TypeError(msg)
    values = np.array(np.ma.getdata(values), dtype=float, copy=True)
    values[mask] = np.nan
    return values


def _parse_angle(value, is_ra):
    """Degrees from a number or a sexagesimal string ('10:21:03.5', '10h21m03.5s', '-1d02m')."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    if not text:
        return np.nan
    sexagesimal_ra = is_ra and ("h" in text.lower() or text.count(":") == 2 or text.count(" ") == 2)
    try:
        angle = Angle(text, unit=u.hourangle if sexagesimal_ra else u.deg)
    except (TypeError, ValueError, u.UnitsError):
        return np.nan
    return float(angle.to_value(u.deg))


def _flags_from_radec(ra, dec):
    flags = np.full(len(ra), "", dtype=object)
    bad_nan = ~np.isfinite(ra) | ~np.isfinite(dec)
    with np.errstate(invalid="ignore"):
        bad_range = ~bad_nan & ((dec < -90) | (dec > 90) | (ra < -180) | (ra > 360))
    flags[bad_nan] = "bad_coordinates: missing or not finite"
    flags[bad_range] = "bad_coordinates: out of range"
    return flags


def resolve_targets(targets):
    """Validate targets and return coordinates and per-row flags.

    Parameters
    ----------
    targets : `~astropy.coordinates.SkyCoord`, `~astropy.table.Table` or `~astropy.table.QTable`
        A scalar or array SkyCoord, or a table with either a SkyCoord column
        or a pair of right ascension/declination columns. Recognised names
        (case-insensitive) include ``ra``/``dec``, ``RA``/``DEC``,
        ``ra_deg``/``dec_deg``, ``RAJ2000``/``DEJ2000``, ``RA_ICRS``/``DE_ICRS``,
        ``_RAJ2000``/``_DEJ2000``, ``alpha``/``delta`` and ``PLUG_RA``/``PLUG_DEC``.
        Plain numbers are taken as degrees; Quantity columns may carry any
        angular unit; text columns may hold numbers or sexagesimal strings
        (right ascension in hours, ``'10:21:03.5'``, ``'10h21m03.5s'``;
        declination in degrees). Coordinates are treated as ICRS.

    Returns
    -------
    resolved : `ResolvedTargets`
        ``table`` (a `~astropy.table.QTable` copy of the input), ``coords``
        (ICRS SkyCoord array, placeholders on bad rows) and ``flags``
        (``''`` for usable rows, ``'bad_coordinates: ...'`` otherwise).

    Raises
    ------
    TypeError
        If ``targets`` is neither a SkyCoord nor a table.
    ValueError
        If a table has no coordinate columns.
    """
    scalar = False
    if isinstance(targets, SkyCoord):
        scalar = targets.isscalar
        coords = targets.reshape((1,)) if scalar else targets
        if coords.ndim != 1:
            msg = f"targets must be a scalar or 1-D SkyCoord, got shape {coords.shape}; use .ravel()"
            raise ValueError(msg)
        icrs = coords.icrs
        ra = np.array(icrs.ra.deg, dtype=float)
        dec = np.array(icrs.dec.deg, dtype=float)
        table = QTable({"coord": coords})
    elif isinstance(targets, Table):
        table = QTable(targets, copy=True)
        found = _find_coord_columns(table)
        if found is None:
            names = ", ".join("/".join(pair) for pair in _RA_DEC_NAMES[:4])
            msg = (f"targets table has no coordinate columns (columns: {table.colnames}); "
                   f"add a SkyCoord column or ra/dec columns in degrees (recognised names: "
                   f"{names}, ...)")
            raise ValueError(msg)
        kind, names = found
        if kind == "skycoord":
            icrs = table[names].icrs
            ra = np.array(icrs.ra.deg, dtype=float)
            dec = np.array(icrs.dec.deg, dtype=float)
        else:
            ra = _column_to_degrees(table[names[0]], names[0], is_ra=True)
            dec = _column_to_degrees(table[names[1]], names[1])
    else:
        msg = (f"targets must be an astropy SkyCoord or Table/QTable, got {type(targets).__name__}; "
               "e.g. SkyCoord(ra, dec, unit='deg') or Table({'ra': ra, 'dec': dec})")
        raise TypeError(msg)

    flags = _flags_from_radec(ra, dec)
    good = flags == ""
    ra_ok = np.where(good, np.mod(ra, 360.0), _PLACEHOLDER[0])
    dec_ok = np.where(good, dec, _PLACEHOLDER[1])
    coords = SkyCoord(ra_ok * u.deg, dec_ok * u.deg, frame="icrs")
    return ResolvedTargets(table, coords, flags, scalar=scalar)
