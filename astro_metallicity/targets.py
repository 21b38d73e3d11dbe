"""Targets: turn what the user passes into coordinates plus per-row flags.

First stage of the pipeline (targets -> acquire -> preprocess -> model ->
predict -> table). Input that is unusable *as a whole* (wrong type, no
coordinate columns) raises at once with a message naming the fix; bad
*individual rows* (NaN, out-of-range or masked coordinates) are flagged and
carried through, so one bad row never stops a table.
"""

import warnings

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
    """Convert a column (plain, Quantity, masked) to float degrees with NaN for missing.

    Returns
    -------
    values : `~numpy.ndarray`
        Degrees, NaN where missing or unusable.
    reasons : `~numpy.ndarray` of object
        ``''``, or why a value is unusable (``'masked'``, ``'cannot parse ra "x"'``, ...).
    """
    reasons = np.full(len(col), "", dtype=object)
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
        data = getattr(col, "unmasked", col)  # a Masked Quantity: values under the mask
        values = u.Quantity(data, copy=False).to_value(u.deg) if isinstance(data, u.Quantity) \
            else (np.ma.getdata(col).astype(float) * unit).to_value(u.deg)
    else:
        data = np.ma.getdata(getattr(col, "unmasked", col))
        if data.dtype.kind in "US" or data.dtype.kind == "O":
            parsed = [_parse_angle(v, is_ra) for v in data]
            values = np.array([value for value, _ in parsed], dtype=float)
            reasons[:] = [reason for _, reason in parsed]
        elif data.dtype.kind in "fiub":
            values = np.asarray(data, dtype=float)
        else:
            msg = (f"column {name!r} has dtype {data.dtype}; give coordinates in "
                   "degrees as numbers or an angular Quantity")
            raise TypeError(msg)
    values = np.array(np.ma.getdata(values), dtype=float, copy=True)
    values[mask] = np.nan
    reasons[mask] = "masked"
    return values, reasons


def _parse_angle(value, is_ra):
    """Degrees from a number or an angle string, and why not when it cannot be read.

    Right ascension strings in sexagesimal notation are hours, whatever the
    number of fields: ``'12:19'``, ``'12:19:00'``, ``'12 19 00'`` and
    ``'12h19m'`` all mean 12h19m (184.75 deg), as with
    ``SkyCoord(..., unit=(u.hourangle, u.deg))``. A plain number (``'184.75'``)
    is degrees, and so is a string with an explicit degree unit
    (``'184d45m'``). Declination strings are always degrees; one given in
    hours is refused.

    Returns
    -------
    degrees : float
        NaN when the value is empty or unusable.
    reason : str
        ``''``, ``'missing'`` for an empty string, else why the string is unusable.
    """
    try:
        return float(value), ""
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    if not text:
        return np.nan, "missing"
    axis = "ra" if is_ra else "dec"
    lower = text.lower()
    explicit_degrees = "d" in lower or "°" in lower
    hours = "h" in lower
    if not is_ra and hours:
        return np.nan, f"dec {text!r} is in hours; give declination in degrees"
    if hours and explicit_degrees:
        return np.nan, f"cannot parse {axis} {text!r} (mixes hours and degrees)"
    # Sexagesimal RA without a unit letter ('12:19', '12 19 00') is hours, with two fields as
    # with three: reading '12:19' as degrees and '12:19:00' as hours would differ by 15x.
    unit = u.hourangle if is_ra and not explicit_degrees else u.deg
    try:
        # Out-of-range seconds ('12:19:60') only warn in astropy; an input that needs a fix-up
        # is ambiguous, so the warning is turned into a flag.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            angle = Angle(text, unit=unit)
    except (TypeError, ValueError, u.UnitsError, Warning) as exc:
        return np.nan, f"cannot parse {axis} {text!r} ({_first_line(exc)})"
    return float(angle.to_value(u.deg)), ""


def _first_line(exc):
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _flags_from_radec(ra, dec, reasons=None):
    flags = np.full(len(ra), "", dtype=object)
    bad_nan = ~np.isfinite(ra) | ~np.isfinite(dec)
    with np.errstate(invalid="ignore"):
        bad_range = ~bad_nan & ((dec < -90) | (dec > 90) | (ra < -180) | (ra > 360))
    flags[bad_nan] = "bad_coordinates: missing or not finite"
    flags[bad_range] = "bad_coordinates: out of range"
    # A known reason (masked, unparseable string) is more precise than "missing"; with
    # reasons for both, the right ascension's (given first) is kept.
    for why in reversed(reasons or ()):
        known = bad_nan & (why != "") & (why != "missing")
        flags[known] = np.array([f"bad_coordinates: {w}" for w in why[known]], dtype=object)
    return flags


def _skycoord_radec(coords):
    """ICRS ra, dec in degrees and the mask of a (possibly masked) SkyCoord array."""
    icrs = coords.icrs
    mask = np.zeros(icrs.shape, dtype=bool)
    for angle in (icrs.ra, icrs.dec):
        # A SkyCoord built from Masked values keeps the hidden values under the mask.
        mask |= np.asarray(getattr(angle, "mask", False), dtype=bool)
    ra = np.array(getattr(icrs.ra, "unmasked", icrs.ra).deg, dtype=float)
    dec = np.array(getattr(icrs.dec, "unmasked", icrs.dec).deg, dtype=float)
    ra[mask] = np.nan
    dec[mask] = np.nan
    reasons = np.where(mask, "masked", "").astype(object)
    return ra, dec, reasons


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
        angular unit; text columns may hold numbers or angle strings.
        A sexagesimal right ascension is always in hours, with two or three
        fields alike: ``'12:19'``, ``'12:19:00'``, ``'12 19 00'`` and
        ``'12h19m'`` all mean 184.75 deg (as
        ``SkyCoord(ra, dec, unit=(u.hourangle, u.deg))`` reads them); a plain
        number (``'184.75'``) or a string with a degree unit (``'184d45m'``)
        is degrees. Declination strings are degrees. Coordinates are treated
        as ICRS.

    Returns
    -------
    resolved : `ResolvedTargets`
        ``table`` (a `~astropy.table.QTable` copy of the input), ``coords``
        (ICRS SkyCoord array, placeholders on bad rows) and ``flags``
        (``''`` for usable rows, ``'bad_coordinates: ...'`` otherwise:
        ``'missing or not finite'``, ``'out of range'``, ``'masked'`` for a
        masked table entry or a masked SkyCoord, ``'cannot parse ra ...'``
        for a string that is not an angle, such as ``'12:75'``, or whose
        reading would need a fix-up, such as ``'12:19:60'``).

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
        ra, dec, reasons = _skycoord_radec(coords)
        reasons = [reasons]
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
            ra, dec, reasons = _skycoord_radec(table[names])
            reasons = [reasons]
        else:
            ra, ra_why = _column_to_degrees(table[names[0]], names[0], is_ra=True)
            dec, dec_why = _column_to_degrees(table[names[1]], names[1])
            reasons = [ra_why, dec_why]
    else:
        msg = (f"targets must be an astropy SkyCoord or Table/QTable, got {type(targets).__name__}; "
               "e.g. SkyCoord(ra, dec, unit='deg') or Table({'ra': ra, 'dec': dec})")
        raise TypeError(msg)

    flags = _flags_from_radec(ra, dec, reasons)
    good = flags == ""
    ra_ok = np.where(good, np.mod(ra, 360.0), _PLACEHOLDER[0])
    dec_ok = np.where(good, dec, _PLACEHOLDER[1])
    coords = SkyCoord(ra_ok * u.deg, dec_ok * u.deg, frame="icrs")
    return ResolvedTargets(table, coords, flags, scalar=scalar)
