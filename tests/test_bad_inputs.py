"""Unusable inputs are flagged or refused, never predicted with an empty flag (issue 12)."""

import numpy as np
import pytest
from PIL import Image

from astro_metallicity import predict_metallicity_from_images
from astro_metallicity.model import MetallicityModel, load_model
from astro_metallicity.predict import _image_problem, _load_image


@pytest.fixture(scope="module")
def model(pipeline_model):
    return load_model(pipeline_model, device="cpu")


@pytest.fixture(scope="module")
def galaxy():
    """A colourful 64 px image with a smooth 'galaxy' and noise, which passes every check."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((xx - 32.0) ** 2 + (yy - 32.0) ** 2) / 80.0)
    image = np.stack([200 * blob, 150 * blob, 90 * blob], axis=-1) + rng.normal(12, 4, (64, 64, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    image[0, 0] = (255, 0, 0)  # values span 0-255 exactly, for the range messages below
    return image


def _rows(result):
    z = result["metallicity"]
    return list(result["flag"]), list(np.asarray(z.mask))


def test_good_image_passes(galaxy, model):
    assert _image_problem(galaxy) == ""
    flags, masked = _rows(predict_metallicity_from_images([galaxy], model=model))
    assert flags == ["ok"] and masked == [False]


# (what the issue tried, the exact flag); sizes are width x height.
BAD_IMAGES = {
    "uint16": (lambda g: g.astype(np.uint16) * 257,
               "bad_image: 16-bit values (max 65535 > 255); expected 8-bit 0-255"),
    "grayscale_2d": (lambda g: g[..., 0],
                     "bad_image: grayscale (1 channel); expected a gri colour composite"),
    "grayscale_1_channel": (lambda g: g[..., :1],
                            "bad_image: grayscale (1 channel); expected a gri colour composite"),
    "grey_rgb": (lambda g: np.repeat(g[..., :1], 3, axis=-1),
                 "bad_image: grayscale (R = G = B); expected a gri colour composite"),
    "empty": (lambda g: np.zeros((0, 0, 3), np.uint8), "bad_image: empty (shape (0, 0, 3))"),
    "all_nan": (lambda g: np.full((64, 64, 3), np.nan),
                "bad_image: not finite (12288 of 12288 values NaN or inf)"),
    "one_inf": (lambda g: np.where(np.arange(3) == 0, np.inf, g / 255.0)[:1].repeat(64, 0),
                "bad_image: not finite (4096 of 12288 values NaN or inf)"),
    "blank": (lambda g: np.full((64, 64, 3), 30, np.uint8), "bad_image: blank (every value 30)"),
    "blank_float_zero": (lambda g: np.zeros((64, 64, 3)), "bad_image: blank (every value 0)"),
    "almost_blank": (lambda g: (30 + (np.arange(64 * 64 * 3) % 2)).reshape(64, 64, 3)
                     .astype(np.uint8),
                     "bad_image: blank (pixel standard deviation 0.50 < 2)"),
    "10x10": (lambda g: g[:10, :10], "bad_image: too small (10x10 px < 32x32)"),
    "1x1": (lambda g: g[:1, :1], "bad_image: too small (1x1 px < 32x32)"),
    "300x200": (lambda g: np.asarray(Image.fromarray(g).resize((300, 200))),
                "bad_image: not square (300x200 px)"),
    "saturated": (lambda g: np.where(np.arange(64)[:, None, None] < 40, 255, g).astype(np.uint8),
                  "bad_image: saturated (62% of pixels at 255)"),
    "rgba": (lambda g: np.concatenate([g, g[..., :1]], axis=-1),
             "bad_image: 4 channels; expected 3 (RGB, shape (H, W, 3))"),
    "negative": (lambda g: g.astype(np.int16) - 100,
                 "bad_image: values out of range (-100 to 155); expected 0-255"),
    "float_out_of_range": (lambda g: g * 10.0, "bad_image: values out of range (0 to 2550); "
                                               "expected 0-255 or 0-1"),
    "bool": (lambda g: g > 100, "bad_image: bool values; expected numbers 0-255"),
    "not_an_image": (lambda g: np.float64(3.0),
                     "bad_image: not an image (shape ()); expected (H, W, 3)"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_unusable_array_is_flagged_and_masked(name, galaxy, model):
    make, flag = BAD_IMAGES[name]
    # between two good images: a bad one never stops the list or shifts the rows
    result = predict_metallicity_from_images([galaxy, make(galaxy), galaxy], model=model)
    flags, masked = _rows(result)
    assert flags == ["ok", flag, "ok"]
    assert masked == [False, True, False]
    z = np.asarray(result["metallicity"].unmasked.value)
    assert z[0] == z[2]


def test_unusable_files_are_flagged(tmp_path, galaxy, model):
    g16 = tmp_path / "sixteen.png"
    Image.fromarray((galaxy[..., 0].astype(np.uint16) * 257)).save(g16)  # mode I;16
    grey = tmp_path / "grey.png"
    Image.fromarray(galaxy[..., 0]).save(grey)  # mode L
    grey_rgb = tmp_path / "grey_rgb.jpg"
    Image.fromarray(galaxy[..., 0]).convert("RGB").save(grey_rgb, quality=90)
    small = tmp_path / "small.png"
    Image.fromarray(galaxy[:16, :16]).save(small)
    good = tmp_path / "good.png"
    Image.fromarray(galaxy).save(good)
    result = predict_metallicity_from_images([g16, grey, grey_rgb, small, good], model=model)
    flags, masked = _rows(result)
    assert flags == [
        "bad_image: 16-bit values (mode I;16); expected an 8-bit colour composite",
        "bad_image: grayscale (1 channel); expected a gri colour composite",
        "bad_image: grayscale (R = G = B); expected a gri colour composite",
        "bad_image: too small (16x16 px < 32x32)",
        "ok",
    ]
    assert masked == [True, True, True, True, False]


def test_whole_input_errors_before_loading_the_model(galaxy, monkeypatch):
    from astro_metallicity import predict

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(predict, "_get_model", no_model)
    with pytest.raises(ValueError, match=r"shape \(N, H, W, 3\) or \(H, W, 3\).*got \(64, 64\)"):
        predict_metallicity_from_images(galaxy[..., 0])
    with pytest.raises(ValueError, match=r"got \(2, 64, 64, 1\)"):
        predict_metallicity_from_images(np.zeros((2, 64, 64, 1), np.uint8))
    with pytest.raises(TypeError, match="images must be a path, an array or a sequence"):
        predict_metallicity_from_images(42)
    with pytest.raises(ValueError, match="names has 1 entries for 2 images"):
        predict_metallicity_from_images([galaxy, galaxy], names=["a"])


def test_float_and_integer_images_convert_as_before(galaxy, model):
    """Good images in other dtypes give the uint8 image's prediction (as on HEAD)."""
    result = predict_metallicity_from_images(
        [galaxy, galaxy / 255.0, galaxy.astype(np.float32), galaxy.astype(np.int64)], model=model)
    flags, masked = _rows(result)
    assert flags == ["ok"] * 4
    z = np.asarray(result["metallicity"].unmasked.value)
    np.testing.assert_array_equal(z, z[0])


def test_non_finite_model_output_is_flagged(galaxy, model, monkeypatch):
    original = MetallicityModel._run

    def nan_for_second(self, images, **kwargs):
        out, embedding = original(self, images, **kwargs)
        out["metallicity"][1] = np.nan
        out["log_mstar_err"][2] = np.inf
        return out, embedding

    # the pipeline runs the network through _run (predictions and embedding together)
    monkeypatch.setattr(MetallicityModel, "_run", nan_for_second)
    result = predict_metallicity_from_images([galaxy] * 4, model=model)
    flags, masked = _rows(result)
    failed = "model_failed: non-finite output"
    assert flags == ["ok", failed, failed, "ok"]
    assert masked == [False, True, True, False]
    # the whole row is masked, not only the non-finite value
    assert list(np.asarray(result["log_mstar"].mask)) == masked
    assert list(np.asarray(result["metallicity_err"].mask)) == masked


def test_real_sdss_jpegs_pass_every_check(shared_data):
    """None of the 400 real ImgCutout JPEGs is flagged (thresholds leave a wide margin)."""
    files = sorted((shared_data / "sdss-gri-jpeg-400" / "images").glob("*.jpg"))
    assert len(files) == 400
    flags = {path.name: _load_image(path, 128)[1] for path in files}
    assert {name: flag for name, flag in flags.items() if flag} == {}
