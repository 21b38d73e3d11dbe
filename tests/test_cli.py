"""Tests of the astro-metallicity command line."""

import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable, Table

from astro_metallicity._demo import demo_sample, save_montage
from astro_metallicity.cli import build_parser, main
from astro_metallicity.mock import MockSDSS


@pytest.fixture(scope="module")
def sdss():
    with MockSDSS(n_galaxies=30, seed=31, galaxies_per_field=30) as server:
        yield server


pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.mark.parametrize("suffix", [".ecsv", ".csv", ".fits"])
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
    fmt = {"ecsv": "ascii.ecsv", "csv": "ascii.csv", "fits": "fits"}[suffix[1:]]
    result = Table.read(out, format=fmt)
    assert list(result["id"]) == [3, 1, 2]
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
    with pytest.raises(SystemExit, match="exists; use --overwrite"):
        main(["predict", "--ra", "1", "--dec", "2", "-o", str(out), "--model", str(pipeline_model)])
    assert out.read_text() == "keep me"
    with pytest.raises(SystemExit, match="give a targets file or --ra and --dec"):
        main(["predict", "--model", str(pipeline_model)])
    with pytest.raises(SystemExit, match="same number of values"):
        main(["predict", "--ra", "1", "2", "--dec", "3", "--model", str(pipeline_model)])
    assert main(["predict", str(tmp_path / "nope.ecsv"), "--model", str(pipeline_model)]) == 2
    assert "nope.ecsv does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--scale", "-1"])


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
