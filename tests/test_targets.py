"""Tests of astro_metallicity.targets.resolve_targets."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import MaskedColumn, QTable, Table

from astro_metallicity.targets import resolve_targets


def test_scalar_skycoord():
    res = resolve_targets(SkyCoord(10.5, -3.25, unit="deg"))
    assert res.scalar
    assert len(res) == 1
    assert res.coords.shape == (1,)
    assert res.coords[0].ra.deg == pytest.approx(10.5)
    assert list(res.flags) == [""]
    assert res.table.colnames == ["coord"]


def test_array_skycoord_other_frame_becomes_icrs():
    gal = SkyCoord(l=[10, 200] * u.deg, b=[45, -30] * u.deg, frame="galactic")
    res = resolve_targets(gal)
    assert not res.scalar
    assert res.coords.frame.name == "icrs"
    assert res.coords.separation(gal.icrs).max() < 1e-9 * u.deg
    assert res.good.all()


@pytest.mark.parametrize(("ra_name", "dec_name"), [
    ("ra", "dec"), ("RA", "DEC"), ("ra_deg", "dec_deg"), ("RAJ2000", "DEJ2000"),
    ("RA_ICRS", "DE_ICRS"), ("PLUG_RA", "PLUG_DEC")])
def test_table_column_names(ra_name, dec_name):
    t = Table({"id": [1, 2, 3], ra_name: [150.0, 10.0, 359.5], dec_name: [2.0, -5.0, 0.1]})
    res = resolve_targets(t)
    np.testing.assert_allclose(res.coords.ra.deg, [150.0, 10.0, 359.5])
    np.testing.assert_allclose(res.coords.dec.deg, [2.0, -5.0, 0.1])
    assert res.table.colnames == ["id", ra_name, dec_name]
    assert list(res.table["id"]) == [1, 2, 3]


def test_quantity_columns_in_other_units():
    t = QTable({"ra": [np.pi / 2, np.pi] * u.rad, "dec": [600.0, -1800.0] * u.arcmin})
    res = resolve_targets(t)
    np.testing.assert_allclose(res.coords.ra.deg, [90.0, 180.0])
    np.testing.assert_allclose(res.coords.dec.deg, [10.0, -30.0])


def test_skycoord_column_wins():
    t = QTable({"pos": SkyCoord([1.0, 2.0], [3.0, 4.0], unit="deg"), "ra": [50.0, 60.0],
                "dec": [0.0, 0.0]})
    res = resolve_targets(t)
    np.testing.assert_allclose(res.coords.ra.deg, [1.0, 2.0])


def test_bad_rows_are_flagged_not_raised():
    t = Table({"ra": MaskedColumn([10.0, np.nan, 20.0, 30.0, 40.0, 500.0],
                                  mask=[False, False, False, True, False, False]),
               "dec": [0.0, 1.0, 95.0, 2.0, -45.0, 0.0]})
    res = resolve_targets(t)
    flags = list(res.flags)
    assert flags[0] == "" and flags[4] == ""
    assert flags[1].startswith("bad_coordinates")  # NaN
    assert flags[2].startswith("bad_coordinates")  # dec > 90
    assert flags[3].startswith("bad_coordinates")  # masked
    assert flags[5].startswith("bad_coordinates")  # ra out of range
    np.testing.assert_array_equal(res.good, [True, False, False, False, True, False])
    # good rows keep their positions; bad rows get a finite placeholder
    assert res.coords[4].dec.deg == pytest.approx(-45.0)
    assert np.all(np.isfinite(res.coords.ra.deg))


def test_negative_ra_wraps():
    res = resolve_targets(Table({"ra": [-10.0], "dec": [0.0]}))
    assert res.coords[0].ra.deg == pytest.approx(350.0)
    assert res.good.all()


def test_string_numbers_and_sexagesimal_are_parsed():
    res = resolve_targets(Table({"ra": ["12.5", "oops", "10:30:00", "1h00m00s", ""],
                                 "dec": ["1", "2", "-01:30:00", "+2d30m", "3"]}))
    np.testing.assert_allclose(res.coords.ra.deg[[0, 2, 3]], [12.5, 157.5, 15.0])
    np.testing.assert_allclose(res.coords.dec.deg[[0, 2, 3]], [1.0, -1.5, 2.5])
    assert list(res.good) == [True, False, True, True, False]


def test_table_without_coordinates_raises():
    with pytest.raises(ValueError, match="no coordinate columns.*add a SkyCoord column"):
        resolve_targets(Table({"x": [1.0], "y": [2.0]}))


def test_wrong_type_raises():
    with pytest.raises(TypeError, match="SkyCoord or Table"):
        resolve_targets([(10.0, 1.0)])


def test_non_angle_unit_raises():
    with pytest.raises(u.UnitsError, match="not an angle"):
        resolve_targets(QTable({"ra": [1.0] * u.m, "dec": [1.0] * u.deg}))


def test_input_table_is_not_modified():
    t = Table({"ra": [1.0, np.nan], "dec": [2.0, 3.0]})
    resolve_targets(t)
    assert t.colnames == ["ra", "dec"]
    assert np.isnan(t["ra"][1])


def test_masked_skycoord_entries_are_flagged_not_predicted_at_hidden_position():
    from astropy.utils.masked import Masked

    ra = Masked([10.0, 20.0, 30.0] * u.deg, mask=[False, True, False])
    dec = Masked([1.0, 2.0, 3.0] * u.deg, mask=[False, False, True])
    coords = SkyCoord(ra, dec)
    for targets in (coords, QTable({"pos": coords}), QTable({"ra": ra, "dec": dec})):
        res = resolve_targets(targets)
        assert list(res.flags) == ["", "bad_coordinates: masked", "bad_coordinates: masked"]
        assert res.coords[0].ra.deg == pytest.approx(10.0)
        # the hidden values (20, 2) and (30, 3) are never used as positions
        np.testing.assert_allclose(res.coords.ra.deg[1:], 0.0)


def test_sexagesimal_ra_strings_are_hours_whatever_the_number_of_fields():
    ra = ["12:19", "12:19:00", "12 19", "12 19 00.0", "12h19m", "12h19m00s", "184.75", "184d45m"]
    res = resolve_targets(Table({"ra": ra, "dec": ["+01:30"] * len(ra)}))
    assert res.good.all()
    np.testing.assert_allclose(res.coords.ra.deg, 184.75)
    np.testing.assert_allclose(res.coords.dec.deg, 1.5)


def test_unusable_angle_strings_are_flagged_with_the_reason():
    res = resolve_targets(Table({"ra": ["12:75", "12:19:60", "1:2:3:4", "12h19d", "oops", "",
                                        "10.0"],
                                 "dec": ["0"] * 6 + ["1h"]}))
    flags = list(res.flags)
    assert flags[0].startswith("bad_coordinates: cannot parse ra '12:75' (An invalid value for "
                               "'minute'")
    assert flags[1].startswith("bad_coordinates: cannot parse ra '12:19:60' ('second' was found")
    assert flags[2].startswith("bad_coordinates: cannot parse ra '1:2:3:4' (syntax error")
    assert flags[3] == "bad_coordinates: cannot parse ra '12h19d' (mixes hours and degrees)"
    assert flags[4].startswith("bad_coordinates: cannot parse ra 'oops'")
    assert flags[5] == "bad_coordinates: missing or not finite"
    assert flags[6] == "bad_coordinates: dec '1h' is in hours; give declination in degrees"
