"""The small part of SkyServer SQL that the mock server understands.

Supported: ``SELECT [DISTINCT] [TOP n] <expressions> FROM <tables> [WHERE ...]
[ORDER BY ...]`` over the ``Field`` table or over joins of the galaxy tables
(``PhotoObj[All]``, ``PhotoPrimary``, ``Galaxy``, ``SpecObj[All]``,
``SpecPhoto[All]``, ``GalSpecLine``, ``GalSpecInfo``, ``GalSpecIndx``,
``GalSpecExtra``), which all hold one row per simulated galaxy, so joins are
row-aligned and their ``ON`` conditions act as filters. Expressions: column
references (optionally ``alias.``-qualified), numbers, strings, ``+ - * /``,
comparisons, ``BETWEEN``, ``IN``, ``IS [NOT] NULL``, ``AND``/``OR``/``NOT``, and a
few functions (``abs``, ``sqrt``, ``log10``, ``power``, ``round``, ``floor``,
``dbo.fPhotoTypeN``). ``select * from dbo.fDocColumns('<table>')`` lists columns.
Anything else raises `SkyServerError`, which the server turns into the
SkyServer error response.
"""

import re

import numpy as np

__all__ = ["SkyServerError", "doc_columns", "error_csv", "execute_sql", "table_to_csv"]


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

#: Galaxy tables (lower-case name -> {db column (lower) -> catalogue key}).
GALAXY_TABLES = {
    "photoobj": _PHOTO, "photoobjall": _PHOTO, "photoprimary": _PHOTO, "galaxy": _PHOTO,
    "specobj": _SPEC, "specobjall": _SPEC, "specphoto": _SPECPHOTO, "specphotoall": _SPECPHOTO,
    "galspecline": _GSLINE, "galspecinfo": _GSINFO, "galspecindx": _GSINDX, "galspecextra": _GSEXTRA,
}
FIELD_COLUMNS = ("fieldID", "run", "rerun", "camcol", "field", "ra", "dec", "raMin", "raMax",
                 "decMin", "decMax", "mjd_r", "nObjects", "psfWidth_r")
_INT_TYPES = {"objid": "bigint", "specobjid": "numeric(20)", "bestobjid": "bigint", "run": "smallint",
              "rerun": "smallint", "camcol": "tinyint", "field": "smallint", "obj": "smallint",
              "type": "smallint", "plate": "smallint", "mjd": "int", "fiberid": "smallint",
              "bptclass": "int", "fieldid": "bigint"}

# ------------------------------------------------------------------ tokenizer
_TOKEN = re.compile(r"""
    \s*(?:
      (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
    | (?P<str>'(?:[^']|'')*')
    | (?P<name>\[[^\]]+\]|[A-Za-z_#][A-Za-z0-9_]*(?:\.(?:\*|\[[^\]]+\]|[A-Za-z_][A-Za-z0-9_]*))*)
    | (?P<op><=|>=|<>|!=|=|<|>|\+|-|\*|/|\(|\)|,|%)
    )""", re.VERBOSE)

_KEYWORDS = {"select", "distinct", "top", "from", "where", "and", "or", "not", "as", "join",
             "inner", "left", "outer", "on", "order", "by", "asc", "desc", "between", "in", "is",
             "null", "like", "cross", "group", "having", "union", "into"}


def _tokenize(sql):
    pos, out = 0, []
    sql = sql.strip().rstrip(";")
    while pos < len(sql):
        m = _TOKEN.match(sql, pos)
        if not m or m.end() == pos:
            if sql[pos:].strip() == "":
                break
            raise SkyServerError(f"Incorrect syntax near '{sql[pos:pos + 20]}'.")
        pos = m.end()
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "name" and text.lower() in _KEYWORDS:
            out.append(("kw", text.lower()))
        elif kind == "name":
            out.append(("name", text))
        else:
            out.append((kind, text))
    out.append(("end", ""))
    return out


class _Parser:
    def __init__(self, tokens):
        self.t = tokens
        self.i = 0

    def peek(self, k=0):
        return self.t[min(self.i + k, len(self.t) - 1)]

    def next(self):
        tok = self.t[self.i]
        self.i += 1
        return tok

    def accept(self, kind, value=None):
        tok = self.peek()
        if tok[0] == kind and (value is None or tok[1].lower() == value):
            self.i += 1
            return tok
        return None

    def expect(self, kind, value=None):
        tok = self.accept(kind, value)
        if tok is None:
            got = self.peek()[1] or "end of statement"
            raise SkyServerError(f"Incorrect syntax near '{got}'.")
        return tok

    # query := SELECT [DISTINCT] [TOP n] items FROM tables [WHERE e] [ORDER BY ...]
    def query(self):
        self.expect("kw", "select")
        q = {"distinct": False, "top": None, "where": None, "order": []}
        if self.accept("kw", "distinct"):
            q["distinct"] = True
        if self.accept("kw", "top"):
            q["top"] = int(float(self.expect("num")[1]))
        if self.accept("kw", "distinct"):
            q["distinct"] = True
        items = []
        while True:
            if self.accept("op", "*"):
                items.append(("star", None, None))
            else:
                expr_start = self.i
                expr = self.expr()
                alias = None
                if self.accept("kw", "as") or self.peek()[0] in ("name", "str"):
                    alias = self._alias_name(self.next())
                items.append(("expr", expr, alias, expr_start))
            if not self.accept("op", ","):
                break
        q["items"] = items
        self.expect("kw", "from")
        q["tables"] = self.tables()
        if self.accept("kw", "where"):
            q["where"] = self.expr()
        if self.accept("kw", "order"):
            self.expect("kw", "by")
            while True:
                e = self.expr()
                desc = bool(self.accept("kw", "desc"))
                if not desc:
                    self.accept("kw", "asc")
                q["order"].append((e, desc))
                if not self.accept("op", ","):
                    break
        tok = self.peek()
        if tok[0] != "end":
            raise SkyServerError(f"Incorrect syntax near '{tok[1]}'.")
        return q

    @staticmethod
    def _alias_name(tok):
        text = tok[1]
        if tok[0] == "str":
            return text[1:-1]
        if tok[0] != "name":
            raise SkyServerError(f"Incorrect syntax near '{text}'.")
        return text.strip("[]")

    def tables(self):
        out = [self.table_ref(None)]
        while True:
            if self.accept("op", ","):
                out.append(self.table_ref(None))
                continue
            self.accept("kw", "inner")
            if self.accept("kw", "left"):
                self.accept("kw", "outer")
            if self.accept("kw", "join"):
                ref = self.table_ref(None)
                if self.accept("kw", "on"):
                    ref["on"] = self.expr()
                out.append(ref)
                continue
            break
        return out

    def table_ref(self, on):
        tok = self.next()
        if tok[0] != "name":
            raise SkyServerError(f"Incorrect syntax near '{tok[1]}'.")
        name = tok[1]
        args = None
        if self.accept("op", "("):
            args = []
            while not self.accept("op", ")"):
                args.append(self.next()[1])
                self.accept("op", ",")
        alias = None
        if self.accept("kw", "as") or self.peek()[0] == "name":
            alias = self.next()[1]
        return {"name": name, "alias": alias or name.split(".")[-1], "args": args, "on": on}

    # expressions
    def expr(self):
        left = self.and_()
        while self.accept("kw", "or"):
            left = ("or", left, self.and_())
        return left

    def and_(self):
        left = self.not_()
        while self.accept("kw", "and"):
            left = ("and", left, self.not_())
        return left

    def not_(self):
        if self.accept("kw", "not"):
            return ("not", self.not_())
        return self.comparison()

    def comparison(self):
        left = self.additive()
        tok = self.peek()
        if tok[0] == "op" and tok[1] in ("=", "<", ">", "<=", ">=", "<>", "!="):
            self.next()
            return ("cmp", tok[1], left, self.additive())
        negate = bool(self.accept("kw", "not"))
        if self.accept("kw", "between"):
            lo = self.additive()
            self.expect("kw", "and")
            hi = self.additive()
            node = ("between", left, lo, hi)
            return ("not", node) if negate else node
        if self.accept("kw", "in"):
            self.expect("op", "(")
            values = [self.additive()]
            while self.accept("op", ","):
                values.append(self.additive())
            self.expect("op", ")")
            node = ("in", left, values)
            return ("not", node) if negate else node
        if self.accept("kw", "like"):
            node = ("like", left, self.additive())
            return ("not", node) if negate else node
        if negate:
            raise SkyServerError("Incorrect syntax near 'not'.")
        if self.accept("kw", "is"):
            neg = bool(self.accept("kw", "not"))
            self.expect("kw", "null")
            return ("isnull", left, neg)
        return left

    def additive(self):
        left = self.term()
        while self.peek()[0] == "op" and self.peek()[1] in "+-":
            op = self.next()[1]
            left = ("bin", op, left, self.term())
        return left

    def term(self):
        left = self.unary()
        while self.peek()[0] == "op" and self.peek()[1] in ("*", "/", "%"):
            op = self.next()[1]
            left = ("bin", op, left, self.unary())
        return left

    def unary(self):
        if self.accept("op", "-"):
            return ("neg", self.unary())
        if self.accept("op", "+"):
            return self.unary()
        return self.primary()

    def primary(self):
        tok = self.next()
        if tok[0] == "num":
            return ("const", float(tok[1]) if any(c in tok[1] for c in ".eE") else int(tok[1]))
        if tok[0] == "str":
            return ("const", tok[1][1:-1].replace("''", "'"))
        if tok[0] == "op" and tok[1] == "(":
            e = self.expr()
            self.expect("op", ")")
            return e
        if tok[0] == "kw" and tok[1] == "null":
            return ("const", None)
        if tok[0] == "name":
            if self.accept("op", "("):
                args = []
                if not self.accept("op", ")"):
                    args.append(self.expr())
                    while self.accept("op", ","):
                        args.append(self.expr())
                    self.expect("op", ")")
                return ("func", tok[1].lower(), args)
            return ("col", tok[1])
        raise SkyServerError(f"Incorrect syntax near '{tok[1] or 'end of statement'}'.")


# ------------------------------------------------------------------ evaluation
_PHOTO_TYPES = {0: "UNKNOWN", 1: "COSMIC_RAY", 2: "DEFECT", 3: "GALAXY", 4: "GHOST",
                5: "KNOWNOBJ", 6: "STAR", 7: "TRAIL", 8: "SKY", 9: "NOTATYPE"}


def _func(name, args):
    name = name.split(".")[-1]
    if name == "fphototypen":
        return np.array([_PHOTO_TYPES.get(int(v), "UNKNOWN") for v in np.atleast_1d(args[0])], dtype=object)
    simple = {"abs": np.abs, "sqrt": np.sqrt, "log10": np.log10, "floor": np.floor,
              "ceiling": np.ceil, "exp": np.exp, "log": np.log}
    with np.errstate(all="ignore"):
        if name in simple and len(args) == 1:
            return simple[name](np.asarray(args[0], dtype=float))
        if name == "power" and len(args) == 2:
            return np.power(np.asarray(args[0], dtype=float), args[1])
        if name == "round" and len(args) in (1, 2):
            return np.round(np.asarray(args[0], dtype=float), int(args[1]) if len(args) == 2 else 0)
    raise SkyServerError(f"'{name}' is not a recognized built-in function name.")


class _Context:
    """Column resolution for one query over a row selection of a source."""

    def __init__(self, tables, resolve):
        self.tables = tables  # alias(lower) -> schema (dict lower col -> key)
        self.order = list(tables)
        self.resolve = resolve  # key -> array for the current rows

    def column(self, ref):
        parts = ref.replace("[", "").replace("]", "").split(".")
        col = parts[-1].lower()
        if len(parts) >= 2:
            alias = parts[-2].lower()
            if alias not in self.tables:
                raise SkyServerError(f"The multi-part identifier \"{ref}\" could not be bound.")
            schema = self.tables[alias]
            if col not in schema:
                raise SkyServerError(f"Invalid column name '{parts[-1]}'.")
            return self.resolve(schema[col])
        keys = {self.tables[alias][col] for alias in self.order if col in self.tables[alias]}
        if len(keys) > 1:
            raise SkyServerError(f"Ambiguous column name '{parts[-1]}'.")
        if keys:
            return self.resolve(keys.pop())
        raise SkyServerError(f"Invalid column name '{parts[-1]}'.")

    def eval(self, node):
        kind = node[0]
        if kind == "const":
            return node[1]
        if kind == "col":
            return self.column(node[1])
        if kind == "func":
            return _func(node[1], [self.eval(a) for a in node[2]])
        if kind == "neg":
            return -np.asarray(self.eval(node[1]))
        if kind == "bin":
            a, b = self.eval(node[2]), self.eval(node[3])
            a, b = _numeric(a), _numeric(b)
            with np.errstate(all="ignore"):
                return {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide,
                        "%": np.mod}[node[1]](a, b)
        if kind == "cmp":
            a, b = self.eval(node[2]), self.eval(node[3])
            return _compare(node[1], a, b)
        if kind == "between":
            v = _numeric(self.eval(node[1]))
            return (v >= _numeric(self.eval(node[2]))) & (v <= _numeric(self.eval(node[3])))
        if kind == "in":
            v = self.eval(node[1])
            out = np.zeros(np.shape(v), dtype=bool)
            for item in node[2]:
                out |= _compare("=", v, self.eval(item))
            return out
        if kind == "like":
            v, pattern = self.eval(node[1]), self.eval(node[2])
            rx = re.compile("^" + re.escape(str(pattern)).replace("%", ".*").replace("_", ".") + "$",
                            re.IGNORECASE)
            return np.array([bool(rx.match(str(x))) for x in np.atleast_1d(v)])
        if kind == "isnull":
            v = self.eval(node[1])
            isnull = np.zeros(np.shape(v), dtype=bool) if v is not None else np.array(True)
            return ~isnull if node[2] else isnull
        if kind == "and":
            return np.logical_and(self.eval(node[1]), self.eval(node[2]))
        if kind == "or":
            return np.logical_or(self.eval(node[1]), self.eval(node[2]))
        if kind == "not":
            return np.logical_not(self.eval(node[1]))
        raise SkyServerError("Incorrect syntax.")  # pragma: no cover


def _numeric(v):
    arr = np.asarray(v)
    if arr.dtype.kind in "OUS":
        raise SkyServerError("Error converting data type varchar to float.")
    return arr


def _compare(op, a, b):
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    if a_arr.dtype.kind in "OUS" or b_arr.dtype.kind in "OUS":
        a_arr = np.char.lower(a_arr.astype(str))
        b_arr = np.char.lower(b_arr.astype(str))
    elif a_arr.dtype.kind == "u" or b_arr.dtype.kind == "u":
        # 64-bit identifiers: compare exactly
        a_arr = a_arr.astype(np.uint64) if a_arr.dtype.kind in "iu" else a_arr
        b_arr = b_arr.astype(np.uint64) if b_arr.dtype.kind in "iu" else b_arr
    ops = {"=": np.equal, "<": np.less, ">": np.greater, "<=": np.less_equal,
           ">=": np.greater_equal, "<>": np.not_equal, "!=": np.not_equal}
    return ops[op](a_arr, b_arr)


_DOC_RE = re.compile(r"^\s*select\s+\*\s+from\s+dbo\.fDocColumns\s*\(\s*'(\w+)'\s*\)\s*$", re.IGNORECASE)


def doc_columns(table_name):
    """Column list of a table as SkyServer's ``dbo.fDocColumns`` (list of dict rows).

    Parameters
    ----------
    table_name : str
        Table name, case-insensitive.

    Returns
    -------
    rows : list of dict
        One dict per column with ``name``, ``type``, ``unit``, ``ucd``, ``description``.
    """
    key = table_name.lower()
    if key == "field":
        names = list(FIELD_COLUMNS)
    elif key in GALAXY_TABLES:
        names = [_DISPLAY_NAMES.get(c, c) for c in GALAXY_TABLES[key]]
    else:
        raise SkyServerError(f"Invalid object name '{table_name}'.")
    return [{"name": n, "type": _INT_TYPES.get(n.lower(), "real"), "length": 8, "unit": "",
             "ucd": "", "description": f"{n} (simulated)", "rank": i} for i, n in enumerate(names)]


# Case as in the SDSS schema, for fDocColumns output.
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


def execute_sql(source, sql, *, rows=None, extra_tables=None):
    """Run a supported SQL statement against a mock sky.

    Parameters
    ----------
    source : `~astro_metallicity.mock.MockSky`
        The sky whose catalogue and fields are queried.
    sql : str
        The statement.
    rows : `~numpy.ndarray`, optional
        Catalogue row indices to query instead of the whole catalogue (used by
        the cross-id service; may repeat rows).
    extra_tables : dict, optional
        Extra aliases, ``{alias: {column: array over rows}}`` (cross-id upload).

    Returns
    -------
    names : list of str
        Output column names.
    columns : list of `~numpy.ndarray`
        Output columns.

    Raises
    ------
    SkyServerError
        For SQL outside the supported subset, unknown tables or columns.
    """
    if not sql or not sql.strip():
        raise SkyServerError("Empty query.")
    m = _DOC_RE.match(sql)
    if m:
        doc = doc_columns(m.group(1))
        names = ["name", "type", "length", "unit", "ucd", "description", "rank"]
        return names, [np.array([r[n] for r in doc], dtype=object) for n in names]
    q = _Parser(_tokenize(sql)).query()
    tables = q["tables"]
    kinds = []
    for t in tables:
        name = t["name"].split(".")[-1].lower()
        if t["args"] is not None:
            raise SkyServerError(f"Invalid object name '{t['name']}'.")
        if name == "field":
            kinds.append("field")
        elif name in GALAXY_TABLES:
            kinds.append("galaxy")
        elif extra_tables and t["alias"].lower() in extra_tables:
            kinds.append("extra")
        else:
            raise SkyServerError(f"Invalid object name '{t['name']}'.")
    if "field" in kinds and len(tables) > 1:
        raise SkyServerError("The mock SkyServer cannot join the Field table with other tables.")

    if kinds[0] == "field":
        ftab = source.field_table()
        data = {c.lower(): np.asarray(ftab[c]) for c in ftab.colnames}
        schema = {c.lower(): c.lower() for c in ftab.colnames}
        ctx = _Context({tables[0]["alias"].lower(): schema}, lambda key: data[key])
        n = len(ftab)
        star_cols = list(FIELD_COLUMNS)
    else:
        cols = source.sql_columns()
        n_all = len(next(iter(cols.values())))
        index = np.arange(n_all) if rows is None else np.asarray(rows, dtype=np.intp)
        n = len(index)
        cache = {}

        def resolve(key):
            if key not in cache:
                if key.startswith("@"):
                    alias, col = key[1:].split(".", 1)
                    cache[key] = np.asarray(extra_tables[alias][col])
                else:
                    cache[key] = cols[key][index]
            return cache[key]

        schemas = {}
        for t, kind in zip(tables, kinds):
            if kind == "extra":
                alias = t["alias"].lower()
                schemas[alias] = {c.lower(): f"@{alias}.{c}" for c in extra_tables[alias]}
            else:
                schemas[t["alias"].lower()] = GALAXY_TABLES[t["name"].split(".")[-1].lower()]
        ctx = _Context(schemas, resolve)
        first = tables[0]["name"].split(".")[-1].lower()
        star_cols = [_DISPLAY_NAMES.get(c, c) for c in GALAXY_TABLES.get(first, {})]

    mask = np.ones(n, dtype=bool)
    for t in tables:
        if t.get("on") is not None:
            mask &= np.broadcast_to(np.asarray(ctx.eval(t["on"]), dtype=bool), (n,))
    if q["where"] is not None:
        mask &= np.broadcast_to(np.asarray(ctx.eval(q["where"]), dtype=bool), (n,))
    sel = np.flatnonzero(mask)

    names, columns = [], []
    unnamed = 0
    for item in q["items"]:
        if item[0] == "star":
            for c in star_cols:
                names.append(c)
                columns.append(np.broadcast_to(ctx.column(c), (n,)))
            continue
        _, expr, alias, _ = item
        value = ctx.eval(expr)
        if alias is None:
            if expr[0] == "col":
                alias = expr[1].split(".")[-1].strip("[]")
            else:
                unnamed += 1
                alias = f"Column{unnamed}"
        names.append(alias)
        columns.append(np.broadcast_to(np.asarray(value), (n,)))
    columns = [c[sel] for c in columns]
    order = np.arange(len(sel))
    if q["order"]:
        keys = []
        for expr, desc in reversed(q["order"]):
            v = np.broadcast_to(np.asarray(ctx.eval(expr)), (n,))[sel]
            keys.append(v)
        order = np.lexsort(keys)
        # descending: emulate by reversing rank of a stable sort on the primary key only
        if q["order"][0][1]:
            order = order[::-1]
        columns = [c[order] for c in columns]
    if q["distinct"] and columns:
        seen, keep = set(), []
        for j, row in enumerate(zip(*[c.tolist() for c in columns])):
            if row not in seen:
                seen.add(row)
                keep.append(j)
        columns = [c[keep] for c in columns]
    if q["top"] is not None:
        columns = [c[:q["top"]] for c in columns]
    return names, columns


def _format_column(col):
    col = np.asarray(col)
    if col.dtype.kind in "iu":
        return col.astype(str)
    if col.dtype.kind == "f":
        out = np.char.mod("%.10g", col.astype(np.float64))
        return out
    if col.dtype.kind == "b":
        return col.astype(int).astype(str)
    return np.array([str(v) for v in col.tolist()], dtype=object)


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
