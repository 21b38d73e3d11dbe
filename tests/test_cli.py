"""Tests of the astro-metallicity command line."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.io.votable.exceptions import W50
from astropy.table import QTable, Table

from astro_metallicity._demo import demo_sample, save_montage
from astro_metallicity.cli import build_parser, main
from astro_metallicity.mock import MockSDSS


@pytest.fixture(scope="module")
def sdss():
    with MockSDSS(n_galaxies=30, seed=31, galaxies_per_field=30) as server:
        yield server


pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.mark.parametrize("suffix", [".ecsv", ".csv", ".fits", ".vot", ".xml"])
def test_predict_writes_table(tmp_path, sdss, pipeline_model, suffix, capsys):
    cat = sdss.catalog
    targets = Table({"id": [3, 1, 2], "ra": list(cat["ra"][:2].to_value(u.deg)) + [np.nan],
                     "dec": list(cat["dec"][:2].to_value(u.deg)) + [0.0]})
    infile = tmp_path / "targets.ecsv"
    targets.write(infile)
    out = tmp_path / f"out{suffix}"
    montage = tmp_path / "montage.png"
    status = main(["predict", str(infile), "-o", str(out), "--model", str(pipeline_model),
                   "--source", "jpeg", "--montage", str(montage)])
    assert status == 0
    assert f"wrote 3 rows (2 predicted) to {out}" in capsys.readouterr().out
    fmt = {"ecsv": "ascii.ecsv", "csv": "ascii.csv", "fits": "fits", "vot": "votable",
           "xml": "votable"}[suffix[1:]]
    with warnings.catch_warnings():
        # VOTable's unit grammar has no 'dex' (W50); astropy reads the unit all the same
        warnings.filterwarnings("ignore", message=".*Invalid unit string 'dex'",
                                category=W50)
        result = Table.read(out, format=fmt)
    assert list(result["id"]) == [3, 1, 2]
    assert str(result["flag"][2]).startswith("bad_coordinates")
    if fmt in ("ascii.ecsv", "votable"):  # (FITS and CSV readers mask empty strings)
        assert list(result["flag"][:2]) == ["", ""]
    values = np.ma.filled(np.ma.asarray(result["metallicity"], dtype=float), np.nan)
    assert np.all(np.isfinite(values[:2])) and np.isnan(values[2])
    if suffix != ".csv":
        assert str(result["metallicity"].unit) == "dex"
    assert montage.stat().st_size > 1000
    assert montage.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_ra_dec_prints_table(sdss, pipeline_model, capsys):
    ra, dec = sdss.catalog["ra"][0].to_value(u.deg), sdss.catalog["dec"][0].to_value(u.deg)
    status = main(["predict", "--ra", str(ra), "--dec", str(dec), "--model", str(pipeline_model),
                   "--source", "jpeg", "--scale", "0.4"])
    assert status == 0
    out = capsys.readouterr().out
    assert "metallicity" in out and "dex" in out


def test_predict_refuses_to_overwrite_and_bad_arguments(tmp_path, pipeline_model, capsys):
    out = tmp_path / "out.ecsv"
    out.write_text("keep me")
    assert main(["predict", "--ra", "1", "--dec", "2", "-o", str(out),
                 "--model", str(pipeline_model)]) == 2
    assert "exists; use --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert main(["predict", "--model", str(pipeline_model)]) == 2
    assert "give a targets file or --ra and --dec" in capsys.readouterr().err
    assert main(["predict", "--ra", "1", "2", "--dec", "3", "--model", str(pipeline_model)]) == 2
    assert "same number of values" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope.ecsv"), "--model", str(pipeline_model)]) == 2
    assert "nope.ecsv does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--scale", "-1"])


def _bad_predict_arguments(tmp_path):
    """(arguments, expected message) pairs that must stop ``predict`` before it predicts."""
    targets = tmp_path / "targets.ecsv"
    Table({"ra": [1.0], "dec": [2.0]}).write(targets)
    (tmp_path / "targets.txt").write_text("ra dec\n1 2\n")
    (tmp_path / "broken.ecsv").write_text("# %ECSV 1.0\n# ---\n# datatype: [oops\nra dec\n")
    (tmp_path / "existing.ecsv").write_text("keep me")
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "a_dir.ecsv").mkdir()
    t = str(targets)
    return [
        ([t, "-o", str(tmp_path / "no_such_dir" / "out.ecsv")],
         r"-o/--output: directory \S+no_such_dir does not exist"),
        ([t, "-o", str(tmp_path / "a_file" / "out.ecsv")],
         r"-o/--output: directory \S+a_file is not a directory"),
        ([t, "-o", str(tmp_path / "out.txt")],
         r"-o/--output: cannot tell the table format of \S+out.txt from its extension '.txt'; "
         r"use one of .ecsv, .csv, .fits, .fit, .vot, .xml \(.txt does not say"),
        ([t, "-o", str(tmp_path / "out")], r"extension '\(none\)'; use one of .ecsv"),
        ([t, "-o", str(tmp_path / "existing.ecsv")], r"existing.ecsv exists; use --overwrite"),
        ([t, "-o", str(tmp_path / "a_dir.ecsv"), "--overwrite"], r"a_dir.ecsv is a directory"),
        ([t, "--format", "bogus"], r"--format 'bogus' is not a table format astropy reads"),
        ([str(tmp_path / "targets.txt")],
         r"cannot tell the table format of \S+targets.txt; give it with --format"),
        ([str(tmp_path / "broken.ecsv")], r"cannot read targets file \S+broken.ecsv: \w+"),
        ([t, "--montage", str(tmp_path / "montage.txt")],
         r"--montage: cannot tell the image format of \S+montage.txt"),
        ([t, "--montage", str(tmp_path / "no_such_dir" / "m.png")],
         r"--montage: directory \S+no_such_dir does not exist"),
    ]


def test_output_and_formats_are_checked_before_predicting(tmp_path, monkeypatch, capsys):
    """A typo in the output, the montage or the input format is a one-line error (status 2)
    before anything is predicted, not a traceback at the end of a long run."""
    import re

    import astro_metallicity.predict

    calls = []
    monkeypatch.setattr(astro_metallicity.predict, "predict_metallicity",
                        lambda *args, **kwargs: calls.append(args))
    for argv, expected in _bad_predict_arguments(tmp_path):
        status = main(["predict", *argv, "--source", "jpeg"])
        err = capsys.readouterr().err
        assert status == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("astro-metallicity predict: error: "), err
        assert re.search(expected, err), (expected, err)
        assert calls == [], argv
    assert (tmp_path / "existing.ecsv").read_text() == "keep me"


def test_demo_checks_its_output_directory_first(tmp_path, monkeypatch, capsys):
    from astro_metallicity import mock

    def refuse(*args, **kwargs):
        raise AssertionError("the simulated sky was started before the output was checked")

    monkeypatch.setattr(mock, "MockSDSS", refuse)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["demo", "-o", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astro-metallicity: error: cannot create the output directory"), err
    assert main(["demo", "-o", str(blocker / "below")]) == 2
    assert "cannot create the output directory" in capsys.readouterr().err


def test_demo_writes_table_and_montage(tmp_path, pipeline_model, capsys):
    status = main(["demo", "--galaxies", "40", "--seed", "2026", "-n", "4", "--source", "jpeg",
                   "--model", str(pipeline_model), "-o", str(tmp_path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "RMSE =" in out and "Predicted 4 of 6 targets" in out
    result = QTable.read(tmp_path / "demo_predictions.ecsv")
    assert len(result) == 6
    assert list(result["flag"][:4]) == [""] * 4 or np.all(np.ma.getmaskarray(result["flag"][:4]))
    assert str(result["flag"][4]).startswith("bad_coordinates")
    assert result["flag"][5] == "outside_footprint"
    z = result["metallicity"]
    true = result["oh_true"]
    rmse = np.sqrt(np.mean((z[:4].unmasked - true[:4]).to_value(u.dex) ** 2))
    assert f"RMSE = {rmse:.3f} dex" in out
    png = tmp_path / "demo_cutouts.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_sample_is_fixed_and_flags_two_rows(sdss):
    a = demo_sample(sdss.catalog, 5, seed=7)
    b = demo_sample(sdss.catalog, 5, seed=7)
    assert len(a) == 7
    np.testing.assert_array_equal(a["objid"], b["objid"])
    assert np.isnan(a["ra"][5].value)
    row_of = {int(objid): k for k, objid in enumerate(sdss.catalog["objid"])}
    rows = [row_of[int(objid)] for objid in a["objid"][:5]]
    np.testing.assert_allclose(a["oh_true"][:5].to_value(u.dex),
                               sdss.catalog["oh_p50"][rows].to_value(u.dex))


def test_montage_leaves_the_matplotlib_backend_alone(tmp_path, monkeypatch):
    import matplotlib

    def refuse(*args, **kwargs):
        raise AssertionError("matplotlib.use() switches the backend of the user's whole process")

    monkeypatch.setattr(matplotlib, "use", refuse)
    images = np.zeros((3, 16, 16, 3), dtype=np.uint8)
    images[1, 4:12, 4:12] = 255
    path = tmp_path / "montage.png"
    save_montage(images, ["a", "b", "c"], path, ncols=2)
    from PIL import Image

    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (440, 500)  # 2 columns x 2.2 in, 2 rows x 2.5 in, at 100 dpi


def test_no_command_prints_help(capsys):
    assert main([]) == 1
    assert "predict" in capsys.readouterr().out


def test_train_and_evaluate_are_delegated(monkeypatch):
    import astro_metallicity.train.cli as train_cli

    calls = []
    monkeypatch.setattr(train_cli, "train", lambda argv: calls.append(("train", argv)) or 0)
    monkeypatch.setattr(train_cli, "evaluate", lambda argv: calls.append(("evaluate", argv)) or 0)
    assert main(["train", "--images", "x", "--epochs", "2"]) == 0
    assert main(["-v", "evaluate", "--model", "m.pt"]) == 0
    assert calls == [("train", ["--images", "x", "--epochs", "2"]),
                     ("evaluate", ["--model", "m.pt"])]
    from astro_metallicity import log

    assert log.level != 10  # -v (DEBUG) did not outlive the command


def test_mock_sdss_command_calls_serve(monkeypatch):
    from astro_metallicity import mock

    seen = {}
    monkeypatch.setattr(mock, "serve", lambda **kwargs: seen.update(kwargs))
    assert main(["mock-sdss", "--port", "8123", "--galaxies", "50", "--seed", "4"]) == 0
    assert seen == {"port": 8123, "n_galaxies": 50, "seed": 4}
