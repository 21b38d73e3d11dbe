"""Benchmark at catalogue scale: one process against a Dask LocalCluster, on the frames route.

Run: ``python benchmarks/bench_scale.py [--targets 2000] [--workers 2] [--max-workers 4]
[--baseline PATH] [--model PATH] [--skip-cluster]``, or for an A/B comparison
``python benchmarks/bench_scale.py --ab PATH [--rounds 2] [--sources frames,jpeg]``

Simulates a sky of ``--targets`` galaxies (about 80 per SDSS field, as
`~astro_metallicity.mock.MockSky` lays them out), renders all its g, r, i
frames beforehand and serves them from `~astro_metallicity.mock.MockSDSS`,
then predicts for every galaxy, in random order, with empty caches (cold):

1. in this process: ``predict_metallicity(table, source='frames')``;
2. on a ``dask.distributed.LocalCluster`` of ``--workers`` worker processes
   (one thread each): ``predict_metallicity_catalog`` on a Dask DataFrame of
   the same table, partitioned by HEALPix tile (``partition_by_healpix``);
3. with ``--baseline PATH`` (a ``git archive`` of an older commit, e.g.
   ``git archive b026db3 | tar x -C /tmp/base``): step 1 with that code, in a
   subprocess with ``PYTHONPATH=PATH``, against the same server.

Prints galaxies/s (wall clock) and per CPU second, the peak resident memory
of the process during the prediction (``peak_rss_mb``; ``rss_before_mb`` is
what the process held before it: the simulated sky and its rendered frames)
and of each worker (since it started: ``ru_maxrss`` would report the
parent's peak, inherited through fork and exec), the time split by stage (see
``bench_predict.py``; summed over the workers for the cluster), the largest
difference between the paths' predictions, and the frames route's speed-up
against the baseline. Prints JSON last.

``--ab PATH`` compares this tree with the one at PATH instead, on a machine
whose load may change during the run: each of ``--rounds`` rounds runs both
codes (in alternating order, ABBA...) in fresh subprocesses against the same
server, each predicting the table cold (empty caches) and then warm (the disk
cache filled, nothing in memory), for each of ``--sources``. Reports, per
source and cache state, the median over rounds of each code's wall galaxies/s
and galaxies per CPU second (the subprocess's own CPU time, all its threads;
the server's is not counted), the ratios new/old within each round, and the
largest difference between the two codes' predictions.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_predict import (  # noqa: E402
    StageTimer,
    cpu_seconds,
    peak_rss_mb,
    prerender_frames,
    reset_peak_rss,
    rss_mb,
    start_worker_timer,
    stop_worker_timer,
)


def _model_path(arg, tmp):
    from astro_metallicity.model import _save_untrained_model as save_untrained_model
    from astro_metallicity.model import bundled_model_path

    if arg is not None:
        return str(arg), "given"
    if bundled_model_path().is_file():
        return str(bundled_model_path()), "bundled"
    path = save_untrained_model(f"{tmp}/tiny", arch="tiny", input_size=32)
    return str(path), "tiny untrained network (no bundled model)"


def _single_process(table, model, cache_dir, source="frames"):
    """Cold (or, with ``cache_dir`` filled, warm) run of ``predict_metallicity`` here."""
    from astro_metallicity import conf, predict_metallicity

    try:
        from astro_metallicity.acquire._sdss import clear_memory_cache
    except ImportError:  # code before acquire became a package (--baseline)
        from astro_metallicity.acquire import clear_memory_cache

    clear_memory_cache()
    rss_before = rss_mb()
    reset_peak_rss()
    with conf.set_temp("cache_dir", cache_dir), StageTimer() as timer:
        c0, t0 = cpu_seconds(), time.perf_counter()
        result = predict_metallicity(table, source=source, model=model, progress=False)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    values = np.asarray(result["metallicity"].filled(np.nan).value, dtype=float)
    return {"seconds": round(seconds, 1), "galaxies_per_s": round(len(table) / seconds, 2),
            "galaxies_per_cpu_s": round(len(table) / cpu, 2),
            "predicted": int(np.isfinite(values).sum()),
            "rss_before_mb": None if rss_before is None else round(rss_before, 0),
            "peak_rss_mb": round(peak_rss_mb(), 0), "stages": timer.split()}, values


def _child(args):
    """``--child``: runs of the code on PYTHONPATH, against a running server."""
    from astropy.table import Table
    from astroquery.sdss import conf as aq_conf

    from astro_metallicity import conf, load_model, log

    log.setLevel("WARNING")  # stdout carries the parent's JSON
    spec = json.loads(Path(args.child).read_text())
    table = Table.read(spec["targets"], format="ascii.ecsv")
    for c in (aq_conf, conf):
        c.skyserver_baseurl = spec["skyserver"]
        c.sas_baseurl = spec["sas"]
    conf.max_workers = spec["max_workers"]
    import torch

    torch.set_num_threads(spec.get("torch_threads", 1))
    import astro_metallicity

    model = load_model(spec["model"], device="cpu")
    if "runs" not in spec:  # --baseline: one cold frames run
        record, values = _single_process(table, model, spec["cache_dir"])
        record["code"] = str(Path(astro_metallicity.__file__).parent)
        np.save(spec["values"], values)
        Path(spec["out"]).write_text(json.dumps(record))
        return
    records = []
    for source, cache in spec["runs"]:
        record, values = _single_process(table, model, spec["cache_dir"] + "-" + source,
                                         source=source)
        record.update(source=source, cache=cache)
        records.append(record)
        np.save(f"{spec['values']}-{source}-{cache}.npy", values)
    Path(spec["out"]).write_text(json.dumps(records))


def _ab(args, table, sdss, model_path, tmp):
    """``--ab``: this tree against ``args.ab``, alternating, each run in a fresh process."""
    sources = args.sources.split(",")
    runs = [(source, cache) for source in sources for cache in ("cold", "warm")]
    trees = {"new": str(HERE.parent), "old": str(Path(args.ab).resolve())}
    table.write(f"{tmp}/targets.ecsv", format="ascii.ecsv", overwrite=True)
    results = {"new": [], "old": []}
    values = {}
    for r in range(args.rounds):
        for code in (("old", "new") if r % 2 == 0 else ("new", "old")):
            spec = {"targets": f"{tmp}/targets.ecsv", "skyserver": sdss.url,
                    "sas": sdss.url + "/sas", "model": model_path,
                    "cache_dir": f"{tmp}/cache-{code}-{r}", "max_workers": args.max_workers,
                    "torch_threads": args.torch_threads, "runs": runs,
                    "out": f"{tmp}/{code}-{r}.json", "values": f"{tmp}/{code}-{r}"}
            Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
            env = dict(os.environ, PYTHONPATH=trees[code])
            subprocess.run([sys.executable, __file__, "--child", f"{tmp}/spec.json"], env=env,
                           check=True)
            records = json.loads(Path(spec["out"]).read_text())
            results[code].append(records)
            for source, cache in runs:
                values[(code, source, cache)] = np.load(f"{spec['values']}-{source}-{cache}.npy")
            print(code, r, json.dumps([{k: rec[k] for k in ("source", "cache", "seconds",
                                                            "galaxies_per_s",
                                                            "galaxies_per_cpu_s")}
                                       for rec in records]), file=sys.stderr)
    summary = []
    for j, (source, cache) in enumerate(runs):
        row = {"source": source, "cache": cache}
        for key in ("galaxies_per_s", "galaxies_per_cpu_s"):
            old = [rounds[j][key] for rounds in results["old"]]
            new = [rounds[j][key] for rounds in results["new"]]
            row[f"old_{key}"] = float(np.median(old))
            row[f"new_{key}"] = float(np.median(new))
            row[f"ratio_{key}"] = [round(b / a, 2) for a, b in zip(old, new)]
        row.update(_max_diff(values[("new", source, cache)], values[("old", source, cache)]))
        summary.append(row)
    return {"old_code": trees["old"], "rounds": args.rounds, "summary": summary,
            "runs": results}


def _baseline(path, table, sdss, model_path, max_workers, tmp):
    spec = {"targets": f"{tmp}/targets.ecsv", "skyserver": sdss.url, "sas": sdss.url + "/sas",
            "model": model_path, "cache_dir": f"{tmp}/cache-baseline", "max_workers": max_workers,
            "out": f"{tmp}/baseline.json", "values": f"{tmp}/baseline.npy"}
    table.write(spec["targets"], format="ascii.ecsv", overwrite=True)
    Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()))
    subprocess.run([sys.executable, __file__, "--child", f"{tmp}/spec.json"], env=env, check=True)
    return json.loads(Path(spec["out"]).read_text()), np.load(spec["values"])


def _cluster(table, model_path, n_workers, cache_dir):
    """Cold run of ``predict_metallicity_catalog`` on a LocalCluster."""
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster

    from astro_metallicity import conf
    from astro_metallicity.distributed import partition_by_healpix, predict_metallicity_catalog

    df = table.to_pandas()
    df["row"] = np.arange(len(df))
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.upload_file(str(HERE / "bench_predict.py"))
        client.run(start_worker_timer)
        c0 = client.run(cpu_seconds)
        ddf = dd.from_pandas(df, npartitions=max(1, len(df) // 250))
        frame, _ = partition_by_healpix(ddf, row_column=None)
        with conf.set_temp("cache_dir", cache_dir):
            t0 = time.perf_counter()
            lazy = predict_metallicity_catalog(frame, source="frames", model=model_path)
            out = lazy.compute()
            seconds = time.perf_counter() - t0
        c1 = client.run(cpu_seconds)
        rss = client.run(peak_rss_mb)
        stages = client.run(stop_worker_timer)
    out = out.sort_values("row")
    values = out["metallicity"].to_numpy(dtype=float)
    cpu = sum(c1[w] - c0[w] for w in c1)
    wall, cpu_split = {}, {}
    for split in stages.values():
        for stage, v in split["wall"].items():
            wall[stage] = wall.get(stage, 0.0) + v
        for stage, v in split["cpu"].items():
            cpu_split[stage] = cpu_split.get(stage, 0.0) + v
    split = {s: {"wall_s": round(wall[s], 3), "cpu_s": round(cpu_split.get(s, 0.0), 3)}
             for s in sorted(wall, key=wall.get, reverse=True)}
    return {"seconds": round(seconds, 1), "galaxies_per_s": round(len(table) / seconds, 2),
            "galaxies_per_worker_cpu_s": round(len(table) / cpu, 2),
            "predicted": int(np.isfinite(values).sum()), "partitions": frame.npartitions,
            "worker_peak_rss_mb": sorted(round(v, 0) for v in rss.values()),
            "stages": split}, values


def _max_diff(a, b):
    both = np.isfinite(a) & np.isfinite(b)
    return {"max_abs_diff_dex": float(np.max(np.abs(a[both] - b[both]))) if both.any() else None,
            "same_rows_predicted": bool(np.array_equal(np.isfinite(a), np.isfinite(b)))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=2000, help="galaxies in the sky, all targets")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--max-workers", type=int, default=4, help="conf.max_workers (downloads)")
    p.add_argument("--baseline", default=None, help="tree of older code, run with PYTHONPATH")
    p.add_argument("--model", default=None)
    p.add_argument("--skip-cluster", action="store_true")
    p.add_argument("--ab", default=None, help="tree of older code: alternating A/B runs")
    p.add_argument("--rounds", type=int, default=2, help="A/B rounds (--ab)")
    p.add_argument("--sources", default="frames,jpeg", help="cutout sources (--ab)")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads (--ab)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return

    import torch
    from astropy.table import Table

    from astro_metallicity import conf, load_model
    from astro_metallicity.mock import MockSDSS, MockSky

    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    model_path, note = _model_path(args.model, tmp.name)
    sky = MockSky(max(args.targets, 20), seed=2013)
    out = {"benchmark": "frames route, cold caches, one process vs LocalCluster",
           "targets": args.targets, "fields": len(sky.footprint), "model": note,
           "max_workers": args.max_workers, "cpu_count": os.cpu_count()}
    t0 = time.perf_counter()
    out["prerender_s"] = round(prerender_frames(sky), 1)
    cat = sky.catalog
    order = np.random.default_rng(0).permutation(len(cat))[: args.targets]
    table = Table({"objid": np.asarray(cat["objid"])[order],
                   "ra": np.asarray(cat["ra"].to_value("deg"))[order],
                   "dec": np.asarray(cat["dec"].to_value("deg"))[order]})
    with MockSDSS(sky=sky) as sdss, conf.set_temp("max_workers", args.max_workers):
        if args.ab:
            out["ab"] = _ab(args, table, sdss, model_path, tmp.name)
            out["total_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(out, indent=2))
            tmp.cleanup()
            return
        model = load_model(model_path, device="cpu")
        single, values = _single_process(table, model, f"{tmp.name}/cache-single")
        out["single_process"] = single
        print("single process:", json.dumps(single), file=sys.stderr)
        if args.baseline:
            base, base_values = _baseline(args.baseline, table, sdss, model_path,
                                          args.max_workers, tmp.name)
            base.update(_max_diff(values, base_values))
            base["speedup_wall"] = round(single["galaxies_per_s"] / base["galaxies_per_s"], 2)
            base["speedup_cpu"] = round(single["galaxies_per_cpu_s"]
                                        / base["galaxies_per_cpu_s"], 2)
            out["baseline"] = base
            print("baseline:", json.dumps(base), file=sys.stderr)
        if not args.skip_cluster:
            clus, clus_values = _cluster(table, model_path, args.workers,
                                         f"{tmp.name}/cache-cluster")
            clus.update(_max_diff(values, clus_values))
            clus["workers"] = args.workers
            out["cluster"] = clus
            print("cluster:", json.dumps(clus), file=sys.stderr)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
