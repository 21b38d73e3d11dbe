"""Benchmark of `predict_metallicity` on the mock SDSS: galaxies per second, stage split, memory.

Run: ``python benchmarks/bench_predict.py [--galaxies 300] [--targets 100]
[--workers 4] [--model PATH] [--threads 1] [--sources jpeg,frames]``

Starts a `~astro_metallicity.mock.MockSDSS` on 127.0.0.1 with every frame of
its sky rendered beforehand (so the server's rendering is not timed), then for
each cutout source (``jpeg``, ``frames``) predicts for ``--targets``
catalogue galaxies twice: with empty caches (``cold``: downloads included) and
again with the disk cache filled (``warm``: a rerun in a new process, nothing
in memory). Reports galaxies/s (wall clock) and per CPU second (the process's
user + system time, the mock server's threads included), the number of HTTP
requests, the peak resident memory, and the time split by stage.

The stage split (`StageTimer`) wraps the pipeline's functions for the
duration of a run (nothing in the package is changed for it) and adds up,
per stage, the wall time and the CPU time (``time.thread_time``) of every
thread, not counting time spent in an inner stage: ``resolve``, ``cross-id``
(petroR90_r look-up), ``field look-up`` (Field query and the choice of
frames), ``download``, ``disk cache``, ``decompress``, ``reproject``,
``background``, ``make_cutout`` (composite and the rest), ``jpeg decode``,
``CNN``. Wall times of the download threads overlap, so their sum can exceed
the run's duration. Prints JSON. Uses the bundled model, or ``--model``, or
a tiny untrained network (timings then measure the pipeline, not the CNN).
"""

import argparse
import importlib
import json
import resource
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

import numpy as np

#: (module, attribute, stage). A missing attribute is skipped, so the timer also
#: runs on older versions of the package (``bench_scale.py --baseline``).
STAGES = [
    ("astro_metallicity.predict", "resolve_targets", "resolve"),
    ("astro_metallicity.acquire", "resolve_targets", "resolve"),
    ("astro_metallicity.acquire", "lookup_petro_r90", "cross-id"),
    ("astro_metallicity.acquire._routes", "query_fields", "field look-up"),
    ("astro_metallicity.acquire._routes", "frames_for_target", "field look-up"),
    ("astro_metallicity.acquire._http", "get", "download"),
    ("astro_metallicity.acquire._http", "_read_cached", "disk cache"),
    ("astro_metallicity.acquire._sdss", "parse_frame", "decompress"),
    ("astro_metallicity.acquire._sdss", "_parse_jpeg", "jpeg decode"),
    ("astro_metallicity.acquire._routes", "make_cutout", "make_cutout"),
    ("astro_metallicity.preprocess", "reproject_band", "reproject"),
    ("astro_metallicity.preprocess", "_output_world", "reproject"),
    ("astro_metallicity.preprocess", "_interp_frame", "reproject"),
    ("astro_metallicity.preprocess", "subtract_background", "background"),
    ("astro_metallicity.predict", "_run_model", "CNN"),
]


class StageTimer:
    """Wall and CPU seconds per pipeline stage, summed over threads (exclusive of inner stages).

    ``with StageTimer() as timer: ...`` wraps the functions of `STAGES` and
    restores them on exit; ``timer.split()`` gives the totals.
    """

    def __init__(self, stages=STAGES):
        self.stages = stages
        self.wall = {}
        self.cpu = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._saved = []

    def _wrap(self, func, stage):
        timer = self

        def timed(*args, **kwargs):
            stack = getattr(timer._local, "stack", None)
            if stack is None:
                stack = timer._local.stack = []
            # time of inner stages is taken off the outer one: frames [wall, cpu, inner...]
            entry = [time.perf_counter(), time.thread_time(), 0.0, 0.0]
            stack.append(entry)
            try:
                return func(*args, **kwargs)
            finally:
                stack.pop()
                wall = time.perf_counter() - entry[0]
                cpu = time.thread_time() - entry[1]
                with timer._lock:
                    timer.wall[stage] = timer.wall.get(stage, 0.0) + wall - entry[2]
                    timer.cpu[stage] = timer.cpu.get(stage, 0.0) + cpu - entry[3]
                if stack:
                    stack[-1][2] += wall
                    stack[-1][3] += cpu

        timed.__wrapped__ = func
        return timed

    def __enter__(self):
        for module_name, attr, stage in self.stages:
            try:
                module = importlib.import_module(module_name)
            except ImportError:  # an older layout of the package (--baseline)
                continue
            func = getattr(module, attr, None)
            if func is None:
                continue
            self._saved.append((module, attr, func))
            setattr(module, attr, self._wrap(func, stage))
        return self

    def __exit__(self, *exc):
        for module, attr, func in reversed(self._saved):
            setattr(module, attr, func)
        self._saved.clear()
        return False

    def split(self):
        """``{stage: {'wall_s': ..., 'cpu_s': ...}}``, rounded."""
        return {stage: {"wall_s": round(self.wall[stage], 3),
                        "cpu_s": round(self.cpu.get(stage, 0.0), 3)}
                for stage in sorted(self.wall, key=self.wall.get, reverse=True)}


def start_worker_timer(dask_worker):
    """Start a `StageTimer` on a Dask worker (``client.run(start_worker_timer)``)."""
    timer = StageTimer()
    timer.__enter__()
    dask_worker._bench_stage_timer = timer


def stop_worker_timer(dask_worker):
    """Stop the worker's `start_worker_timer`; returns ``{'wall': {...}, 'cpu': {...}}``."""
    timer = dask_worker._bench_stage_timer
    timer.__exit__(None, None, None)
    return {"wall": dict(timer.wall), "cpu": dict(timer.cpu)}


def peak_rss_mb():
    """Peak resident memory of this process (MiB).

    On Linux the high-water mark of this process image (``VmHWM``):
    ``ru_maxrss`` survives fork and exec, so a worker or subprocess started by
    a big parent (this benchmark holds the simulated sky) would report the
    parent's peak.
    """
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / 1024 ** 2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _proc_status_mb(field):
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb():
    """Resident memory of this process now (MiB; None where /proc is missing)."""
    return _proc_status_mb("VmRSS")


def reset_peak_rss():
    """Restart this process's peak-memory count (Linux), so that `peak_rss_mb` covers what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def cpu_seconds():
    """User + system CPU seconds of this process (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def prerender_frames(sky):
    """Render and compress every g, r, i frame of a `MockSky` and serve them from memory.

    Returns
    -------
    seconds : float
        Time the rendering took.
    """
    t0 = time.perf_counter()
    files = {}
    for row in sky.field_table():
        for band in "gri":
            key = (int(row["run"]), int(row["camcol"]), int(row["field"]), band)
            files[key] = sky.frame_file(*key)
    real = sky._files

    def served(run, camcol, field, band):
        key = (run, camcol, field, band)
        return files[key] if key in files else real(run, camcol, field, band)

    sky._files = served  # the sky's own lru_cache would keep only a few of them
    return time.perf_counter() - t0


@contextmanager
def _timed_run(timer=None):
    from astro_metallicity.acquire._sdss import clear_memory_cache

    clear_memory_cache()
    record = {}
    c0, t0 = cpu_seconds(), time.perf_counter()
    try:
        if timer is None:
            yield record
        else:
            with timer:
                yield record
    finally:
        record["seconds"] = time.perf_counter() - t0
        record["cpu_seconds"] = cpu_seconds() - c0


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
    from astro_metallicity.mock import MockSDSS, MockSky
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
    sky = MockSky(args.galaxies, seed=99)
    out = {"benchmark": "predict_metallicity on MockSDSS", "model": note,
           "cutout_size": model.cutout_size, "galaxies": args.galaxies,
           "targets": args.targets, "max_workers": args.workers, "fields": len(sky.footprint),
           "prerender_s": round(prerender_frames(sky), 1), "runs": []}
    with MockSDSS(sky=sky) as sdss, conf.set_temp("max_workers", args.workers):
        cat = sdss.catalog
        idx = np.random.default_rng(0).permutation(len(cat))[: args.targets]
        coords = SkyCoord(cat["ra"][idx], cat["dec"][idx])
        for source in args.sources.split(","):
            with conf.set_temp("cache_dir", f"{tmp.name}/cache-{source}"):
                for label in ("cold", "warm"):
                    n_req = len(sdss.requests)
                    timer = StageTimer()
                    with _timed_run(timer) as record:
                        result = predict_metallicity(coords, source=source, model=model,
                                                     progress=False)
                    predicted = int(np.sum(~result["metallicity"].mask))
                    out["runs"].append({
                        "source": source, "cache": label, "seconds": round(record["seconds"], 2),
                        "galaxies_per_s": round(len(coords) / record["seconds"], 2),
                        "galaxies_per_cpu_s": round(len(coords) / record["cpu_seconds"], 2),
                        "predicted": predicted,
                        "http_requests": len(sdss.requests) - n_req,
                        "process_peak_rss_mb": round(peak_rss_mb(), 1),
                        "stages": timer.split(),
                    })
                    print(json.dumps(out["runs"][-1]), file=sys.stderr)
    print(json.dumps(out, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
