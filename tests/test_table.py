"""Tests of the result table: masks, flags, and flags that survive writing and reading."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import QTable, Table

from astro_metallicity._demo import OUTPUT_FORMATS, write_table
from astro_metallicity.table import FLAG_OK, build_result_table

PROBLEMS = ["", "bad_coordinates: missing or not finite", "", "outside_footprint", ""]
GOOD = [problem == "" for problem in PROBLEMS]
FLAGS = [problem or "ok" for problem in PROBLEMS]


def _result():
    """A result as predict_metallicity makes it: SkyCoord input, good and flagged rows."""
    coords = SkyCoord([10.0, 0.0, 20.0, 30.0, 40.0], [1.0, 0.0, 2.0, 3.0, 4.0], unit="deg")
    predictions = {"metallicity": np.array([8.9, np.nan, 9.0, np.nan, 8.7]),
                   "metallicity_err": np.array([0.1, np.nan, 0.12, np.nan, 0.09])}
    return build_result_table(QTable({"coord": coords}), PROBLEMS, predictions)


def test_flag_column_is_text_never_masked_never_empty():
    result = _result()
    assert FLAG_OK == "ok"
    assert list(result["flag"]) == FLAGS
    assert not np.any(getattr(result["flag"], "mask", False))
    assert list(result["flag"] == "ok") == GOOD
    assert list(result["metallicity"].mask) == [not good for good in GOOD]


@pytest.mark.parametrize("suffix", sorted(OUTPUT_FORMATS))
@pytest.mark.parametrize("table_class", [Table, QTable])
def test_flags_survive_every_output_format(tmp_path, suffix, table_class):
    """Issue 12: flags read back as written, with the reader's defaults, from every format
    the CLI writes (empty flags used to come back masked from FITS and CSV)."""
    path = tmp_path / f"result{suffix}"
    write_table(_result(), path, overwrite=False)  # what the CLI does for -o result<suffix>
    with warnings.catch_warnings():
        # FITS and VOTable have no 'dex' unit: astropy says so when the table is read back
        warnings.simplefilter("ignore", u.UnitsWarning)
        back = table_class.read(path)
    assert list(back["flag"]) == FLAGS
    assert list(back["flag"] == "ok") == GOOD
    assert list(np.asarray(back["metallicity"].mask)) == [not good for good in GOOD]


def test_non_finite_prediction_is_flagged_model_failed():
    result = build_result_table(
        Table({"name": ["a", "b", "c", "d"]}), ["", "", "", "outside_footprint"],
        {"metallicity": np.array([8.9, np.nan, 9.0, np.nan]),
         "metallicity_err": np.array([0.1, 0.1, np.inf, np.nan])})
    assert list(result["flag"]) == ["ok", "model_failed: non-finite output",
                                    "model_failed: non-finite output", "outside_footprint"]
    for name in ("metallicity", "metallicity_err"):
        assert list(result[name].mask) == [False, True, True, True]


def test_lengths_and_clashes_are_checked():
    with pytest.raises(ValueError, match="flags has 1 entries for a table of 2 rows"):
        build_result_table(Table({"a": [1, 2]}), [""], {})
    with pytest.raises(ValueError, match="already has column"):
        build_result_table(Table({"flag": ["x"]}), [""], {})
