"""Distributed prediction (astro_metallicity.distributed) on a LocalCluster of 2 worker processes.

The workers talk to the local simulated SDSS (`~astro_metallicity.mock.MockSDSS`) of the test
process; their configuration (URLs, cache, ...) arrives as the snapshot the client takes.
"""

import os
import time

import numpy as np
import pytest
from astropy.table import Table

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("dask.distributed")
pd = pytest.importorskip("pandas")

from astro_metallicity import conf, predict_metallicity  # noqa: E402
from astro_metallicity.distributed import (  # noqa: E402
    PREDICTION_UNITS,
    SPATIAL_INDEX,
    _healpix_tiles,
    _model_loads,
    partition_by_healpix,
    predict_metallicity_catalog,
)
from astro_metallicity.table import FLAG_OK  # noqa: E402

COLUMNS = ("metallicity", "metallicity_err", "log_mstar", "log_mstar_err")


@pytest.fixture(scope="module")
def sky():
    from astro_metallicity.mock import MockSDSS

    with MockSDSS(n_galaxies=60, seed=0) as sdss:
        yield sdss


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each (started once for the module)."""
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as dask_client:
        import importlib

        # the workers' first task imports torch, pandas, ... (seconds on busy cores): done
        # here once, so that the tests time the predictions
        for name in ("torch", "astro_metallicity.predict", "astro_metallicity.distributed"):
            dask_client.run(importlib.import_module, name)
        yield dask_client


def _targets(sky, n=44):
    """n galaxies of the simulated sky in a shuffled order, then bad rows, with IDs."""
    cat = sky.catalog
    rng = np.random.default_rng(1)
    pick = rng.permutation(len(cat))[:n]
    ra = np.asarray(getattr(cat["ra"], "value", cat["ra"]), dtype=float)[pick]
    dec = np.asarray(getattr(cat["dec"], "value", cat["dec"]), dtype=float)[pick]
    # bad rows: missing, off the simulated footprint, out of range
    ra = np.r_[ra, np.nan, 10.0, 500.0]
    dec = np.r_[dec, 0.0, -80.0, 0.0]
    return pd.DataFrame({"target_id": 1000 + 7 * np.arange(len(ra)), "ra": ra, "dec": dec,
                         "name": [f"g{k}" for k in range(len(ra))]})


def _reference(frame, model, tmp_path, source):
    """predict_metallicity in this one process, with its own (cold) cache."""
    with conf.set_temp("cache_dir", str(tmp_path / "reference-cache")):
        return predict_metallicity(Table.from_pandas(frame), source=source, model=model,
                                   progress=False)


def _check_equal(out, ref, frame):
    assert list(out["target_id"]) == list(frame["target_id"])  # order and IDs kept
    assert list(out["name"]) == list(frame["name"])
    flags = np.asarray(out["flag"], dtype=str)
    np.testing.assert_array_equal(flags, np.asarray(ref["flag"].filled(""), dtype=str))
    good = flags == FLAG_OK
    assert 0 < good.sum() < len(out)
    assert not good[-3:].any()  # the bad rows are flagged
    for name in COLUMNS:
        expected = ref[name].filled(np.nan).value
        got = out[name].to_numpy(dtype=float)
        assert np.all(np.isnan(got[~good]))
        np.testing.assert_allclose(got[good], expected[good], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["ood_score"].to_numpy(dtype=float),
                               np.asarray(ref["ood_score"].filled(np.nan), dtype=float),
                               rtol=0, atol=1e-6, equal_nan=True)


def test_dask_dataframe_matches_single_process(sky, client, pipeline_model, tmp_path):
    frame = _targets(sky)
    ref = _reference(frame, pipeline_model, tmp_path, "jpeg")
    # the workers download into a cache of their own: they really fetch the cutouts
    with conf.set_temp("cache_dir", str(tmp_path / "worker-cache")):
        ddf = dd.from_pandas(frame, npartitions=4)
        result = predict_metallicity_catalog(ddf, source="jpeg", model=pipeline_model)
    assert isinstance(result, dd.DataFrame)
    assert list(result.columns) == [*frame.columns, *COLUMNS, "ood_score", "flag"]
    out = result.compute()
    assert list(out.index) == list(frame.index)
    _check_equal(out, ref, frame)
    info = out.attrs["astro_metallicity"]
    assert info["units"] == PREDICTION_UNITS
    assert PREDICTION_UNITS["metallicity"] == "dex"
    assert PREDICTION_UNITS["log_mstar"] == "dex(solMass)"
    assert info["cutout_source"] == "jpeg"
    assert any((tmp_path / "worker-cache").rglob("*")), "the workers did not use conf.cache_dir"
    # the model is loaded once per worker process, not once per partition
    loads = client.run(_model_loads)
    assert len(loads) == 2
    assert all(n == 1 for n in loads.values())


# lsdb 0.11 calls NestedFrame.set_index/drop(inplace=True), deprecated by pandas 3.1
@pytest.mark.filterwarnings("ignore:The inplace keyword in NestedFrame")
def test_lsdb_catalog(sky, client, pipeline_model, tmp_path):
    lsdb = pytest.importorskip("lsdb")
    frame = _targets(sky, n=30).iloc[:-3]  # LSDB needs valid positions to partition
    ref = _reference(frame, pipeline_model, tmp_path, "jpeg")
    # one partition per order-9 HEALPix tile (~7 arcmin); no margin or MOC (slow, not needed)
    catalog = lsdb.from_dataframe(frame, ra_column="ra", dec_column="dec", lowest_order=9,
                                  highest_order=9, margin_threshold=None,
                                  should_generate_moc=False)
    assert catalog.npartitions > 1
    result = predict_metallicity_catalog(catalog, source="jpeg", model=pipeline_model)
    assert isinstance(result, lsdb.Catalog)
    assert result.get_healpix_pixels() == catalog.get_healpix_pixels()
    out = result.compute()
    original = catalog.compute()
    assert list(out.index) == list(original.index)  # the _healpix_29 index, in order
    by_id = frame.set_index("target_id")
    ref_by_id = {tid: k for k, tid in enumerate(frame["target_id"])}
    order = [ref_by_id[tid] for tid in out["target_id"]]
    assert sorted(order) == list(range(len(frame)))
    flags = np.asarray(out["flag"], dtype=str)
    assert (flags == np.asarray(ref["flag"].filled(""), dtype=str)[order]).all()
    for name in COLUMNS:
        expected = ref[name].filled(np.nan).value[order]
        got = out[name].to_numpy(dtype=float)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(out["ra"].to_numpy(dtype=float),
                               by_id.loc[out["target_id"], "ra"].to_numpy())


def test_bad_arguments(sky, pipeline_model):
    frame = _targets(sky, n=4)
    ddf = dd.from_pandas(frame, npartitions=1)
    with pytest.raises(TypeError, match="lsdb.Catalog or a dask.dataframe.DataFrame"):
        predict_metallicity_catalog(frame, model=pipeline_model)
    with pytest.raises(ValueError, match="ra_column"):
        predict_metallicity_catalog(ddf[["target_id", "name"]], model=pipeline_model)
    with pytest.raises(ValueError, match="source must be"):
        predict_metallicity_catalog(ddf, source="fits", model=pipeline_model)
    with pytest.raises(ValueError, match="already has column"):
        predict_metallicity_catalog(ddf.assign(flag=""), model=pipeline_model)


def test_clear_error_without_dask(monkeypatch):
    """Without dask the module still imports and says which extra to install."""
    import sys

    from astro_metallicity import distributed as module

    monkeypatch.setitem(sys.modules, "dask.dataframe", None)
    with pytest.raises(ImportError, match=r"astro-metallicity\[distributed\]"):
        module.predict_metallicity_catalog(object())


def test_conf_snapshot_is_applied_around_a_partition(sky):
    """The client's conf values are recorded and set on the worker for the partition only."""
    from astro_metallicity.distributed import _applied_conf, conf_snapshot

    with conf.set_temp("max_workers", 3), conf.set_temp("data_release", 16):
        snapshot = conf_snapshot()
    for name in ("skyserver_baseurl", "sas_baseurl", "data_release", "timeout", "max_retries",
                 "max_workers", "cache_dir", "batch_size"):
        assert name in snapshot
    assert snapshot["max_workers"] == 3
    assert snapshot["data_release"] == 16
    assert snapshot["skyserver_baseurl"] == sky.url
    before = (conf.max_workers, conf.data_release)
    with _applied_conf(snapshot), _applied_conf(snapshot):  # two tasks of one worker
        assert (conf.max_workers, conf.data_release) == (3, 16)
    assert (conf.max_workers, conf.data_release) == before


@pytest.mark.slow
def test_frames_route_few_hundred_targets_and_killed_worker(client, pipeline_model, tmp_path):
    """A few hundred targets on the frames route; a worker killed mid-run loses no rows."""
    from astro_metallicity.mock import MockSDSS

    with MockSDSS(n_galaxies=300, seed=3) as sdss:
        frame = _targets(sdss, n=297)
        ref = _reference(frame, pipeline_model, tmp_path, "frames")
        with conf.set_temp("cache_dir", str(tmp_path / "worker-cache")):
            ddf = dd.from_pandas(frame, npartitions=12)
            result = predict_metallicity_catalog(ddf, source="frames", model=pipeline_model)
        future = client.compute(result)
        # kill one worker process once some partitions are done and others are running
        deadline = time.monotonic() + 120
        while client.run_on_scheduler(_partitions_done) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        done_at_kill = client.run_on_scheduler(_partitions_done)
        pids = client.run(os.getpid)
        os.kill(pids[sorted(pids)[0]], 9)
        out = future.result(timeout=300)
    assert 3 <= done_at_kill < ddf.npartitions  # the worker died mid-run
    _check_equal(out, ref, frame)


def _partitions_done(dask_scheduler=None):
    return sum(ts.state == "memory" and "predict_partition" in str(ts.key)
               for ts in dask_scheduler.tasks.values())


def _clustered_positions(rng, n_per_cluster=40):
    """Targets in three dense groups (a few arcmin wide) far apart, and rows without a
    usable position."""
    centres = [(185.0, 1.0), (185.3, 1.2), (30.0, -5.0)]
    ra = np.concatenate([c[0] + rng.normal(0, 0.05, n_per_cluster) for c in centres])
    dec = np.concatenate([c[1] + rng.normal(0, 0.05, n_per_cluster) for c in centres])
    order = rng.permutation(len(ra))
    ra, dec = ra[order], dec[order]
    ra = np.r_[ra, np.nan, 12.0]
    dec = np.r_[dec, 3.0, np.nan]
    return pd.DataFrame({"target_id": 500 + np.arange(len(ra)), "ra": ra, "dec": dec})


def test_partition_by_healpix_makes_healpix_tiles():
    """Each partition is one HEALPix tile: every row in it lies in that pixel (astropy-healpix
    says so independently), no tile has more than partition_rows rows, the tiles do not
    overlap, and no row is lost or duplicated."""
    from astropy import units as u
    from astropy_healpix import HEALPix

    rng = np.random.default_rng(5)
    frame = _clustered_positions(rng)
    ddf = dd.from_pandas(frame, npartitions=3)
    result, pixels = partition_by_healpix(ddf, partition_rows=15)
    assert result.npartitions == len(pixels)
    assert pixels[0] is None
    import dask

    parts = dask.compute(*result.to_delayed())
    # the rows without a position: the first partition, index -1
    assert sorted(parts[0]["target_id"]) == list(frame["target_id"].iloc[-2:])
    assert (parts[0].index == -1).all()
    seen = list(parts[0]["target_id"])
    covered = set()
    for pixel, part in zip(pixels[1:], parts[1:], strict=True):
        assert 0 < len(part) <= 15
        hp = HEALPix(nside=2 ** pixel.order, order="nested")
        truth = hp.lonlat_to_healpix(part["ra"].to_numpy() * u.deg,
                                     part["dec"].to_numpy() * u.deg)
        assert (truth == pixel.pixel).all(), pixel
        # tiles are disjoint: no tile lies inside another
        for order, number in covered:
            low = min(order, pixel.order)
            assert (number >> 2 * (order - low)) != (pixel.pixel >> 2 * (pixel.order - low))
        covered.add((pixel.order, pixel.pixel))
        assert part.index.is_monotonic_increasing  # sorted along the HEALPix curve
        seen += list(part["target_id"])
    assert sorted(seen) == list(frame["target_id"])
    # three groups far apart never share a tile, and neighbours do: with 40 rows in a group
    # and at most 15 per tile, each group is a handful of tiles, not one per target
    assert len(pixels) - 1 <= 3 * 8
    # input_row restores the input order
    whole = pd.concat(parts).sort_values("input_row")
    assert list(whole["input_row"]) == list(range(len(frame)))
    assert list(whole["target_id"]) == list(frame["target_id"])
    assert SPATIAL_INDEX == whole.index.name


def test_healpix_tiles_follow_the_hats_alignment():
    """The sparse tiling gives the tiles HATS's (dense) generate_alignment gives."""
    from hats.pixel_math import empty_histogram, generate_alignment

    rng = np.random.default_rng(2)
    histogram = empty_histogram(5)
    occupied = rng.choice(len(histogram), 400, replace=False)
    histogram[occupied] = rng.integers(1, 60, len(occupied))
    alignment = generate_alignment(histogram, highest_order=5, threshold=120)
    expected = {tuple(int(v) for v in alignment[p]) for p in occupied}
    tiles = _healpix_tiles(np.sort(occupied), histogram[np.sort(occupied)], 5, 120)
    assert set(tiles) == expected
    assert len(tiles) == len(expected)
    assert sum(n for _, _, n in tiles) == histogram.sum()


def test_per_target_scale_column(sky, pipeline_model, tmp_path):
    """scale_column gives each row its own pixel scale, as predict_metallicity does with one
    scale per target; a missing scale is flagged."""
    from astropy import units as u

    frame = _targets(sky, n=6).iloc[:6].copy()
    frame["pixscale"] = [0.3, 0.4, 0.5, 0.3, np.nan, 0.45]
    ref_scale = np.nan_to_num(frame["pixscale"].to_numpy(), nan=-1.0) * u.arcsec / u.pix
    with conf.set_temp("cache_dir", str(tmp_path / "reference-cache")):
        ref = predict_metallicity(Table.from_pandas(frame[["ra", "dec"]]), source="jpeg",
                                  scale=ref_scale, model=pipeline_model, progress=False)
    ddf = dd.from_pandas(frame, npartitions=2)
    out = predict_metallicity_catalog(ddf, source="jpeg", scale_column="pixscale",
                                      model=pipeline_model).compute(scheduler="sync")
    flags = np.asarray(out["flag"], dtype=str)
    assert flags[4] == "bad_scale"
    np.testing.assert_array_equal(flags, np.asarray(ref["flag"], dtype=str))
    good = flags == FLAG_OK
    assert good.sum() == 5
    np.testing.assert_allclose(out["metallicity"].to_numpy()[good],
                               ref["metallicity"].filled(np.nan).value[good], atol=1e-6, rtol=0)
    assert out.attrs["astro_metallicity"]["pixel_scale"] == "per target"
    with pytest.raises(ValueError, match="not both"):
        predict_metallicity_catalog(ddf, scale=0.4 * u.arcsec / u.pix, scale_column="pixscale",
                                    model=pipeline_model)
    with pytest.raises(ValueError, match="scale_column 'nope' is not in the catalogue"):
        predict_metallicity_catalog(ddf, scale_column="nope", model=pipeline_model)
