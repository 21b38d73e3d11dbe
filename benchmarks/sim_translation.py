"""Learned sim-to-real translation: how much of the realism gap a smooth gain/offset field closes.

An experiment towards issue 11 (the recipe does not use it yet). The translator of
`astro_metallicity.train.translation` (a gain and offset field at 32 x 32 px,
predicted from the cutout, identity at the start) is trained adversarially on
half of the 400 real SDSS ImgCutout JPEGs, without their labels, and measured
with the two tests of ``benchmarks/sim_realism.py`` on the *other* half:

1. Real: the 400 JPEGs are split at random (``--split-seed``) into half A, which
   trains the translator, and half B, which only tests it.
2. Simulated, training: ``--n-train`` cutouts of a `~astro_metallicity.mock.MockSky`
   with ``--train-seed`` (default 7003, a seed used to tune the simulation), drawn
   like the benchmark's (spectroscopic sample, label-matched order).
3. Simulated, test: as many cutouts as half B from ``--seed`` (default 7002, the
   benchmark's held-out seed; 7001 is the seed to choose settings on).
4. Both test sets of simulated cutouts, untranslated and translated, are saved
   once more as JPEG (quality 92, 4:2:0, like the real files), so that the JPEG
   statistics compare like with like (the simulated files were already saved
   twice, at quality 72 and 92, so this is their third pass; the real files'
   second).
5. Prints the statistics and CNN AUCs of half B against the untranslated and the
   translated cutouts (5-fold out-of-fold ROC AUC, as ``sim_realism.py``), the mean
   absolute change of the pixels, the translator's training log and the run time.

Run::

    OMP_NUM_THREADS=1 python benchmarks/sim_translation.py [--quick] [--output-dir DIR]

(``--noise-channels N`` gives the translator N noise maps to paint random structure
with; see `~astro_metallicity.train.translation.train_translation`.)

Writes ``sim_translation.json``, ``translator.pt`` (`~astro_metallicity.train.translation.
load_translator` reads it back) and ``montage.png`` (eight test cutouts untranslated, the
same translated, and eight of half B) to the output directory (default: a new temporary
directory, printed). About 10 minutes on two CPU cores with the defaults.
"""

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_realism as realism


def split_halves(n, seed):
    """Indices of two disjoint random halves of ``range(n)`` (A trains, B tests)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def resave_jpeg(images, quality=92):
    """Each uint8 image saved as a JPEG (4:2:0, like the real files) and decoded again."""
    from PIL import Image

    out = np.empty_like(images)
    for k, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality, subsampling=2)
        out[k] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def two_sample(real, sim, args, log):
    """Statistics and CNN AUCs of ``real`` against ``sim`` (as sim_realism.py)."""
    pixels = np.concatenate([real, sim])
    y = np.r_[np.zeros(len(real)), np.ones(len(sim))].astype(int)
    folds = realism._folds(y, args.cv_seed)
    _, X = realism.statistics_matrix(pixels)
    stats = realism.stats_test(X, y, folds, args.cv_seed)
    cnn = realism.cnn_test(pixels, y, folds, args.cv_seed, args.epochs, args.threads,
                           log=lambda m: None)
    log(f"  statistics AUC {stats['auc']:.3f}, CNN AUC {cnn['auc']:.3f}")
    return {"statistics": stats, "cnn": cnn}


def montage(path, rows):
    """Rows of 8 cutouts, one row per array in ``rows``."""
    from PIL import Image

    Image.fromarray(np.concatenate([np.concatenate(list(r[:8]), axis=1) for r in rows],
                                   axis=0)).save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=None,
                        help="real JPEGs (as sim_realism.py; default ../shared/data)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the real halves")
    parser.add_argument("--n-train", type=int, default=2000,
                        help="simulated cutouts the translator trains on (default 2000)")
    parser.add_argument("--train-seed", type=int, default=7003,
                        help="MockSky seed of the training cutouts (default 7003)")
    parser.add_argument("--seed", type=int, default=7002,
                        help="MockSky seed of the test cutouts (default 7002, held out; "
                             "choose settings on 7001)")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--penalty", type=float, default=0.1,
                        help="weight of the L1 penalty on gain and offset (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--noise-channels", type=int, default=0,
                        help="noise maps given to the translator (default 0: deterministic)")
    parser.add_argument("--translator-seed", type=int, default=0,
                        help="seed of the translator's training (default 0)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of the CNN test")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--cv-seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 60 real per half, 200 training cutouts, 50 iterations, "
                             "3 CNN epochs")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.seed == args.train_seed:
        parser.error("--seed and --train-seed must differ (test on galaxies not trained on)")
    from astro_metallicity.train.translation import (
        save_translator,
        train_translation,
        translate_images,
    )

    t_start = time.perf_counter()
    timings = {}
    out_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="sim_translation_"))
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    real, oh_real, _, _, folder = realism.load_real(args.real or realism.default_shared_data())
    half_a, half_b = split_halves(len(real), args.split_seed)
    if args.quick:
        half_a, half_b = half_a[:60], half_b[:60]
        args.n_train, args.iterations, args.epochs = min(args.n_train, 200), 50, 3
    log(f"real: {len(real)} cutouts from {folder}; half A ({len(half_a)}) trains the "
        f"translator, half B ({len(half_b)}) tests it")
    t0 = time.perf_counter()
    sim_train, _, _, _ = realism.load_sim(args.n_train, args.train_seed, oh_real, pool_factor=2)
    sim_test, _, _, _ = realism.load_sim(len(half_b), args.seed, oh_real)
    timings["simulate_s"] = time.perf_counter() - t0
    log(f"simulated: {len(sim_train)} training cutouts (seed {args.train_seed}), "
        f"{len(sim_test)} test cutouts (seed {args.seed}); {timings['simulate_s']:.0f} s")

    t0 = time.perf_counter()
    result = train_translation(sim_train, real[half_a], iterations=args.iterations,
                               penalty=args.penalty, batch_size=args.batch_size,
                               noise_channels=args.noise_channels,
                               seed=args.translator_seed, threads=args.threads,
                               log_every=max(args.iterations // 10, 1), log=log)
    timings["train_s"] = time.perf_counter() - t0
    save_translator(result.translator, out_dir / "translator.pt")
    translated = translate_images(result.translator, sim_test)
    change = np.abs(translated.astype(float) - sim_test.astype(float))
    log(f"translator trained in {timings['train_s']:.0f} s; mean |change| {change.mean():.2f} "
        f"levels (0-255), 99th percentile {np.percentile(change, 99):.1f}")

    t0 = time.perf_counter()
    untranslated, translated = resave_jpeg(sim_test), resave_jpeg(translated)
    log(f"half B ({len(half_b)} real) against the untranslated test cutouts:")
    before = two_sample(real[half_b], untranslated, args, log)
    log("... against the translated ones:")
    after = two_sample(real[half_b], translated, args, log)
    timings["tests_s"] = time.perf_counter() - t0
    montage(out_dir / "montage.png", [untranslated, translated, real[half_b]])
    timings["total_s"] = time.perf_counter() - t_start
    report = {"untranslated": before, "translated": after, "history": result.history,
              "mean_abs_change": float(change.mean()), "n_real_train": len(half_a),
              "n_real_test": len(half_b), "n_sim_train": len(sim_train),
              "n_sim_test": len(sim_test), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                         for k, v in vars(args).items()},
              "timings_s": timings}
    (out_dir / "sim_translation.json").write_text(json.dumps(report, indent=1))
    log(f"\nCNN AUC {before['cnn']['auc']:.3f} -> {after['cnn']['auc']:.3f}, statistics AUC "
        f"{before['statistics']['auc']:.3f} -> {after['statistics']['auc']:.3f} "
        f"(0.5: indistinguishable); {timings['total_s']:.0f} s in all; wrote {out_dir}")
    return report


if __name__ == "__main__":
    main()
