"""Benchmark of `predict_metallicity` on the mock SDSS: targets per second and peak memory.

Run: ``python benchmarks/bench_predict.py [--galaxies 300] [--targets 100]
[--workers 4] [--model PATH] [--threads 1]``

Starts a `~astro_metallicity.mock.MockSDSS` on 127.0.0.1, then for each
cutout source (``jpeg``, ``frames``) predicts for ``--targets`` catalogue
galaxies twice: with an empty cache (downloads, server rendering included)
and again with the cache filled (a rerun). Reports targets/s, the number of
HTTP requests, the Python heap peak (tracemalloc) and the process's peak
resident memory (``resource``). Prints JSON. Uses the bundled model, or
``--model``, or a tiny untrained network (timings then measure the
pipeline, not the CNN).
"""

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc

import numpy as np


def _peak_rss_mb():
    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / 1024 ** 2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--galaxies", type=int, default=300, help="size of the mock sky")
    p.add_argument("--targets", type=int, default=100, help="targets per run")
    p.add_argument("--workers", type=int, default=4, help="conf.max_workers")
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--sources", default="jpeg,frames")
    args = p.parse_args(argv)

    import torch
    from astropy.coordinates import SkyCoord

    from astro_metallicity import conf, predict_metallicity
    from astro_metallicity.acquire._sdss import clear_memory_cache
    from astro_metallicity.mock import MockSDSS
    from astro_metallicity.model import _save_untrained_model as save_untrained_model
    from astro_metallicity.model import bundled_model_path, load_model

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    path, note = args.model, "given"
    if path is None and bundled_model_path().is_file():
        path, note = bundled_model_path(), "bundled"
    if path is None:
        path = save_untrained_model(f"{tmp.name}/tiny", arch="tiny", input_size=32)
        note = "tiny untrained network (no bundled model)"
    model = load_model(path, device="cpu")
    out = {"benchmark": "predict_metallicity on MockSDSS", "model": note,
           "cutout_size": model.cutout_size, "galaxies": args.galaxies,
           "targets": args.targets, "max_workers": args.workers, "runs": []}
    with MockSDSS(n_galaxies=args.galaxies, seed=99) as sdss, \
            conf.set_temp("max_workers", args.workers):
        cat = sdss.catalog
        idx = np.random.default_rng(0).permutation(len(cat))[: args.targets]
        coords = SkyCoord(cat["ra"][idx], cat["dec"][idx])
        out["fields"] = len(sdss.sky.footprint)
        for source in args.sources.split(","):
            with conf.set_temp("cache_dir", f"{tmp.name}/cache-{source}"):
                for label in ("cold cache", "warm cache"):
                    clear_memory_cache()
                    n_req = len(sdss.requests)
                    tracemalloc.start()
                    t0 = time.perf_counter()
                    result = predict_metallicity(coords, source=source, model=model,
                                                 progress=False)
                    seconds = time.perf_counter() - t0
                    _, heap_peak = tracemalloc.get_traced_memory()
                    tracemalloc.stop()
                    out["runs"].append({
                        "source": source, "cache": label, "seconds": round(seconds, 2),
                        "targets_per_s": round(len(coords) / seconds, 2),
                        "predicted": int(np.sum(result["flag"] == "")),
                        "http_requests": len(sdss.requests) - n_req,
                        "python_heap_peak_mb": round(heap_peak / 2 ** 20, 1),
                        "process_peak_rss_mb": round(_peak_rss_mb(), 1),
                    })
                    print(json.dumps(out["runs"][-1]), file=sys.stderr)
    print(json.dumps(out, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
