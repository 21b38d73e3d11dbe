"""The label-free output alignment of benchmarks/pretrained_only.py (the benchmark itself needs
the recipe's simulated store and pretraining, half an hour of CPU; the model card reports it)."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("pretrained_only")


def test_each_half_is_aligned_with_the_other_halfs_statistics(bench):
    reference = np.array([8.7, 8.9, 9.1, 8.9])  # mean 8.9, std sqrt(0.02)
    pred = np.array([8.0, 9.0, 10.0, 8.5, 8.6, 8.7])
    first, second = np.array([0, 2, 4]), np.array([1, 3, 5])
    aligned = bench.align_outputs(pred, reference, (first, second))
    std_ref = np.sqrt(0.02)
    # part 0 by part 1's statistics (mean 8.733..., std of [9.0, 8.5, 8.7]) and the reverse
    for part, other in ((first, second), (second, first)):
        expected = 8.9 + (pred[part] - pred[other].mean()) * std_ref / pred[other].std()
        np.testing.assert_allclose(aligned[part], expected)
    # halves drawn alike are mapped onto the reference's mean and spread
    rng = np.random.default_rng(1)
    wide = rng.normal(9.2, 0.4, 20_000)
    halves = bench.split_halves(len(wide), 0)
    aligned = bench.align_outputs(wide, reference, halves)
    assert aligned.mean() == pytest.approx(8.9, abs=0.01)
    assert aligned.std() == pytest.approx(std_ref, rel=0.02)
    # an affine map: the ranking, and so any correlation with labels, is kept
    for idx in halves:
        assert np.corrcoef(aligned[idx], wide[idx])[0, 1] == pytest.approx(1.0)


def test_split_halves_matches_sim_translation(bench, load_benchmark):
    translation = load_benchmark("sim_translation")
    for a, b in zip(bench.split_halves(400, 0), translation.split_halves(400, 0), strict=True):
        np.testing.assert_array_equal(a, b)
    first, second = bench.split_halves(9, 3)
    assert len(first) == 4 and len(second) == 5
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(9))


def test_alignment_errors(bench):
    reference = np.array([8.8, 9.0])
    with pytest.raises(ValueError, match="halves must split the predictions into two disjoint"):
        bench.align_outputs(np.arange(4.0), reference, (np.array([0, 1]), np.array([1, 2])))
    with pytest.raises(ValueError, match="halves must split the predictions into two disjoint"):
        bench.align_outputs(np.arange(4.0), reference, (np.array([0]), np.array([1, 2])))
    for bad in ((np.array([0, 1, 1]), np.array([2, 3, 4])), (np.array([0, -1]), np.array([1, 3]))):
        with pytest.raises(ValueError, match="halves must split the predictions"):
            bench.align_outputs(np.arange(float(sum(len(h) for h in bad))), reference, bad)
    with pytest.raises(ValueError, match="the predictions of a half do not vary"):
        bench.align_outputs(np.array([1.0, 2.0, 3.0, 3.0]), reference,
                            (np.array([0, 1]), np.array([2, 3])))


def test_file_name_order_is_the_order_of_sorted_jpeg_files(bench, tmp_path):
    objids = np.array([587722982838812701, 587722982838812700, 1237645879551066262, 12345])
    for objid in objids:
        (tmp_path / f"{objid}.jpg").touch()
    files = [int(f.stem) for f in sorted(tmp_path.glob("*.jpg"))]  # as sim_realism.load_real
    assert objids[bench.file_name_order(objids)].tolist() == files


def test_bootstrap_refits_the_alignment(bench):
    rng = np.random.default_rng(0)
    truth = rng.normal(8.9, 0.2, 400)
    pred = 8.95 + 1.6 * (truth - 8.9) + rng.normal(0, 0.1, 400)  # too wide, offset
    reference = rng.normal(8.9, 0.2, 2000)
    halves = bench.split_halves(400, 0)
    aligned = bench.align_outputs(pred, reference, halves)
    rmse = np.sqrt(np.mean((aligned - truth) ** 2))
    gain = np.sqrt(np.mean((pred - truth) ** 2)) - rmse
    (lo, hi), (glo, ghi) = bench.bootstrap(truth, pred, reference, halves, n_boot=300, seed=1)
    assert lo < rmse < hi and glo < gain < ghi
    assert glo > 0  # narrowing and centring clearly helps here
    assert (lo, hi) == bench.bootstrap(truth, pred, reference, halves, n_boot=300, seed=1)[0]
