"""The mock SkyServer's SQL (sqlite3 behind a small T-SQL rewrite)."""

import threading

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from astro_metallicity.mock import MockSDSS, MockSky
from astro_metallicity.mock._sql import SkyServerError, execute_sql, table_to_csv


@pytest.fixture(scope="module")
def sky():
    return MockSky(200, seed=5)


def _run(sky, sql):
    names, columns = execute_sql(sky, sql)
    return dict(zip(names, columns))


def test_order_by_honours_every_direction(sky):
    """``ORDER BY a ASC, b DESC``: the second key descends within ties of the first."""
    res = _run(sky, "SELECT camcol, objID FROM Galaxy ORDER BY camcol ASC, objID DESC")
    cat = sky.catalog
    expected = sorted(zip(np.asarray(cat["camcol"]).tolist(), np.asarray(cat["objid"]).tolist()),
                      key=lambda r: (r[0], -r[1]))
    assert list(zip(res["camcol"].tolist(), res["objID"].tolist())) == expected
    desc = _run(sky, "SELECT TOP 5 camcol, objID FROM Galaxy ORDER BY camcol DESC, objID ASC")
    assert list(zip(desc["camcol"].tolist(), desc["objID"].tolist())) == sorted(
        expected, key=lambda r: (-r[0], r[1]))[:5]


def test_objid_keeps_64_bit_precision(sky):
    objid = int(sky.catalog["objid"][17])
    assert objid > 2 ** 60  # not representable exactly as a float
    res = _run(sky, f"SELECT objID, objID + 1 AS next, objID / 2 AS half, "
                    f"objID - {objid - 5} AS small FROM PhotoObj WHERE objID = {objid}")
    assert res["objID"].tolist() == [objid]
    assert res["next"].tolist() == [objid + 1]
    assert res["half"].tolist() == [objid // 2]  # T-SQL: bigint / int is an integer division
    assert res["small"].tolist() == [5]
    # comparisons are exact too: one neighbour either side is excluded
    between = f"objID > {objid - 1} AND objID < {objid + 1}"
    assert len(_run(sky, f"SELECT objID FROM Galaxy WHERE {between}")["objID"]) == 1
    sql = f"SELECT objID + 1 AS next FROM Galaxy WHERE objID = {objid}"
    csv = table_to_csv(*execute_sql(sky, sql))
    assert csv == f"#Table1\nnext\n{objid + 1}\n"


def test_objid_precision_through_astroquery():
    from astroquery.sdss import SDSS

    with MockSDSS(n_galaxies=20, seed=3) as sdss:
        objid = int(sdss.catalog["objid"][4])
        sql = f"SELECT objID, objID / 2 AS half FROM Galaxy WHERE objID = {objid}"
        res = SDSS.query_sql(sql, cache=False)
    assert int(res["objID"][0]) == objid and int(res["half"][0]) == objid // 2


def test_tsql_rewrite_top_dbo_brackets_and_names(sky):
    cat = sky.catalog
    res = execute_sql(sky, "select top 3 dbo.fPhotoTypeN(p.type), p.objid, p.[ra], [dec] d, "
                           "p.petroR90_r*2 AS [twice], p.ra + 0 FROM dbo.PhotoObj AS p;")
    names, columns = res
    # names as SQL Server gives them: column references as written, ColumnN for the rest
    assert names == ["Column1", "objid", "ra", "d", "twice", "Column2"]
    assert columns[0].tolist() == ["GALAXY"] * 3
    assert columns[1].tolist() == np.asarray(cat["objid"][:3]).tolist()  # catalogue order
    assert columns[4] == pytest.approx(2 * cat["petroR90_r"][:3].value)
    assert len(_run(sky, "SELECT TOP (2) objID FROM Galaxy")["objID"]) == 2
    distinct = _run(sky, "SELECT DISTINCT TOP 2 camcol FROM Galaxy ORDER BY camcol DESC")
    camcols = sorted(set(np.asarray(cat["camcol"]).tolist()), reverse=True)
    assert distinct["camcol"].tolist() == camcols[:2]
    # quoted text is left alone by the rewrite
    text = _run(sky, "SELECT TOP 1 'dbo.x #upload TOP 5' AS s FROM Galaxy")
    assert text["s"].tolist() == ["dbo.x #upload TOP 5"]


def test_strings_compare_case_insensitively(sky):
    res = _run(sky, "SELECT class, subClass FROM SpecObj "
                    "WHERE class = 'galaxy' AND subClass LIKE 'star%'")
    n_sf = int((np.asarray(sky.catalog["bptclass"]) == 1).sum())
    assert len(res["class"]) == n_sf > 0 and set(res["subClass"].tolist()) == {"STARFORMING"}


def test_skyserver_functions(sky):
    res = execute_sql(sky, "SELECT log(100), log10(100), power(2, 10), sqrt(16), floor(2.5), "
                           "ceiling(2.1), dbo.fPhotoTypeN(6), sqrt(-1) FROM Field "
                           "WHERE camcol = 1 AND field = 11")
    header = ",".join(f"Column{i}" for i in range(1, 9))
    # log is natural, as in T-SQL; NULL is an empty field
    assert table_to_csv(*res) == f"#Table1\n{header}\n4.605170186,2,1024,4,2,3,STAR,\n"


def test_fdoccolumns_lists_the_schema(sky):
    res = _run(sky, "select * from dbo.fDocColumns('SpecObjAll')")
    names = res["name"].tolist()
    assert names[:3] == ["specObjID", "bestObjID", "ra"] and "zErr" in names
    assert dict(zip(names, res["type"].tolist()))["bestObjID"] == "bigint"
    assert res["rank"].tolist() == list(range(len(names)))
    with pytest.raises(SkyServerError, match=r"Invalid object name 'NoTable'\."):
        execute_sql(sky, "select * from dbo.fDocColumns('NoTable')")


def test_field_ids_are_the_objid_prefix(sky):
    res = _run(sky, "SELECT fieldID, camcol, field FROM Field ORDER BY fieldID")
    cat = sky.catalog
    j = 0
    k = np.flatnonzero((res["camcol"] == cat["camcol"][j]) & (res["field"] == cat["field"][j]))[0]
    assert int(res["fieldID"][k]) == int(cat["objid"][j]) >> 16 << 16
    assert np.all(np.diff(res["fieldID"]) > 0)


@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT objID FROM NoSuchTable", r"Invalid object name 'NoSuchTable'\."),
    ("SELECT G.bogus FROM Galaxy AS G", r"Invalid column name 'bogus'\."),
    ("SELECT ra FROM Galaxy AS G JOIN SpecObj AS S ON S.bestObjID = G.objID",
     r"Ambiguous column name 'ra'\."),
    ("SELECT nosuch(ra) FROM Galaxy", r"'nosuch' is not a recognized built-in function name\."),
    ("SELECT ra FROM Galaxy WHERE", r"Incorrect syntax"),
    ("SELECT ra FROM Galaxy WHERE ra >> 1 AND (", r"Incorrect syntax"),
    ("DROP TABLE Galaxy", r"Incorrect syntax near 'DROP'\."),
    ("SELECT 1; DELETE FROM Galaxy", r"Incorrect syntax"),
    ("SELECT objID INTO mydb.x FROM Galaxy", r"Incorrect syntax near 'INTO'\."),
    ("SELECT * FROM \"#upload\"", r"Invalid object name '#upload'\."),
    ("   ", r"Empty query\."),
])
def test_errors_are_skyserver_like(sky, sql, message):
    with pytest.raises(SkyServerError, match=message):
        execute_sql(sky, sql)
    assert len(_run(sky, "SELECT TOP 1 objID FROM Galaxy")["objID"]) == 1  # still usable


def test_crossid_temp_tables_live_for_one_statement(sky):
    cat = sky.catalog
    objid = np.asarray(cat["objid"][[3, 9]])
    names = np.array(["a", "b", "c"], dtype=object)
    temp = {"#upload": {"up_id": np.array([1, 2, 3]), "up_name": names,
                        "up_ra": np.zeros(3), "up_dec": np.zeros(3)},
            "#x": {"up_id": np.array([1, 3]), "objID": objid, "distance": np.array([0.01, 0.02])}}
    names, columns = execute_sql(
        sky, "SELECT u.up_name, p.objID, p.petroR90_r FROM #upload u "
             "JOIN #x x ON x.up_id = u.up_id JOIN PhotoObjAll AS p ON p.objID = x.objID "
             "ORDER BY x.up_id DESC", temp_tables=temp)
    assert names == ["up_name", "objID", "petroR90_r"]
    assert columns[0].tolist() == ["c", "a"] and columns[1].tolist() == objid[::-1].tolist()
    assert columns[2] == pytest.approx(cat["petroR90_r"][[9, 3]].value)
    with pytest.raises(SkyServerError, match=r"Invalid object name '#x'\."):
        execute_sql(sky, "SELECT * FROM #x")


def test_concurrent_queries(sky):
    objids = np.asarray(sky.catalog["objid"][:16]).tolist()
    results, errors = {}, []

    def query(i):
        try:
            for _ in range(10):
                res = _run(sky, f"SELECT objID FROM Galaxy WHERE objID = {objids[i]}")
                results[i] = res["objID"].tolist()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=query, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [results[i] for i in range(16)] == [[o] for o in objids]


def test_match_agrees_with_brute_force(sky):
    cat = sky.catalog
    rng = np.random.default_rng(2)
    pick = rng.integers(0, len(cat), 30)
    ra = cat["ra"].value[pick] + rng.normal(0, 3, 30) / 3600
    dec = cat["dec"].value[pick] + rng.normal(0, 3, 30) / 3600
    ra, dec = np.r_[ra, 10.0], np.r_[dec, 40.0]  # the last position is far from the footprint
    catalog = SkyCoord(cat["ra"], cat["dec"])[None, :]
    sep = SkyCoord(ra, dec, unit="deg")[:, None].separation(catalog).arcsec
    for nearest, radius in ((True, 4.0), (False, 40.0)):
        up, rows, dist = sky.match(ra, dec, radius, nearest=nearest)
        expected = [(i, j) for i in range(len(ra))
                    for j in np.argsort(sep[i]) if sep[i, j] <= radius]
        if nearest:
            expected = [(i, j) for i, j in expected if j == np.argmin(sep[i])]
        assert list(zip(up.tolist(), rows.tolist())) == expected
        assert dist == pytest.approx(sep[up, rows] / 60, abs=1e-9)  # arcmin
