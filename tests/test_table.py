"""Tests of the result table: masks, flags, and flags that survive writing and reading."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import QTable, Table

from astro_metallicity._demo import write_table
from astro_metallicity.table import build_result_table

FLAGS = ["", "bad_coordinates: missing or not finite", "", "outside_footprint", ""]
GOOD = [flag == "" for flag in FLAGS]


def _result():
    """A result as predict_metallicity makes it: SkyCoord input, good and flagged rows."""
    coords = SkyCoord([10.0, 0.0, 20.0, 30.0, 40.0], [1.0, 0.0, 2.0, 3.0, 4.0], unit="deg")
    predictions = {"metallicity": np.array([8.9, np.nan, 9.0, np.nan, 8.7]),
                   "metallicity_err": np.array([0.1, np.nan, 0.12, np.nan, 0.09])}
    return build_result_table(QTable({"coord": coords}), FLAGS, predictions)


def test_flag_column_is_text_and_never_masked():
    result = _result()
    assert list(result["flag"]) == FLAGS
    assert not np.any(result["flag"].mask)
    assert list(result["flag"] == "") == GOOD
    assert list(result["metallicity"].mask) == [not good for good in GOOD]


def _read(path, **kwargs):
    with warnings.catch_warnings():
        # FITS has no 'dex' unit: astropy says so when the table is read back
        warnings.simplefilter("ignore", u.UnitsWarning)
        return Table.read(path, **kwargs)


@pytest.mark.parametrize("table_class", [Table, QTable])
def test_flags_survive_ecsv(tmp_path, table_class):
    path = tmp_path / "result.ecsv"
    write_table(_result(), path, overwrite=False)  # what the CLI does for -o x.ecsv
    back = table_class.read(path)
    assert list(back["flag"]) == FLAGS
    assert list(back["flag"] == "") == GOOD
    assert list(np.asarray(back["metallicity"].mask)) == [not good for good in GOOD]


def test_flags_from_fits_with_the_documented_fill(tmp_path):
    """FITS readers mask every empty string; the documented ``filled("")`` gives them back."""
    path = tmp_path / "result.fits"
    write_table(_result(), path, overwrite=False)
    back = _read(path)
    back["flag"] = back["flag"].filled("")
    assert list(back["flag"] == "") == GOOD
    assert list(back["flag"]) == FLAGS
    assert list(np.asarray(back["metallicity"].mask)) == [not good for good in GOOD]


def test_flags_from_csv_with_the_documented_reader_option(tmp_path):
    path = tmp_path / "result.csv"
    write_table(_result(), path, overwrite=False)
    back = _read(path, format="ascii.csv", fill_exclude_names=["flag"])
    assert list(back["flag"] == "") == GOOD
    assert list(back["flag"]) == FLAGS
    # the predictions are still masked where the CSV cell is empty
    assert list(np.asarray(back["metallicity"].mask)) == [not good for good in GOOD]


def test_non_finite_prediction_is_flagged_model_failed():
    result = build_result_table(
        Table({"name": ["a", "b", "c", "d"]}), ["", "", "", "outside_footprint"],
        {"metallicity": np.array([8.9, np.nan, 9.0, np.nan]),
         "metallicity_err": np.array([0.1, 0.1, np.inf, np.nan])})
    assert list(result["flag"]) == ["", "model_failed: non-finite output",
                                    "model_failed: non-finite output", "outside_footprint"]
    for name in ("metallicity", "metallicity_err"):
        assert list(result[name].mask) == [False, True, True, True]


def test_lengths_and_clashes_are_checked():
    with pytest.raises(ValueError, match="flags has 1 entries for a table of 2 rows"):
        build_result_table(Table({"a": [1, 2]}), [""], {})
    with pytest.raises(ValueError, match="already has column"):
        build_result_table(Table({"flag": ["x"]}), [""], {})
