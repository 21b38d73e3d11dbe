"""Preprocessing: calibrated *gri* frames to the colour cutout the CNN reads.

The network reads the same kind of image SDSS's ImgCutout service serves: an
8-bit *gri* colour composite with an asinh (Lupton et al. 1999, 2004)
stretch. The frames route builds that composite locally with
`gri_composite`; the mock SDSS server renders its ImgCutout JPEGs with the
same function, so real JPEGs, mock JPEGs and locally built cutouts share one
input domain.
"""

import numpy as np

__all__ = ["SDSS_JPEG_STRETCH", "gri_composite"]

#: Parameters of the asinh colour stretch that mimics SDSS ImgCutout JPEGs.
#: ``band_scales`` multiply the g, r, i images (nanomaggies per pixel) before
#: they are mapped to blue, green, red; ``q`` and ``stretch`` are the Lupton
#: softening and linear-range parameters of `~astropy.visualization.make_lupton_rgb`.
#: A trained model stores the values it was trained with in its metadata and
#: prediction reads them from there.
SDSS_JPEG_STRETCH = {"band_scales": [6.0, 3.4, 2.2], "q": 8.0, "stretch": 7.0}


def gri_composite(g, r, i, *, band_scales=None, q=None, stretch=None):
    """Combine calibrated *g*, *r*, *i* images into an SDSS-style colour composite.

    Parameters
    ----------
    g, r, i : `~numpy.ndarray`
        Background-subtracted images in nanomaggies per pixel, all the same shape.
        Non-finite pixels are treated as zero flux.
    band_scales : sequence of 3 float, optional
        Multipliers for g, r, i. Default from `SDSS_JPEG_STRETCH`.
    q, stretch : float, optional
        Asinh softening and linear stretch. Default from `SDSS_JPEG_STRETCH`.

    Returns
    -------
    rgb : `~numpy.ndarray`
        ``uint8`` array of shape ``(ny, nx, 3)`` with i, r, g mapped to red,
        green, blue, as in SDSS colour images.
    """
    from astropy.visualization import make_lupton_rgb

    g, r, i = (np.asarray(band, dtype=np.float64) for band in (g, r, i))
    if not (g.shape == r.shape == i.shape) or g.ndim != 2:
        msg = f"g, r and i must be 2-D images of one shape, got {g.shape}, {r.shape}, {i.shape}"
        raise ValueError(msg)
    band_scales = SDSS_JPEG_STRETCH["band_scales"] if band_scales is None else band_scales
    q = SDSS_JPEG_STRETCH["q"] if q is None else q
    stretch = SDSS_JPEG_STRETCH["stretch"] if stretch is None else stretch
    scaled = [np.nan_to_num(band, nan=0.0, posinf=0.0, neginf=0.0) * scale
              for band, scale in zip((g, r, i), band_scales)]
    blue, green, red = scaled
    return make_lupton_rgb(red, green, blue, minimum=0.0, stretch=stretch, Q=q)
