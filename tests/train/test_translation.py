"""The learned sim-to-real translator (astro_metallicity.train.translation)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from astro_metallicity.train.translation import (
    _make_translator,
    load_translator,
    save_translator,
    train_translation,
    translate_images,
)


def _smooth_images(n, size, seed):
    """Random colour images made of blurred blobs (values 20-120 of 255)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = rng.uniform(0.0, 1.0, (n, size, size, 3))
    base = gaussian_filter(base, sigma=(0, 3, 3, 0))
    base = (base - base.min()) / (base.max() - base.min())
    return (20 + 100 * base).astype(np.uint8)


def test_untrained_translator_is_the_identity():
    images = _smooth_images(5, 32, seed=1)
    images[0, :4] = 255  # saturated and black pixels too
    images[1, :4] = 0
    np.testing.assert_array_equal(translate_images(_make_translator(), images), images)


def test_translator_learns_a_coarse_colour_difference():
    # "real" images are the simulated ones with the red channel 1.6 x brighter: the
    # translator has to find that from images alone and leave green and blue alone
    sim = _smooth_images(64, 16, seed=2)
    real = _smooth_images(64, 16, seed=3)
    real[..., 0] = np.clip(real[..., 0] * 1.6, 0, 255).astype(np.uint8)
    result = train_translation(sim, real, iterations=150, penalty=0.01, batch_size=16, seed=0,
                               ema_decay=0.9, threads=1, log_every=50)
    assert [h["iteration"] for h in result.history] == [50, 100, 150]
    out = translate_images(result.translator, sim).astype(float)
    ratio = out.mean(axis=(0, 1, 2)) / sim.astype(float).mean(axis=(0, 1, 2))
    assert ratio[0] > 1.25  # red brightened towards 1.6
    assert abs(ratio[1] - 1) < 0.5 * (ratio[0] - 1)  # green and blue changed less
    assert abs(ratio[2] - 1) < 0.5 * (ratio[0] - 1)


def test_training_is_seeded_and_the_weights_round_trip(tmp_path):
    sim, real = _smooth_images(16, 16, seed=4), _smooth_images(16, 16, seed=5)
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    a = train_translation(sim, real, iterations=20, seed=7, ema_decay=0.0, threads=1)
    # the caller's torch state is left as it was
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_translation(sim, real, iterations=20, seed=7, ema_decay=0.0, threads=1)
    c = train_translation(sim, real, iterations=20, seed=8, ema_decay=0.0, threads=1)
    out_a = translate_images(a.translator, sim)
    assert not np.array_equal(out_a, sim)  # 20 iterations moved it off the identity
    np.testing.assert_array_equal(translate_images(b.translator, sim), out_a)
    assert not np.array_equal(translate_images(c.translator, sim), out_a)
    save_translator(a.translator, tmp_path / "translator.pt")
    back = load_translator(tmp_path / "translator.pt")
    saved, loaded = a.translator.state_dict(), back.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    np.testing.assert_array_equal(translate_images(back, sim), out_a)


@pytest.mark.parametrize(("images", "match"), [
    (np.zeros((2, 32, 32, 3), dtype=np.float32), "must be uint8"),
    (np.zeros((2, 32, 32), dtype=np.uint8), "must be uint8"),
    (np.zeros((2, 30, 32, 3), dtype=np.uint8), "must be square"),
    (np.zeros((2, 36, 36, 3), dtype=np.uint8), "multiple of 8"),
    (np.zeros((0, 32, 32, 3), dtype=np.uint8), "is empty"),
])
def test_bad_images_are_refused(images, match):
    with pytest.raises(ValueError, match=match):
        translate_images(_make_translator(), images)
    with pytest.raises(ValueError, match=match):
        train_translation(images, np.zeros((2, 32, 32, 3), dtype=np.uint8), iterations=1)


def test_bad_training_arguments_are_refused():
    good = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="must have one size"):
        train_translation(good, np.zeros((2, 64, 64, 3), dtype=np.uint8), iterations=1)
    with pytest.raises(ValueError, match="must be positive"):
        train_translation(good, good, iterations=0)
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        train_translation(good, good, iterations=1, ema_decay=1.0)
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="noise_channels must be a whole number >= 0"):
            train_translation(good, good, iterations=1, noise_channels=bad)


def test_translator_files_from_before_noise_maps_still_load(tmp_path):
    # files written before noise_channels existed carry only channels and reduce
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        old = _make_translator()
        torch.nn.init.normal_(old.out.weight, std=0.05)
    torch.save({"state_dict": old.state_dict(), "config": {"channels": 32, "reduce": 4}},
               tmp_path / "old.pt")
    back = load_translator(tmp_path / "old.pt")
    assert back.noise_channels == 0
    images = _smooth_images(3, 16, seed=9)
    np.testing.assert_array_equal(translate_images(back, images), translate_images(old, images))


def test_benchmark_halves_and_jpeg_resave(load_benchmark):
    bench = load_benchmark("sim_translation")
    a, b = bench.split_halves(400, seed=0)
    assert len(a) == len(b) == 200 and not set(a) & set(b)
    assert sorted(np.r_[a, b]) == list(range(400))
    assert not np.array_equal(a, bench.split_halves(400, seed=1)[0])
    images = _smooth_images(3, 128, seed=6)
    again = bench.resave_jpeg(images)
    assert again.shape == images.shape and again.dtype == np.uint8
    assert np.abs(again.astype(int) - images.astype(int)).mean() < 2.0  # smooth images survive


def test_noise_lets_the_translator_vary_identical_inputs(tmp_path):
    # A deterministic translator maps identical inputs to identical outputs; one given noise
    # maps can paint different structure into each copy, reproducibly for one seed. The
    # output layer is set by hand (it starts at zero): a GAN's few first steps are too
    # erratic to show this reliably.
    sim = np.repeat(_smooth_images(1, 32, seed=6), 8, axis=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain, noisy = _make_translator(), _make_translator(noise_channels=2)
        np.testing.assert_array_equal(translate_images(noisy, sim), sim)  # identity at start
        for net in (plain, noisy):
            torch.nn.init.normal_(net.out.weight, std=0.05)
    out_plain = translate_images(plain, sim).astype(int)
    assert np.ptp(out_plain, axis=0).max() == 0  # every copy changed alike
    assert np.abs(out_plain[0] - sim[0]).max() > 2  # ... but changed
    out = translate_images(noisy, sim, seed=0)
    assert np.ptp(out.astype(int), axis=0).max() > 2  # copies differ by > 2 levels somewhere
    np.testing.assert_array_equal(translate_images(noisy, sim, seed=0), out)
    assert not np.array_equal(translate_images(noisy, sim, seed=1), out)
    save_translator(noisy, tmp_path / "noisy.pt")
    back = load_translator(tmp_path / "noisy.pt")
    assert back.noise_channels == 2
    np.testing.assert_array_equal(translate_images(back, sim, seed=0), out)
    trained = train_translation(sim, sim, iterations=2, noise_channels=3, threads=1)
    assert trained.translator.noise_channels == 3
