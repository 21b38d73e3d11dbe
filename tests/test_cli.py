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
    assert list(result["flag"][:2]) == ["ok", "ok"]  # (not '', which CSV/FITS read as masked)
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
    assert list(result["flag"][:4]) == ["ok"] * 4
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


# --- large jobs on a Dask cluster (--scheduler / --workers) --------------------------------------

@pytest.fixture(scope="module")
def scheduler():
    """Address of a LocalCluster of two worker processes, one thread each."""
    distributed = pytest.importorskip("dask.distributed")
    pytest.importorskip("lsdb")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        # the workers' first task imports torch, pandas, ... (seconds on busy cores): done
        # here once, so that the tests time the jobs
        import importlib

        with distributed.Client(cluster, set_as_default=False) as client:
            for name in ("torch", "pyarrow.parquet", "hats", "astro_metallicity.predict",
                         "astro_metallicity.distributed", "distributed.shuffle"):
                client.run(importlib.import_module, name)
        yield cluster.scheduler_address


def _parquet_targets(sdss, path):
    """The sky's galaxies in a shuffled order, then bad rows, with IDs, as a Parquet file."""
    import pandas as pd

    cat = sdss.catalog
    pick = np.random.default_rng(4).permutation(len(cat))
    ra = np.r_[cat["ra"].to_value(u.deg)[pick], np.nan, 10.0, 500.0]
    dec = np.r_[cat["dec"].to_value(u.deg)[pick], 0.0, -80.0, 0.0]
    frame = pd.DataFrame({"objid": 7000 + 3 * np.arange(len(ra)), "ra": ra, "dec": dec})
    frame.to_parquet(path)
    return frame


def _read_partitions(out):
    """All partition files of a job directory, as one frame in the input order."""
    import pandas as pd

    files = sorted(out.rglob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files]).sort_values("input_row"), files


def _stamps(files):
    return {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}


def _big_job_argv(tmp_path, sdss, pipeline_model, scheduler):
    frame = _parquet_targets(sdss, tmp_path / "targets.parquet")
    argv = ["predict", str(tmp_path / "targets.parquet"), "-o", str(tmp_path / "out"),
            "--scheduler", scheduler, "--model", str(pipeline_model), "--source", "jpeg",
            "--no-progress", "--partition-rows", "6"]
    return frame, argv


def test_big_job_matches_one_process(tmp_path, sdss, pipeline_model, scheduler, capsys):
    """Partitions written by the cluster hold the one-process values (1e-6 dex), IDs, flags
    and units; a rerun with other settings is refused and touches nothing."""
    import pyarrow.parquet as pq

    from astro_metallicity import conf, predict_metallicity
    from astro_metallicity.table import FLAG_OK

    frame, argv = _big_job_argv(tmp_path, sdss, pipeline_model, scheduler)
    out = tmp_path / "out"
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Dask dashboard: http" in captured.err
    result, files = _read_partitions(out)
    # every galaxy of the sky predicted, the three bad rows not (the flags say why if not)
    problems = {int(row): flag for row, flag in zip(result["input_row"], result["flag"])
                if flag != "ok"}
    assert sorted(problems) == list(range(len(frame) - 3, len(frame))), problems
    assert f"wrote {len(frame)} rows ({len(frame) - 3} predicted) in" in captured.out
    assert len(files) >= 4  # the sky's galaxies are split into HEALPix tiles
    with conf.set_temp("cache_dir", str(tmp_path / "reference-cache")):
        ref = predict_metallicity(Table.from_pandas(frame), source="jpeg",
                                  model=pipeline_model, progress=False)
    assert list(result["input_row"]) == list(range(len(frame)))
    assert list(result["objid"]) == list(frame["objid"])
    flags = result["flag"].to_numpy(dtype=str)
    np.testing.assert_array_equal(flags, np.asarray(ref["flag"], dtype=str))
    assert (flags[:-3] == FLAG_OK).all()
    assert str(flags[-3]).startswith("bad_coordinates") and flags[-2] == "outside_footprint"
    for name in ("metallicity", "metallicity_err", "log_mstar", "log_mstar_err"):
        np.testing.assert_allclose(result[name].to_numpy(dtype=float),
                                   ref[name].filled(np.nan).value, atol=1e-6, rtol=0,
                                   equal_nan=True)
    schema = pq.read_schema(files[0])
    assert schema.field("metallicity").metadata == {b"unit": b"dex"}
    assert schema.field("log_mstar").metadata == {b"unit": b"dex(solMass)"}
    # the finished directory is a HATS catalogue of the positioned rows
    lsdb = pytest.importorskip("lsdb")
    catalog = lsdb.open_catalog(out).compute()
    assert sorted(catalog["objid"]) == sorted(frame["objid"][np.isfinite(frame["ra"])])

    # other settings: refused before anything runs, nothing touched
    stamps = _stamps(files)
    status = main([*argv[:-2], "--partition-rows", "4"])
    err = capsys.readouterr().err
    assert status == 2
    assert "holds a job with other inputs or settings (partition_rows 6 -> 4)" in err
    assert "--overwrite" in err
    status = main(["frames" if arg == "jpeg" else arg for arg in argv])
    assert status == 2
    assert "(source 'jpeg' -> 'frames')" in capsys.readouterr().err
    assert _stamps(sorted(out.rglob("*.parquet"))) == stamps


def test_big_job_resumes(tmp_path, sdss, pipeline_model, scheduler, monkeypatch, capsys):
    """A job stopped after two partitions resumes with the others only; partition files
    deleted later are redone, alone."""
    import json

    from astro_metallicity import distributed

    frame, argv = _big_job_argv(tmp_path, sdss, pipeline_model, scheduler)
    out = tmp_path / "out"
    write = distributed._write_partition
    written = []

    def stop_after_two(part, path):
        write(part, path)
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt  # as Ctrl-C, or a job killed, between two partitions

    monkeypatch.setattr(distributed, "_write_partition", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.setattr(distributed, "_write_partition", write)
    assert sorted(out.rglob("*.parquet")) == sorted(written)
    first = _stamps(written)
    manifest = json.loads((out / distributed.MANIFEST_NAME).read_text())
    n_parts = sum(part["rows"] > 0 for part in manifest["partitions"])
    assert n_parts >= 4
    capsys.readouterr()

    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"{n_parts - 2} partitions to predict, 2 already written" in captured.err
    assert "partitions were already written" in captured.out
    assert _stamps(written) == first  # the two finished files were not rewritten
    result, files = _read_partitions(out)
    assert len(files) == n_parts
    assert list(result["objid"]) == list(frame["objid"])  # every row, once

    gone = [f for f in files if f not in written][:2]
    for f in gone:
        f.unlink()
    kept = _stamps(f for f in files if f not in gone)
    assert main(argv) == 0
    assert "2 partitions to predict" in capsys.readouterr().err
    assert _stamps(kept) == kept
    again, _ = _read_partitions(out)
    assert list(again["objid"]) == list(frame["objid"])
    np.testing.assert_array_equal(again["metallicity"].to_numpy(dtype=float),
                                  result["metallicity"].to_numpy(dtype=float))


# lsdb 0.11 calls NestedFrame.set_index/drop(inplace=True), deprecated by pandas 3.1
@pytest.mark.filterwarnings("ignore:The inplace keyword in NestedFrame")
def test_big_job_from_hats_catalogue(tmp_path, sdss, pipeline_model, scheduler, capsys):
    """A HATS catalogue is predicted tile by tile: each file holds the rows of its tile."""
    from astropy_healpix import HEALPix

    lsdb = pytest.importorskip("lsdb")
    frame = _parquet_targets(sdss, tmp_path / "targets.parquet").iloc[:-3]
    lsdb.from_dataframe(frame, ra_column="ra", dec_column="dec", lowest_order=10,
                        highest_order=10, margin_threshold=None,
                        should_generate_moc=False).write_catalog(tmp_path / "hats")
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "hats"), "-o", str(out), "--scheduler", scheduler,
                 "--model", str(pipeline_model), "--source", "jpeg", "--no-progress"]) == 0
    files = sorted((out / "dataset").rglob("Npix=*.parquet"))
    assert len(files) > 1
    import pandas as pd

    seen = []
    for path in files:
        part = pd.read_parquet(path)
        order = int(path.parent.parent.name.removeprefix("Norder="))
        pixel = int(path.stem.removeprefix("Npix="))
        truth = HEALPix(nside=2 ** order, order="nested").lonlat_to_healpix(
            part["ra"].to_numpy() * u.deg, part["dec"].to_numpy() * u.deg)
        assert (truth == pixel).all(), path
        seen += list(part["objid"])
    assert sorted(seen) == sorted(frame["objid"])


def test_big_job_arguments_are_checked_first(tmp_path, monkeypatch, capsys):
    """Mistakes in a large job's command line are one-line errors before any cluster starts."""
    import re

    # without the [distributed] extra every such command stops earlier, at the missing extra
    pytest.importorskip("dask.dataframe")

    from astro_metallicity import distributed

    monkeypatch.setattr(distributed, "_run_job", lambda *a, **k: pytest.fail("job started"))
    targets = tmp_path / "targets.ecsv"
    Table({"ra": [1.0], "dec": [2.0]}).write(targets)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        (["-o", str(tmp_path / "out.ecsv"), "--workers", "2"], r"out.ecsv is a table file"),
        (["--workers", "2"], r"need -o DIRECTORY"),
        (["-o", str(busy), "--workers", "2"],
         r"busy is not empty and has no astro_metallicity_manifest.json"),
        (["-o", str(tmp_path / "o"), "--workers", "2", "--scheduler", "tcp://x:1"],
         r"not both"),
        (["-o", str(tmp_path / "o"), "--partition-rows", "5"], r"need --workers or --scheduler"),
        (["-o", str(tmp_path / "o"), "--workers", "2", "--montage", "m.png"],
         r"--montage is not available"),
    ]
    for extra, expected in cases:
        assert main(["predict", str(targets), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert re.search(expected, err), (expected, err)
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "t.ecsv", "--workers", "0"])


@pytest.mark.slow
def test_big_job_local_cluster_from_table(tmp_path, sdss, pipeline_model, capsys):
    """--workers starts its own LocalCluster; an ECSV table is read and partitioned too."""
    from astro_metallicity.table import FLAG_OK

    cat = sdss.catalog
    targets = Table({"id": np.arange(len(cat)), "ra": cat["ra"], "dec": cat["dec"]})
    targets.write(tmp_path / "targets.ecsv")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "targets.ecsv"), "-o", str(out), "--workers", "2",
                 "--model", str(pipeline_model), "--source", "jpeg"]) == 0
    assert f"wrote {len(cat)} rows ({len(cat)} predicted)" in capsys.readouterr().out
    result, _ = _read_partitions(out)
    assert list(result["id"]) == list(range(len(cat)))
    assert (result["flag"] == FLAG_OK).all()


def _partition_files(out):
    return sorted(out.rglob("*.parquet")) if out.is_dir() else []


def _subprocess_config(tmp_path):
    """Environment for a CLI subprocess that reads the current ``conf`` from its own
    ``astro_metallicity.cfg`` (what a user's configuration file does)."""
    import os

    from astro_metallicity import conf

    config_dir = tmp_path / "xdg" / "astropy"  # where astropy looks when $XDG_CONFIG_HOME is set
    config_dir.mkdir(parents=True)
    items = ("skyserver_baseurl", "sas_baseurl", "tap_url", "data_release", "timeout",
             "max_retries", "retry_backoff", "max_workers")
    lines = [f"{name} = {getattr(conf, name)}" for name in items]
    lines.append(f"cache_dir = {tmp_path / 'subprocess-cache'}")
    (config_dir / "astro_metallicity.cfg").write_text("\n".join(lines) + "\n")
    return {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_big_job_killed_with_sigkill_resumes(tmp_path, pipeline_model):
    """Issue 13: a CLI job killed with SIGKILL (no clean-up runs) leaves only complete
    partition files, and a rerun predicts exactly the partitions that are missing."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("dask.distributed")
    pytest.importorskip("lsdb")
    from astro_metallicity import distributed
    from astro_metallicity.mock import Faults

    # Slow answers, so that the kill is likely to land mid-job; the assertions below hold
    # wherever it lands.
    out = tmp_path / "out"
    log_path = tmp_path / "killed-job.log"
    with MockSDSS(n_galaxies=30, seed=31, galaxies_per_field=30,
                  faults=Faults(latency=0.1)) as sdss:
        frame = _parquet_targets(sdss, tmp_path / "targets.parquet")
        argv = [sys.executable, "-m", "astro_metallicity.cli", "predict",
                str(tmp_path / "targets.parquet"), "-o", str(out), "--workers", "1",
                "--model", str(pipeline_model), "--source", "jpeg", "--no-progress",
                "--partition-rows", "4"]
        with open(log_path, "wb") as log_file:
            job = subprocess.Popen(argv, env=_subprocess_config(tmp_path / "killed"),
                                   stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
            try:
                while not _partition_files(out):  # a file lands whole (written, then renamed)
                    if job.poll() is not None:
                        pytest.fail(f"the job ended before writing a partition:\n"
                                    f"{log_path.read_text()}")
                    time.sleep(0.1)
            finally:
                os.killpg(job.pid, signal.SIGKILL)  # the CLI and its local cluster, no clean-up
                job.wait()
    finished = _partition_files(out)
    stamps = _stamps(finished)
    manifest = json.loads((out / distributed.MANIFEST_NAME).read_text())
    n_parts = sum(part["rows"] > 0 for part in manifest["partitions"])

    # the same sky again (same seed), now without the delay, on another port
    with MockSDSS(n_galaxies=30, seed=31, galaxies_per_field=30):
        rerun = subprocess.run(argv, env=_subprocess_config(tmp_path / "rerun"),
                               capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    todo = n_parts - len(finished)
    assert f"{todo} partitions to predict, {len(finished)} already written" in rerun.stderr
    assert _stamps(finished) == stamps  # what the killed job finished was kept as it was
    result, files = _read_partitions(out)
    assert list(result["objid"]) == list(frame["objid"])  # every row, once
    assert len(files) == n_parts
    assert list(result["flag"] == "ok") == [True] * (len(frame) - 3) + [False] * 3
