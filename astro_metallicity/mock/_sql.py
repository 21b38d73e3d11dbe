"""SkyServer SQL for the mock server, run by an in-memory `sqlite3` database (private).

Each mock sky gets one database: a ``_catalog`` table of the simulated
galaxies, views over it named and shaped as the SDSS tables the package and
astroquery query (``PhotoObj[All]``, ``PhotoPrimary``, ``Galaxy``,
``SpecObj[All]``, ``SpecPhoto[All]``, ``GalSpecLine``, ``GalSpecInfo``,
``GalSpecIndx``, ``GalSpecExtra``), the ``Field`` table, and
``dbo.fDocColumns('<table>')``. 64-bit identifiers are exact SQLite integers.
A small rewrite turns the T-SQL that clients send into SQLite: ``TOP n``
becomes ``LIMIT n``, ``dbo.`` prefixes go, ``#upload``/``#x`` (the CrossID
service's temporary tables) are quoted, and select-list columns are named as
SQL Server names them. SkyServer's functions (``dbo.fPhotoTypeN``, T-SQL's
``log``, ``power``, ...) are registered with ``create_function``. Errors become
`SkyServerError` with SkyServer-like messages, which the server answers with
SkyServer's error response.
"""

import math
import re
import sqlite3
import threading
import time
import weakref

import numpy as np

__all__ = ["SkyServerError", "error_csv", "execute_sql", "table_to_csv"]


class SkyServerError(Exception):
    """An SQL statement the (mock) SkyServer cannot run; the message is SkyServer-like."""


_PHOTO_BANDS = "ugriz"


def _photo_columns():
    cols = {"objid": "objid", "ra": "ra", "dec": "dec", "run": "run", "rerun": "rerun",
            "camcol": "camcol", "field": "field", "obj": "obj", "type": "type", "mode": "_one",
            "clean": "_one", "flags": "_zero", "specobjid": "specobjid",
            "petror50_r": "petror50_r", "petror90_r": "petror90_r"}
    for b in _PHOTO_BANDS:
        cols[b] = f"modelmag_{b}"
        for stem in ("modelmag", "modelmagerr", "petromag", "psfmag", "psfmagerr", "extinction"):
            cols[f"{stem}_{b}"] = f"{stem}_{b}"
        cols[f"err_{b}"] = f"modelmagerr_{b}"
        cols[f"petromagerr_{b}"] = f"modelmagerr_{b}"
        cols[f"cmodelmag_{b}"] = f"modelmag_{b}"
        cols[f"cmodelmagerr_{b}"] = f"modelmagerr_{b}"
        cols[f"dered_{b}"] = f"dered_{b}"
        if b != "r":
            cols[f"petror50_{b}"] = "petror50_r"
            cols[f"petror90_{b}"] = "petror90_r"
    return cols


_SPEC = {"specobjid": "specobjid", "bestobjid": "objid", "ra": "ra", "dec": "dec", "z": "z",
         "zerr": "zerr", "zwarning": "_zero", "class": "_class", "subclass": "_subclass",
         "plate": "plate", "mjd": "mjd", "fiberid": "fiberid", "run2d": "_run2d", "rchi2": "rchi2",
         "scienceprimary": "_one", "veldisp": "_veldisp", "veldisperr": "_veldisperr"}
_GSLINE = {"specobjid": "specobjid"}
for _line in ("h_alpha", "h_beta", "h_delta", "oiii_5007", "nii_6584", "oii_3726", "oii_3729"):
    _GSLINE[f"{_line}_flux"] = f"{_line}_flux"
    _GSLINE[f"{_line}_flux_err"] = f"{_line}_flux_err"
_GSINFO = {"specobjid": "specobjid", "plateid": "plate", "mjd": "mjd", "fiberid": "fiberid",
           "ra": "ra", "dec": "dec", "z": "z", "z_err": "zerr", "spectrotype": "_class",
           "subclass": "_subclass", "targettype": "_class", "release": "_release"}
_GSINDX = {"specobjid": "specobjid", "d4000": "d4000", "d4000_n": "d4000", "d4000_err": "_d4000_err",
           "d4000_n_err": "_d4000_err"}
_GSEXTRA = {"specobjid": "specobjid", "bptclass": "bptclass", "oh_p2p5": "oh_p2p5", "oh_p16": "oh_p16",
            "oh_p50": "oh_p50", "oh_p84": "oh_p84", "oh_p97p5": "oh_p97p5",
            "lgm_tot_p50": "lgm_tot_p50", "sfr_tot_p50": "sfr_tot_p50"}
_PHOTO = _photo_columns()
_SPECPHOTO = {**_PHOTO, **_SPEC, "objid": "objid"}

# Galaxy tables (SDSS name -> {column (lower case) -> sky.sql_columns() key}); every
# table is a view of the one catalogue table.
_GALAXY_TABLES = {
    "PhotoObj": _PHOTO, "PhotoObjAll": _PHOTO, "PhotoPrimary": _PHOTO, "Galaxy": _PHOTO,
    "SpecObj": _SPEC, "SpecObjAll": _SPEC, "SpecPhoto": _SPECPHOTO, "SpecPhotoAll": _SPECPHOTO,
    "GalSpecLine": _GSLINE, "GalSpecInfo": _GSINFO, "GalSpecIndx": _GSINDX, "GalSpecExtra": _GSEXTRA,
}
_INT_TYPES = {"objid": "bigint", "specobjid": "numeric(20)", "bestobjid": "bigint", "run": "smallint",
              "rerun": "smallint", "camcol": "tinyint", "field": "smallint", "obj": "smallint",
              "type": "smallint", "plate": "smallint", "mjd": "int", "fiberid": "smallint",
              "bptclass": "int", "fieldid": "bigint"}
# Case as in the SDSS schema.
_DISPLAY_NAMES = {"objid": "objID", "specobjid": "specObjID", "bestobjid": "bestObjID", "zerr": "zErr",
                  "zwarning": "zWarning", "fiberid": "fiberID", "rchi2": "rChi2", "subclass": "subClass",
                  "scienceprimary": "sciencePrimary", "veldisp": "velDisp",
                  "veldisperr": "velDispErr"}
for _b in _PHOTO_BANDS:
    for _stem, _disp in (("modelmag", "modelMag"), ("modelmagerr", "modelMagErr"), ("petromag", "petroMag"),
                         ("petromagerr", "petroMagErr"), ("psfmag", "psfMag"), ("psfmagerr", "psfMagErr"),
                         ("cmodelmag", "cModelMag"), ("cmodelmagerr", "cModelMagErr"),
                         ("petror50", "petroR50"), ("petror90", "petroR90")):
        _DISPLAY_NAMES[f"{_stem}_{_b}"] = f"{_disp}_{_b}"
_DOC_FIELDS = ("name", "type", "length", "unit", "ucd", "description", "rank")

_PHOTO_TYPES = {0: "UNKNOWN", 1: "COSMIC_RAY", 2: "DEFECT", 3: "GALAXY", 4: "GHOST",
                5: "KNOWNOBJ", 6: "STAR", 7: "TRAIL", 8: "SKY", 9: "NOTATYPE"}
_QUERY_TIMEOUT = 60.0  # seconds; a runaway join must not hold the database for ever


# ------------------------------------------------------------------ SkyServer functions
def _numeric_function(func):
    """Wrap a math function: NULL in, or outside its domain, gives NULL (as SQLite's own)."""
    def wrapped(*args):
        if any(a is None or isinstance(a, (str, bytes)) for a in args):
            return None
        try:
            return func(*args)
        except (ValueError, OverflowError, ZeroDivisionError):
            return None
    return wrapped


def _floor(x):
    return math.floor(x) if isinstance(x, int) else float(math.floor(x))


def _ceiling(x):
    return math.ceil(x) if isinstance(x, int) else float(math.ceil(x))


def _photo_type_name(value):
    return None if value is None else _PHOTO_TYPES.get(int(value), "UNKNOWN")


# name -> (number of arguments, function); these replace SQLite's built-ins of the same name
# where T-SQL differs (SQLite's log(x) is base 10, T-SQL's is natural).
_FUNCTIONS = {
    "log": (1, _numeric_function(math.log)),
    "log10": (1, _numeric_function(math.log10)),
    "sqrt": (1, _numeric_function(math.sqrt)),
    "exp": (1, _numeric_function(math.exp)),
    "power": (2, _numeric_function(lambda x, y: float(x) ** y)),
    "floor": (1, _numeric_function(_floor)),
    "ceiling": (1, _numeric_function(_ceiling)),
    "fPhotoTypeN": (1, _photo_type_name),
}


# ------------------------------------------------------------------ T-SQL -> SQLite
_LITERAL_RE = re.compile(r"""('(?:[^']|'')*'|"[^"]*"|\[[^\]]*\])""")
_DOC_RE = re.compile(r"\b(?:dbo\.)?fDocColumns\s*\(\s*'([^']*)'\s*\)", re.IGNORECASE)
_DBO_RE = re.compile(r"\bdbo\.", re.IGNORECASE)
_TEMP_RE = re.compile(r"(?<![\w\"])#(\w+)")
_HEAD_RE = re.compile(r"\s*SELECT\b\s*(?:(DISTINCT|ALL)\b\s*)?"
                      r"(?:TOP\s*(?:\(\s*(\d+)\s*\)|(\d+))\s*)?", re.IGNORECASE)
_FROM_RE = re.compile(r"\bFROM\b", re.IGNORECASE)
_NAME_PART = r"(?:[A-Za-z_][\w$]*|\[[^\]]+\]|\"[^\"]+\")"
_COLUMN_REF_RE = re.compile(rf"{_NAME_PART}(?:\s*\.\s*{_NAME_PART})*")
_STAR_RE = re.compile(rf"(?:{_NAME_PART}\s*\.\s*)*\*")
_ALIAS_RE = re.compile(rf"(?:\bAS|(?<=[\w\])\"'])(?=\s))\s+({_NAME_PART}|'[^']*')\s*$",
                       re.IGNORECASE)
_NOT_ALIASES = {"end", "null", "and", "or", "not", "is", "in", "like", "between", "then", "else",
                "when", "case", "nocase", "binary", "rtrim", "asc", "desc"}


def _outside_literals(sql, pattern, repl):
    """``pattern.sub(repl, ...)`` on the parts of ``sql`` outside quotes and brackets."""
    parts = _LITERAL_RE.split(sql)
    parts[::2] = [pattern.sub(repl, p) for p in parts[::2]]
    return "".join(parts)


def _doc_subquery(match):
    table = match.group(1)
    if table.lower() not in _DOC_TABLES:
        msg = f"Invalid object name '{table}'."
        raise SkyServerError(msg)
    fields = ", ".join(_DOC_FIELDS)
    return f"(SELECT {fields} FROM _doc_columns WHERE tablename = '{table}' ORDER BY rank)"


def _top_level_spans(masked, start, stop):
    """(start, stop) of the comma-separated items of ``masked[start:stop]`` at bracket depth 0."""
    spans, depth, item_start = [], 0, start
    for i in range(start, stop):
        ch = masked[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            spans.append((item_start, i))
            item_start = i + 1
    spans.append((item_start, stop))
    return spans


def _top_level_from(masked, start):
    """Position of the FROM that ends the select list (or the end of the statement)."""
    for m in _FROM_RE.finditer(masked, start):
        if masked[start:m.start()].count("(") == masked[start:m.start()].count(")"):
            return m.start()
    return len(masked)


def _named_item(item, masked_item, unnamed):
    """A select-list item with the name SQL Server gives it, and the updated unnamed count."""
    text = masked_item.strip()
    if _STAR_RE.fullmatch(text):
        return item, unnamed
    alias = _ALIAS_RE.search(text)
    if alias and alias.group(1).lower() not in _NOT_ALIASES:
        return item, unnamed
    if _COLUMN_REF_RE.fullmatch(text) and text.lower() != "null":
        # SQL Server names a column by its last name part as written (SQLite would use
        # the schema's spelling): `p.objid` gives `objid`, as clients expect.
        name = re.split(r"\s*\.\s*", item.strip())[-1].strip('[]"')
    else:
        unnamed += 1
        name = f"Column{unnamed}"
    return f"{item.rstrip()} AS \"{name}\"", unnamed


def _to_sqlite(sql):
    """The SQLite statement for a T-SQL ``SELECT`` of SkyServer.

    Parameters
    ----------
    sql : str
        One T-SQL ``SELECT`` statement.

    Returns
    -------
    statement : str
        The statement for SQLite.

    Raises
    ------
    SkyServerError
        If ``sql`` is empty, not a ``SELECT`` or asks for an unknown ``fDocColumns`` table.
    """
    sql = (sql or "").strip().rstrip(";").strip()
    if not sql:
        msg = "Empty query."
        raise SkyServerError(msg)
    sql = _DOC_RE.sub(_doc_subquery, sql)
    sql = _outside_literals(sql, _DBO_RE, "")
    sql = _outside_literals(sql, _TEMP_RE, r'"#\1"')
    # The same text with quoted parts blanked, so that structure is found outside them.
    masked = _LITERAL_RE.sub(lambda m: m[0][0] + "_" * (len(m[0]) - 2) + m[0][-1], sql)
    head = _HEAD_RE.match(masked)
    if head is None:
        word = masked.split(None, 1)[0]
        msg = f"Incorrect syntax near '{sql[:len(word)]}'."
        raise SkyServerError(msg)
    distinct, top = head.group(1), head.group(2) or head.group(3)
    stop = _top_level_from(masked, head.end())
    items, unnamed = [], 0
    for a, b in _top_level_spans(masked, head.end(), stop):
        item, unnamed = _named_item(sql[a:b], masked[a:b], unnamed)
        items.append(item)
    out = "SELECT " + (f"{distinct} " if distinct else "") + ", ".join(items) + " " + sql[stop:]
    if top is not None:
        out += f"\nLIMIT {int(top)}"
    return out


# ------------------------------------------------------------------ errors
_ERRORS = [
    (re.compile(r"no such table: (?:\w+\.)?(.+)"), "Invalid object name '{}'."),
    (re.compile(r"no such column: (?:.*\.)?([^.]+)"), "Invalid column name '{}'."),
    (re.compile(r"ambiguous column name: (?:.*\.)?([^.]+)"), "Ambiguous column name '{}'."),
    (re.compile(r"no such function: (.+)"), "'{}' is not a recognized built-in function name."),
    (re.compile(r'near "(.*)": syntax error', re.DOTALL), "Incorrect syntax near '{}'."),
    (re.compile(r"incomplete input|You can only execute one statement"),
     "Incorrect syntax near the end."),
    (re.compile(r"not authorized"), "Only SELECT statements are allowed."),
    (re.compile(r"interrupted"), "Query timeout expired."),
]


def _skyserver_error(exc):
    text = str(exc)
    for pattern, message in _ERRORS:
        m = pattern.search(text)
        if m:
            return SkyServerError(message.format(*m.groups()))
    return SkyServerError(text)


_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}


def _read_only(action, *args):
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


# ------------------------------------------------------------------ the database
def _sql_type(values):
    kind = np.asarray(values).dtype.kind
    if kind in "iub":
        return "INTEGER"
    if kind == "f":
        return "REAL"
    return "TEXT COLLATE NOCASE"  # SQL Server compares strings case-insensitively


def _create_table(con, name, columns):
    """Create and fill table ``name`` from ``{column: array}``."""
    defs = ", ".join(f'"{c}" {_sql_type(v)}' for c, v in columns.items())
    con.execute(f'CREATE TABLE "{name}" ({defs})')
    marks = ", ".join("?" * len(columns))
    # tolist() gives Python ints, so uint64 identifiers go in exactly
    con.executemany(f'INSERT INTO "{name}" VALUES ({marks})',
                    zip(*(np.asarray(v).tolist() for v in columns.values())))


def _doc_rows(table, columns):
    return [(table, c, _INT_TYPES.get(c.lower(), "real"), 8, "", "", f"{c} (simulated)", i)
            for i, c in enumerate(columns)]


def _galaxy_view_columns(mapping):
    return {_DISPLAY_NAMES.get(col, col): key for col, key in mapping.items()}


_DOC_TABLES = {name.lower() for name in [*_GALAXY_TABLES, "Field"]}


class _Database:
    """The SkyServer tables of one mock sky in an in-memory SQLite database.

    The server is a `~http.server.ThreadingHTTPServer`, so one connection is
    shared by all threads behind a lock (SQL queries are short; building a copy
    of the catalogue per thread would not be).
    """

    def __init__(self, sky):
        con = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        for name, (nargs, func) in _FUNCTIONS.items():
            con.create_function(name, nargs, func, deterministic=True)
        cols = sky.sql_columns()
        views = {table: _galaxy_view_columns(mapping) for table, mapping in _GALAXY_TABLES.items()}
        used = dict.fromkeys(key for view in views.values() for key in view.values())
        _create_table(con, "_catalog", {key: cols[key] for key in used})
        con.execute('CREATE INDEX _catalog_objid ON _catalog ("objid")')
        con.execute('CREATE INDEX _catalog_specobjid ON _catalog ("specobjid")')
        for table, view in views.items():
            select = ", ".join(f'"{key}" AS "{name}"' for name, key in view.items())
            con.execute(f'CREATE VIEW "{table}" AS SELECT {select} FROM _catalog')
        field = sky.field_table()
        _create_table(con, "Field", {c: field[c] for c in field.colnames})
        doc = [row for table, view in views.items() for row in _doc_rows(table, list(view))]
        doc += _doc_rows("Field", field.colnames)
        con.execute("CREATE TABLE _doc_columns (tablename TEXT COLLATE NOCASE, "
                    + ", ".join(f'"{f}"' for f in _DOC_FIELDS) + ")")
        con.executemany(f"INSERT INTO _doc_columns VALUES ({', '.join('?' * 8)})", doc)
        self._con = con
        self._lock = threading.Lock()

    def execute(self, sql, temp_tables=None):
        """Run one SkyServer ``SELECT``; see `execute_sql`."""
        statement = _to_sqlite(sql)
        con = self._con
        with self._lock:
            try:
                for name, columns in (temp_tables or {}).items():
                    _create_table(con, name, columns)
                deadline = time.monotonic() + _QUERY_TIMEOUT
                con.set_progress_handler(lambda: time.monotonic() > deadline, 10000)
                con.set_authorizer(_read_only)
                try:
                    cursor = con.execute(statement)
                    rows = cursor.fetchall()
                finally:
                    con.set_authorizer(None)
                    con.set_progress_handler(None, 0)
            except (sqlite3.Error, OverflowError) as exc:
                raise _skyserver_error(exc) from None
            finally:
                for name in temp_tables or {}:
                    con.execute(f'DROP TABLE IF EXISTS "{name}"')
        names = [d[0] for d in cursor.description]
        return names, _columns(rows, len(names))


def _columns(rows, n):
    if not rows:
        return [np.array([], dtype=float) for _ in range(n)]
    return [np.array(values) for values in zip(*rows)]  # NULLs make an object array


_DATABASES = weakref.WeakKeyDictionary()
_DATABASES_LOCK = threading.Lock()


def _database(sky):
    with _DATABASES_LOCK:  # built once per sky, also when threads ask together
        db = _DATABASES.get(sky)
        if db is None:
            db = _DATABASES[sky] = _Database(sky)
        return db


def execute_sql(sky, sql, *, temp_tables=None):
    """Run a SkyServer SQL ``SELECT`` against a mock sky.

    Parameters
    ----------
    sky : `~astro_metallicity.mock.MockSky`
        The sky whose catalogue and fields are queried.
    sql : str
        One T-SQL ``SELECT`` statement, as sent to SkyServer.
    temp_tables : dict, optional
        Temporary tables for this statement only, ``{name: {column: array}}``
        (the CrossID service's ``#upload`` and ``#x``).

    Returns
    -------
    names : list of str
        Output column names.
    columns : list of `~numpy.ndarray`
        Output columns (object arrays where a column holds NULLs).

    Raises
    ------
    SkyServerError
        For anything but a ``SELECT``, unknown tables, columns or functions,
        and other SQL errors, with a SkyServer-like message.
    """
    return _database(sky).execute(sql, temp_tables)


def _format_column(col):
    col = np.asarray(col)
    if col.dtype.kind in "iu":
        return col.astype(str)
    if col.dtype.kind == "f":
        return np.char.mod("%.10g", col.astype(np.float64))
    if col.dtype.kind == "b":
        return col.astype(int).astype(str)
    return np.array(["" if v is None else (f"{v:.10g}" if isinstance(v, float) else str(v))
                     for v in col.tolist()], dtype=object)


def table_to_csv(names, columns):
    """Format a result as SkyServer CSV (first line ``#Table1``).

    Parameters
    ----------
    names : list of str
        Column names.
    columns : list of `~numpy.ndarray`
        Columns.

    Returns
    -------
    text : str
    """
    lines = ["#Table1", ",".join(names)]
    if columns and len(columns[0]):
        formatted = [_format_column(c) for c in columns]
        lines.extend(",".join(row) for row in zip(*[f.tolist() for f in formatted]))
    return "\n".join(lines) + "\n"


def error_csv(message):
    """The SkyServer error response for a failed query.

    Parameters
    ----------
    message : str
        Error text.

    Returns
    -------
    text : str
    """
    message = " ".join(str(message).split()).replace(",", ";")
    return f"#Table1\nerror_message\nSQL error: {message}\n"
