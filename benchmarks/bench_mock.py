"""Benchmark of the mock SDSS (astro_metallicity.mock).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_mock.py [--galaxies 10000] [--cutouts 400] [--appearance sdss]``

Prints: start-up time of a sky, single-band frame render time, compressed frame
file time, ImgCutout getjpeg throughput through HTTP with frames cached (1 and
4 concurrent clients), cold throughput for random galaxies (nothing cached), the projected time for a 20,000-galaxy training set, and
peak memory (max RSS). ``--sql-only`` times the SkyServer SQL side alone (first
query, which builds the SQL tables; the training-catalogue query; a CrossID of
``--positions`` positions through astroquery).
"""

import argparse
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _jpeg_urls(mock, rows):
    cat = mock.catalog
    base = f"{mock.url}/dr17/SkyServerWS/ImgCutout/getjpeg"
    out = []
    for j in rows:
        scale = 2 * cat["petroR90_r"][j].value / (0.396 * 128)
        out.append(f"{base}?ra={cat['ra'][j].value:.7f}&dec={cat['dec'][j].value:.7f}"
                   f"&scale={scale:.5f}&width=128&height=128")
    return out


def _fetch_all(urls, workers):
    session = requests.Session()

    def get(url):
        r = session.get(url, timeout=120)
        r.raise_for_status()
        return len(r.content)

    t0 = time.perf_counter()
    if workers == 1:
        sizes = [get(u) for u in urls]
    else:
        with ThreadPoolExecutor(workers) as pool:
            sizes = list(pool.map(get, urls))
    return time.perf_counter() - t0, sizes


def _bench_sql(mock, positions):
    from astropy.coordinates import SkyCoord
    from astroquery.sdss import SDSS

    from astro_metallicity.train.catalog import training_catalog_sql

    t0 = time.perf_counter()
    SDSS.query_sql("SELECT TOP 1 objID FROM Galaxy", cache=False)
    print(f"  SQL first query (builds the tables): {time.perf_counter() - t0:6.2f} s")
    t0 = time.perf_counter()
    rows = SDSS.query_sql(training_catalog_sql(), cache=False)
    print(f"  SQL training-catalogue query: {time.perf_counter() - t0:6.2f} s ({len(rows)} rows)")
    cat = mock.catalog
    pick = np.random.default_rng(0).choice(len(cat), size=min(positions, len(cat)), replace=False)
    coords = SkyCoord(cat["ra"][pick], cat["dec"][pick])
    t0 = time.perf_counter()
    xid = SDSS.query_crossid(coords, photoobj_fields=["ra", "dec", "petroR90_r"], cache=False)
    print(f"  CrossID of {len(coords)} positions: {time.perf_counter() - t0:6.2f} s ({len(xid)} matches)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--galaxies", type=int, default=10000)
    parser.add_argument("--cutouts", type=int, default=400, help="cutouts for the cold run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--appearance", default="classic", choices=("classic", "sdss"),
                        help="appearance preset of the simulated sky (default classic)")
    parser.add_argument("--positions", type=int, default=500, help="positions of the CrossID query")
    parser.add_argument("--sql-only", action="store_true", help="time the SQL side only")
    args = parser.parse_args(argv)

    from astro_metallicity.mock import MockSDSS, MockSky

    print(f"mock SDSS benchmark: {args.galaxies} galaxies, seed {args.seed}")
    t0 = time.perf_counter()
    sky = MockSky(args.galaxies, args.seed, appearance=args.appearance)
    t_start = time.perf_counter() - t0
    nfield = len(sky.footprint)
    print(f"  sky start (catalogue + footprint): {t_start:6.2f} s  "
          f"({nfield} fields, {args.galaxies / nfield:.0f} galaxies/field; target < 10 s)")
    if args.sql_only:
        with MockSDSS(sky=sky) as mock:
            _bench_sql(mock, args.positions)
        return

    fp = sky.footprint
    k = len(fp) // 2
    run, camcol, field = fp.run, int(fp.camcol[k]), int(fp.field[k])
    times = {}
    for band in "gri":
        t0 = time.perf_counter()
        sky.frame(run, camcol, field, band)
        times[band] = time.perf_counter() - t0
    print("  frame render (one band, 2048x1489): "
          + ", ".join(f"{b} {t:.2f} s" for b, t in times.items()) + "  (target < 2 s)")
    t0 = time.perf_counter()
    data = sky.frame_file(run, camcol, field, "r")
    print(f"  frame-r .fits.bz2 file: {time.perf_counter() - t0:6.2f} s, {len(data) / 1e6:.1f} MB")

    with MockSDSS(sky=sky) as mock:
        cat = mock.catalog
        in_field = np.flatnonzero((np.asarray(cat["camcol"]) == camcol) & (np.asarray(cat["field"]) == field))
        urls = _jpeg_urls(mock, in_field)
        _fetch_all(urls[:5], 1)  # warm (neighbour frames)
        for workers in (1, 4):
            dt, sizes = _fetch_all(urls, workers)
            print(f"  getjpeg, frames cached, {workers} client(s): {len(urls) / dt:6.1f} cutouts/s "
                  f"({len(urls)} cutouts, mean {np.mean(sizes) / 1e3:.1f} kB; target >= 30/s)")

        # cold run: random galaxies over the whole sky, nothing cached (regions rendered on demand)
        rows = np.random.default_rng(0).choice(len(cat), size=min(args.cutouts, len(cat)), replace=False)
        urls = _jpeg_urls(mock, rows)
        dt, _ = _fetch_all(urls, 4)
        fields = len({(int(cat["camcol"][j]), int(cat["field"][j])) for j in rows})
        rate = len(urls) / dt
        print(f"  getjpeg cold, random order, 4 clients: {rate:6.1f} cutouts/s "
              f"({len(urls)} cutouts over {fields} fields, no frame cached)")
        print(f"  projected 20,000-galaxy training set: {20000 / rate / 60:5.1f} min")
    print(f"  peak memory (max RSS): {_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
