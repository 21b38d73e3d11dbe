"""Helpers of benchmarks/sim_realism.py that its diagnostics rest on (the benchmark itself
needs the real cutouts and minutes of CPU; the realism page reports its runs)."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def realism(load_benchmark):
    return load_benchmark("sim_realism")


def test_block_average_keeps_only_coarse_structure(realism):
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    images = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)  # constant on 8 x 8 blocks
    np.testing.assert_array_equal(realism.block_average(images, 16), images)
    checker = ((np.indices((128, 128)).sum(axis=0) % 2) * 200).astype(np.uint8)
    fine = np.repeat(checker[None, :, :, None], 3, axis=3)  # 1-px pattern, mean 100
    out = realism.block_average(fine, 16)
    assert out.shape == (1, 128, 128, 3) and out.dtype == np.uint8
    assert np.all(out == 100)


def test_by_axis_ratio_bins_and_medians(realism):
    names = ["axis_ratio", *realism.BY_AXIS_RATIO]
    q_real = np.array([0.5, 0.5, 0.5, 0.7, 0.9, 0.9, 0.9, 1.0])
    q_sim = np.array([0.3, 0.5, 0.9, 0.9, 0.9])
    X_real = np.column_stack([q_real] + [q_real * 10 * (k + 1) for k in range(4)])
    X_sim = np.column_stack([q_sim] + [q_sim * 10 * (k + 1) for k in range(4)])
    rows = realism.by_axis_ratio(names, X_real, X_sim)
    assert [r["range"] for r in rows] == [list(b) for b in realism.AXIS_RATIO_BINS]
    assert [(r["n_real"], r["n_sim"]) for r in rows] == [(0, 1), (3, 1), (1, 0), (4, 3)]
    round_bin = rows[3]["medians"]
    assert round_bin["G_mean_c32"] == pytest.approx([9.0, 9.0])  # axis ratio 1.0 is in the last bin
    assert round_bin["asymmetry"] == pytest.approx([36.0, 36.0])
    assert rows[1]["medians"]["r_half"] == [pytest.approx(10.0), None]  # one simulated: too few
    X_real[0, 2] = np.nan  # a statistic that could not be measured on one cutout
    X_real[4, 0] = np.nan  # nor its axis ratio: it falls in no bin
    rows = realism.by_axis_ratio(names, X_real, X_sim)
    assert [r["n_real"] for r in rows] == [0, 3, 1, 3]
    assert rows[1]["medians"]["r_half"] == [None, None]  # two finite values are too few
    assert rows[1]["medians"]["G_mean_c32"] == [pytest.approx(5.0), None]
    assert realism._fmt(15.0) == "15.0" and realism._fmt(None) == "-"


def test_cnn_extremes_pick_the_telling_cutouts(realism, tmp_path):
    # three real cutouts then four simulated ones, scored as probabilities of "simulated"
    scores = [0.9, 0.1, 0.5, 0.2, 0.95, 0.6, 0.99]
    picks = realism.cnn_extremes(scores, n_real=3, n=2)
    assert picks["sim_most_real"].tolist() == [0, 2]  # 0.2, then 0.6
    assert picks["sim_most_simulated"].tolist() == [3, 1]  # 0.99, then 0.95
    assert picks["real_most_simulated"].tolist() == [0, 2]  # 0.9, then 0.5
    assert picks["real_most_real"].tolist() == [1, 2]
    images = np.zeros((7, 16, 16, 3), dtype=np.uint8)
    realism.extremes_montage(tmp_path / "x.png", images[:3], images[3:], scores, n=2)
    assert (tmp_path / "x.png").stat().st_size > 0


def test_cnn_test_scores_every_cutout_in_input_order(realism):
    # bright images are "simulated": a CNN tells them apart at once, and the scores
    # come back one per cutout, in the order given
    rng = np.random.default_rng(3)
    dark = rng.integers(0, 40, (10, 32, 32, 3)).astype(np.uint8)
    bright = rng.integers(180, 255, (10, 32, 32, 3)).astype(np.uint8)
    images = np.concatenate([dark, bright])
    y = np.r_[np.zeros(10), np.ones(10)].astype(int)
    report = realism.cnn_test(images, y, realism._folds(y, 0), 0, 3, 1, log=lambda m: None)
    assert len(report["scores"]) == len(y)
    scores = np.array(report["scores"])
    assert report["auc"] > 0.9
    assert scores[10:].mean() > scores[:10].mean()
