"""The out-of-distribution score and flag (astro_metallicity.ood; issue 12)."""

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from astro_metallicity import log, predict_metallicity_from_images
from astro_metallicity.model import bundled_model_path, load_model, save_model
from astro_metallicity.ood import (
    _N_CHECK,
    _OTHER_ORDERS,
    IMAGE_FEATURES,
    _calibrate,
    _channel_order,
    _fit_reference,
    _image_features,
    _read_reference,
    _scores,
    ood_score,
)
from astro_metallicity.table import build_result_table

FLAG = re.compile(r"^ood: unlike the training images \(score (\d+\.\d) > (\d+\.\d)\)$")


@pytest.fixture(scope="module")
def bundled():
    if not bundled_model_path().is_file():
        pytest.skip("the bundled model is not installed")
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def sky():
    """A simulated sky with the look of the bundled model's pretraining sky."""
    from astro_metallicity.mock import MockSky

    return MockSky(n_galaxies=60, seed=5, appearance="sdss")


def _jpeg(sky, ra, dec, scale):
    from PIL import Image

    data = sky.cutout_jpeg(ra, dec, scale, 128, 128)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def galaxies(sky):
    """ImgCutout-style JPEGs of the three brightest simulated galaxies, at the adaptive scale."""
    cat = sky.catalog
    order = np.argsort(np.asarray(cat["petroMag_r"].value))[:3]
    return np.stack([_jpeg(sky, cat["ra"][j].value, cat["dec"][j].value,
                           2 * cat["petroR90_r"][j].value / (0.396 * 128)) for j in order])


@pytest.fixture(scope="module")
def blank():
    """An ImgCutout-style JPEG of empty sky (the realistic "sdss" appearance, whose sky is not
    black), away from the catalogue galaxies: it passes the image checks."""
    from astro_metallicity.mock import MockSky

    sky = MockSky(n_galaxies=60, seed=5, appearance="sdss")
    cat = sky.catalog
    image = _jpeg(sky, cat["ra"][3].value + 0.01, cat["dec"][3].value + 0.01, 0.3)
    assert image.std() > 2  # not blank to the eye of the image checks
    return image


def test_bundled_model_has_reference_and_threshold(bundled):
    info = bundled.metadata["ood"]
    assert bundled.ood_reference is not None
    assert info["file"] == "metallicity_resnet18_ood.npz"
    assert set(info["groups"]) == {"real_jpeg", "sim_jpeg"} == set(bundled.ood_reference["groups"])
    # calibrated on the real galaxies: about 2 % flagged by nested cross-validation
    assert 0.0 < info["calibration"]["nested_cv_flag_rate"]["real_jpeg"] <= 0.03
    assert info["image_features"] == list(IMAGE_FEATURES)
    # summary statistics only: no array has one row per training image
    n_images = sum(group["n"] for group in info["groups"].values())
    for part in ("embedding", "image"):
        for stats in bundled.ood_reference[part].values():
            assert all(n_images not in np.shape(value) for value in stats.values())


def test_reference_file_loads_without_pickle(bundled):
    path = bundled_model_path().with_name("metallicity_resnet18_ood.npz")
    assert path.stat().st_size < 1_000_000
    with np.load(path, allow_pickle=False) as data:
        assert all(data[key].dtype != object for key in data.files)
    reference = _read_reference(path)
    mean = reference["embedding"]["real_jpeg"]["mean"]
    assert mean.shape == (512,)  # ResNet-18 penultimate layer


def test_simulated_galaxies_are_in_distribution(galaxies, bundled):
    scores = ood_score(galaxies, model=bundled)
    assert scores.shape == (3,)
    assert np.all(scores < bundled.metadata["ood"]["threshold"])


def test_channel_swapped_galaxy_scores_higher(galaxies, bundled):
    swapped = np.ascontiguousarray(galaxies[..., ::-1])  # g, r, i as red, green, blue
    assert np.all(ood_score(swapped, model=bundled) > ood_score(galaxies, model=bundled))


def test_channel_order_check_prefers_the_given_order_of_galaxies(galaxies, bundled):
    """The log-likelihood ratio of the likeliest other order: negative for galaxies as
    SkyServer orders them, positive (putting the channels back wins) for every swap, which
    the score flags."""
    reference = bundled.ood_reference
    ratio = _channel_order(reference, _image_features(galaxies, checks=True))
    assert np.all(ratio < 0)
    threshold = bundled.metadata["ood"]["threshold"]
    for order in _OTHER_ORDERS:
        swapped = np.ascontiguousarray(galaxies[..., list(order)])
        features = _image_features(swapped, checks=True)
        assert np.all(_channel_order(reference, features) > 0), order
    swapped = np.stack([np.ascontiguousarray(g[..., list(o)])
                        for g in galaxies for o in _OTHER_ORDERS])
    assert np.mean(ood_score(swapped, model=bundled) > threshold) >= 0.8


def test_checks_are_skipped_without_their_statistics(galaxies, bundled):
    """A reference written before the channel-order check (no colour statistics) or image
    statistics without its columns score as the embedding and image distances alone."""
    reference = bundled.ood_reference
    old = {"groups": reference["groups"], "embedding": reference["embedding"],
           "image": {name: {k: v for k, v in group.items()
                            if k in ("mean", "precision", "scale")}
                     for name, group in reference["image"].items()}}
    swapped = np.ascontiguousarray(galaxies[..., ::-1])
    features = _image_features(swapped, checks=True)
    assert features.shape == (3, len(IMAGE_FEATURES) + _N_CHECK)
    _, embedding = bundled._run(swapped, embed=True)
    assert np.all(_channel_order(old, features) == 0)
    plain = _scores(old, embedding, features[:, :len(IMAGE_FEATURES)])
    np.testing.assert_allclose(_scores(old, embedding, features), plain)
    assert np.all(_scores(reference, embedding, features) >= plain)


def test_blank_sky_is_flagged_but_predicted(blank, galaxies, bundled):
    result = predict_metallicity_from_images([galaxies[0], blank], model=bundled)
    threshold = bundled.metadata["ood"]["threshold"]
    assert result["flag"][0] == "ok"
    match = FLAG.match(result["flag"][1])
    assert match, result["flag"][1]
    assert float(match.group(2)) == pytest.approx(threshold, abs=0.05)
    score = float(result["ood_score"][1])
    assert score > threshold
    assert float(match.group(1)) == pytest.approx(score, abs=0.05)
    # the prediction is kept: the flag warns, it does not withhold
    assert not np.any(np.asarray(result["metallicity"].mask))
    assert float(result["ood_score"][0]) < threshold


def test_threshold_read_from_metadata(tmp_path, galaxies, bundled):
    src = bundled_model_path()
    for suffix in (".pt", ".json"):
        shutil.copy(src.with_suffix(suffix), tmp_path / f"m{suffix}")
    shutil.copy(src.with_name("metallicity_resnet18_ood.npz"), tmp_path / "m_ood.npz")
    meta = json.loads((tmp_path / "m.json").read_text())
    meta["ood"]["file"] = "m_ood.npz"
    meta["ood"]["threshold"] = 0.01
    (tmp_path / "m.json").write_text(json.dumps(meta))
    result = predict_metallicity_from_images(galaxies, model=tmp_path / "m.pt")
    assert all(FLAG.match(flag) and flag.endswith("> 0.0)") for flag in result["flag"])
    meta["ood"]["threshold"] = 1e6
    (tmp_path / "m.json").write_text(json.dumps(meta))
    result = predict_metallicity_from_images(galaxies, model=tmp_path / "m.pt")
    assert list(result["flag"]) == ["ok"] * 3


def test_model_without_reference_gives_masked_score(pipeline_model, galaxies):
    model = load_model(pipeline_model, device="cpu")
    assert model.ood_reference is None
    with log.log_to_list() as records:
        result = predict_metallicity_from_images(galaxies, model=model)
    assert list(result["flag"]) == ["ok"] * 3
    assert np.all(np.asarray(result["ood_score"].mask))
    assert any("no out-of-distribution reference" in r.getMessage() for r in records)
    half = np.ascontiguousarray(galaxies[:, ::2, ::2])  # the tiny model's 64 px cutouts
    assert np.all(np.isnan(ood_score(half, model=model)))
    with pytest.raises(ValueError, match=r"images are 128x128 px; the model's statistics "
                                         r"describe 64x64 px cutouts"):
        ood_score(galaxies, model=model)


def test_save_model_keeps_or_drops_the_reference(tmp_path, bundled):
    meta = bundled.metadata
    save_model(bundled.network, meta, tmp_path / "kept", ood_reference=bundled.ood_reference)
    kept = load_model(tmp_path / "kept.pt", device="cpu")
    assert json.loads((tmp_path / "kept.json").read_text())["ood"]["file"] == "kept_ood.npz"
    np.testing.assert_allclose(kept.ood_reference["image"]["real_jpeg"]["precision"],
                               bundled.ood_reference["image"]["real_jpeg"]["precision"])
    # statistics of other weights would score wrongly: without ood_reference they are dropped
    save_model(bundled.network, meta, tmp_path / "dropped")
    assert "ood" not in json.loads((tmp_path / "dropped.json").read_text())
    assert load_model(tmp_path / "dropped.pt", device="cpu").ood_reference is None
    # a missing statistics file: the model still loads, without a score
    (tmp_path / "kept_ood.npz").unlink()
    with log.log_to_list() as records:
        assert load_model(tmp_path / "kept.pt", device="cpu").ood_reference is None
    assert any("not found" in r.getMessage() for r in records)


def test_result_table_flags_ood_rows_only_where_predicted():
    from astropy.table import QTable

    table = QTable({"name": ["a", "b", "c", "d"]})
    predictions = {"metallicity": np.array([8.9, 9.0, np.nan, 8.7]),
                   "metallicity_err": np.full(4, 0.1)}
    flags = ["", "", "fetch_failed: HTTP 404", ""]
    result = build_result_table(table, flags, predictions, ood_score=[0.5, 7.3, 9.0, np.nan],
                                ood_threshold=4.0)
    assert list(result["flag"]) == ["ok", "ood: unlike the training images (score 7.3 > 4.0)",
                                    "fetch_failed: HTTP 404", "ok"]
    assert list(np.asarray(result["metallicity"].mask)) == [False, False, True, False]
    assert list(np.asarray(result["ood_score"].mask)) == [False, False, False, True]
    with pytest.raises(ValueError, match=r"ood_score has shape \(2,\), expected \(4,\)"):
        build_result_table(table, flags, predictions, ood_score=[1.0, 2.0])


def test_calibration_on_known_distributions():
    """Gaussian 'embeddings': about 2 % of in-distribution points flagged out of fold,
    points 20 sigma away along one direction (embedding or image statistic) all flagged
    (a distance over many directions dilutes a shift along one: 10 sigma is not enough)."""
    rng = np.random.default_rng(0)
    n, d, f = 500, 40, len(IMAGE_FEATURES)
    emb = rng.normal(size=(n, d)) * np.linspace(3, 0.5, d)
    feat = rng.normal(size=(n, f))
    groups = np.array(["a"] * n)
    threshold, report = _calibrate(emb, feat, groups, calibration_group="a")
    assert 0.005 <= report["nested_flag_rate"]["a"] <= 0.05
    reference = _fit_reference(emb, feat, groups)
    shifted = rng.normal(size=(50, d)) * np.linspace(3, 0.5, d)
    shifted[:, 0] += 20 * 3.0
    fresh = rng.normal(size=(50, f))
    assert np.mean(_scores(reference, shifted, fresh) > threshold) == 1.0
    # derived images are scored by the outer fold that left their source out: copies of
    # reference points shifted 20 sigma all flagged, unshifted copies about as often as
    # the points themselves
    moved = emb[:100].copy()
    moved[:, 0] += 20 * 3.0
    source = np.arange(100)
    _, derived = _calibrate(emb, feat, groups, calibration_group="a",
                            derived=(np.concatenate([moved, emb[:100]]),
                                     np.concatenate([feat[:100], feat[:100]]),
                                     np.concatenate([source, source])))
    assert np.all(derived["derived_flagged"][:100])
    assert np.mean(derived["derived_flagged"][100:]) <= 0.06
    odd_image = fresh.copy()
    odd_image[:, 0] += 20.0
    assert np.mean(_scores(reference, rng.normal(size=(50, d)) * np.linspace(3, 0.5, d),
                           odd_image) > threshold) == 1.0


def test_image_features_see_the_artefacts(galaxies):
    base = _image_features(galaxies[:1])[0]
    names = list(IMAGE_FEATURES)
    hot = galaxies[0].copy()
    rng = np.random.default_rng(1)
    hot[rng.integers(0, 128, 200), rng.integers(0, 128, 200)] = 255
    striped = galaxies[0].copy()
    striped[:, 40] = 220
    feats = _image_features(np.stack([hot, striped]))
    assert feats[0, names.index("log_hot")] > base[names.index("log_hot")] + 0.5
    assert feats[1, names.index("log_stripe")] > base[names.index("log_stripe")] + 0.5


@pytest.fixture(scope="module")
def bench_report(load_benchmark):
    """benchmarks/bench_ood.py run once (about two minutes on one core)."""
    import os

    # as the shared_data fixture finds it (which is per test, this fixture per module)
    shared = Path(os.environ.get("ASTRO_METALLICITY_SHARED_DATA",
                                 Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not shared.is_dir():
        pytest.skip("../shared/data (real SDSS sample) is not available")
    bench = load_benchmark("bench_ood")
    return bench.run(real_dir=shared / "sdss-gri-jpeg-400", simulated=False)


@pytest.mark.slow
def test_benchmark_real_galaxies_spared(bench_report):
    """<= 3 % of the 400 real JPEGs flagged out of fold (nested cross-validation)."""
    assert bench_report["real_jpegs_out_of_fold"]["n"] == 400
    assert bench_report["real_jpegs_out_of_fold"]["flagged_fraction"] <= 0.03


@pytest.mark.slow
def test_benchmark_unusable_inputs_mostly_flagged(bench_report):
    """Every kind fully flagged, channel swaps included, but stars (18 of 24 today) and
    square-root stretches (8 of 12)."""
    unusable = bench_report["unusable_inputs"]
    assert unusable["n"] >= 200
    partial = {"star_jpeg": 0.7, "star_frames": 0.7, "stretch_sqrt": 0.6}
    for kind, (flagged, n) in unusable["per_kind_flagged_of_n"].items():
        assert flagged / n >= partial.get(kind, 1.0), kind


@pytest.mark.slow
def test_benchmark_channel_swaps_flagged_out_of_fold(bench_report):
    """Each real JPEG with its channels in another order, scored by a reference and
    threshold that never saw the original (nested cross-validation): nearly all flagged."""
    assert bench_report["real_jpegs_out_of_fold"]["channel_swapped_flagged"] >= 0.9


@pytest.mark.slow
def test_benchmark_unusable_inputs_flagged_95_percent(bench_report):
    """The issue's target: >= 95 % of the unusable inputs flagged."""
    assert bench_report["unusable_inputs"]["flagged_fraction"] >= 0.95
