"""Appearance presets of the simulated sky: ``"classic"`` (default) and ``"sdss"``.

``appearance="classic"`` is the simulation the previous bundled model was
trained on: its catalogue, frames and JPEGs are unchanged, byte for byte (the
bundled model's sim-pretrained network was pretrained on ``"sdss"``).

``appearance="sdss"`` makes the ImgCutout JPEGs look like real SDSS ones. Each
ingredient below was added because the realism benchmark
(``benchmarks/sim_realism.py``, docs page *Realism of the simulated sky*) showed
that a classifier used it to tell simulated from real cutouts; the numbers
marked *tuned* were set on simulated skies with seeds 7001 and 7003
against the 400 real SDSS DR14 ImgCutout JPEGs, never on seed 7002 (the
held-out seed of the benchmark). The scaling relations that tie the
metallicity to what the images show (Tremonti et al. 2004, Mannucci et al.
2010, Salim et al. 2007, Shen et al. 2003, Taylor et al. 2011 and the disk dust)
are the same in both presets.

Galaxies (catalogue, `~astro_metallicity.mock.simulate_galaxies`):

* thin disks: intrinsic edge-on axis ratio `SDSS_DISK_THICKNESS` (0.12) instead
  of 0.2, so that edge-on disks look like SDSS ones (intrinsic thickness of
  SDSS spirals 0.1-0.2: Padilla & Strauss 2008, MNRAS 388, 1321; Unterborn &
  Ryden 2008, ApJ 687, 976), and bulges flattened like the disks they sit in
  (`SDSS_BULGE_AXIS_RATIO`);
* sizes: the Shen et al. (2003) radii are SDSS Petrosian radii, measured in
  circular apertures, so the major-axis half-light radius of an inclined disk
  is larger by the factor a circular aperture loses on an exponential disk of
  that axis ratio (up to 1/0.58 edge-on), and the catalogue ``petroR50_r`` and
  ``petroR90_r`` are circular-aperture radii (Blanton et al. 2001, AJ 121,
  2358);
* bulge and disk with their own colours: the bulge-to-disk flux weight per band
  `SDSS_BULGE_WEIGHT` is steeper than the classic one (an old, red bulge around
  g - i ~ 1.2 and a bluer star-forming disk; bulge colours of SDSS disk
  galaxies: Lackner & Gunn 2012, MNRAS 421, 2277), and the disk is made bluer
  the faster the galaxy forms stars (`SDSS_DISK_SSFR_COLOUR`): at fixed total
  colour more of the blue light comes from the disk;
* lopsided disks: an m = 1 mode of amplitude A1 drawn from an exponential
  distribution of mean `SDSS_LOPSIDED_MEAN` (0.12; mean A1 ~ 0.1 and ~ 30 % of
  disks with A1 > 0.2 at 1.5-2.5 scale lengths: Zaritsky & Rix 1997, ApJ 477,
  118; Bournaud et al. 2005, A&A 438, 507), growing with radius;
* spiral arms with any number of arms `SDSS_ARM_M` (odd numbers included, so
  that galaxies are not symmetric under a 180 degree rotation);
* star-forming clumps: `clump_n` unresolved knots in the disk holding a
  fraction ``clump_frac`` of the r-band disk light, more in galaxies above the
  star-forming sequence and bluer than the disk (`SDSS_CLUMP_FRACTION`,
  `SDSS_CLUMP_SSFR_SLOPE`; clumps hold a few to ~10 % of the disk light of star-forming
  galaxies, and are found in SDSS images of local ones: Guo et al. 2015, ApJ 800,
  39; Adams et al. 2022, ApJ 931, 16);
* dust lanes in inclined disks: a dust layer thinner than the stars (scale
  height ratio ~ 0.3-0.5: Xilouris et al. 1999, A&A 344, 868) seen through the
  disk's own optical depth ``tau_v`` and the CCM89 law (`SDSS_DUST_LANE`);
* the catalogue position is not exactly the centre of the light: offsets of
  rms `SDSS_POSITION_SCATTER` arcsec per axis between the catalogue
  (deblended peak) position and the centre of the rendered galaxy (SDSS
  astrometry is good to better than 0.1 arcsec, Pier et al. 2003, AJ 125, 1559;
  the rest is the offset between the peak and the light centre of lopsided,
  clumpy galaxies);
* irregular galaxies (column ``irregular``; `SDSS_IRREGULAR_FRACTION`: ~3 % overall,
  ~7 % below 10^9.5 Msun): no arms, strongly lopsided, 12-25 % of the disk light in
  6-15 clumps (Nair & Abraham 2010, ApJS 186, 427);
* interacting galaxies (`SDSS_INTERACTING_FRACTION`, 4 %): a companion 0-2.5 mag fainter
  at 6-30 kpc projected (columns ``companion_dmag``, ``companion_sep``,
  ``companion_pa``), both tidally distorted (close pairs and mergers: Patton & Atfield
  2008, ApJ 685, 235; Darg et al. 2010, MNRAS 401, 1043);
* compact bulges: bulge half-light radius `SDSS_BULGE_SIZE` (0.25) disk half-light radii
  instead of 0.35 (Gadotti 2009, MNRAS 393, 1531);
* Petrosian radii of the seeing-convolved galaxy with the wings of the Moffat PSF
  (`SDSS_PETRO_PSF`): small galaxies get larger ``petroR90_r``, so their cutouts
  (scaled to 5 petroR90) zoom in less;
* disk sizes `SDSS_SIZE_SCALE` (*tuned*, 1.15) times the Shen et al. (2003) median;
* an MZR scatter growing towards low masses (`SDSS_MZR_SCATTER_SLOPE`; Tremonti et al.
  2004; Zahid et al. 2012);
* masses down to 10^`SDSS_LOGM_MIN` (8.0) Msun instead of 10^8.5; the
  Tremonti et al. (2004) relation is extrapolated below 10^8.5 Msun (it gives
  8.15 at 10^8), close to the low-mass relation of Lee et al. (2006, ApJ 647,
  970), and the stellar mass function of Baldry et al. (2012) is fit down to
  10^8 Msun. Few such galaxies pass r < 17.77, so the metal-poor end of the
  labels (12+log(O/H) < 8.5: 5.8 % of the 400 real labels) is still
  under-populated (~1.5 % of the labelled galaxies).

Image formation (`~astro_metallicity.mock.MockSky`):

* more stars per field (`SDSS_STARS_PER_FIELD`; high-latitude SDSS star counts
  to r ~ 21, Juric et al. 2008, ApJ 673, 864) and faint background galaxies
  (`SDSS_BACKGROUND_GALAXIES` per field, below the main-sample limit);
* the colour image is made the way SkyServer makes it, as an asinh stretch
  (Lupton et al. 2004, PASP 116, 133) at the native 0.396" scale, then
  resampled onto the requested grid (`SDSS_JPEG_NATIVE`): the cutouts of the
  paper are mostly finer than 0.396"/px, so the sky noise is upsampled and
  grainy like in the real files (its autocorrelation at 1 and 2 px matches
  theirs);
* the JPEG sky: the black point sits below the sky, so the sky is dark grey
  with visible noise and few black pixels: a per-band pedestal
  `SDSS_JPEG_SKY_PEDESTAL` (nanomaggies per pixel) is added before a slightly
  stronger stretch (`SDSS_JPEG_STRETCH`) and a light smoothing
  (`SDSS_JPEG_SMOOTHING`, native pixels), with a sky brightness and a pedestal that
  vary from field to field (`SDSS_SKY_VARIATION`). These are *tuned* on the border
  statistics (mean, spread, black-pixel fraction and autocorrelation of the
  outer 16 px) of the real JPEGs; they describe the display, not the sky (the
  real corrected frame in ``shared/`` has a median sky residual of 0.000-0.005
  nanomaggies);
* colour fringes: the g and i images are misregistered relative to r by
  `SDSS_BAND_REGISTRATION` native pixels rms per axis (per field), which gives
  the one-sided green and magenta fringes seen on real bright sources (*tuned*
  by eye and with the galaxy-only CNN test; 0.15, down from 0.4, which split
  small galaxies into red and green halves no real cutout shows);
* double JPEG compression: a first save at IJG quality `SDSS_JPEG_FIRST_QUALITY`
  and a second at `SDSS_JPEG_QUALITY` (92, the quantisation tables the real
  files carry), on the same 8-px grid, which reproduces the 8-px block edges of
  the real files (measured, not documented by SDSS; the first may be
  SkyServer's, the second the download script's).

A simulated survey is a test bed, not the sky: a model's accuracy on either
preset says nothing about real galaxies.
"""

__all__ = [
    "APPEARANCES",
    "SDSS_ARM_M",
    "SDSS_BACKGROUND_GALAXIES",
    "SDSS_BAND_REGISTRATION",
    "SDSS_BULGE_AXIS_RATIO",
    "SDSS_BULGE_SIZE",
    "SDSS_BULGE_WEIGHT",
    "SDSS_CLUMP_FRACTION",
    "SDSS_CLUMP_SSFR_SLOPE",
    "SDSS_COMPANION_SEPARATION_KPC",
    "SDSS_CUTOUT_ORDER",
    "SDSS_DISK_SSFR_COLOUR",
    "SDSS_DISK_THICKNESS",
    "SDSS_DUST_LANE",
    "SDSS_INTERACTING_FRACTION",
    "SDSS_IRREGULAR_FRACTION",
    "SDSS_JPEG_FIRST_QUALITY",
    "SDSS_JPEG_NATIVE",
    "SDSS_JPEG_NATIVE_QUALITY",
    "SDSS_JPEG_QUALITY",
    "SDSS_JPEG_SMOOTHING",
    "SDSS_JPEG_STRETCH",
    "SDSS_JPEG_SKY_PEDESTAL",
    "SDSS_LOGM_MIN",
    "SDSS_LOPSIDED_MEAN",
    "SDSS_MZR_SCATTER_SLOPE",
    "SDSS_PETRO_PSF",
    "SDSS_POSITION_SCATTER",
    "SDSS_SIZE_SCALE",
    "SDSS_SKY_VARIATION",
    "SDSS_STARS_PER_FIELD",
    "check_appearance",
]

#: Names of the appearance presets; the first is the default.
APPEARANCES = ("classic", "sdss")

#: Intrinsic axis ratio of an edge-on disk in the "sdss" preset (classic: 0.2).
SDSS_DISK_THICKNESS = 0.12
#: Relative bulge-to-disk flux weight per band in the "sdss" preset (r = 1).
SDSS_BULGE_WEIGHT = {"u": 0.3, "g": 0.58, "r": 1.0, "i": 1.3, "z": 1.5}
#: Bulge half-light radius in units of the disk's (classic: 0.35). Bulges of SDSS disk
#: galaxies have r_e / h ~ 0.2-0.5, i.e. r_e ~ 0.1-0.3 disk half-light radii (Gadotti
#: 2009, MNRAS 393, 1531; Fisher & Drory 2008, AJ 136, 773): compact, bright centres.
SDSS_BULGE_SIZE = 0.25
#: Range of the (uniform) apparent bulge axis ratio, kept at least the disk's axis ratio
#: (classic: 0.7-1.0). Many disk-galaxy bulges are flattened, disk-like pseudo-bulges
#: (Kormendy & Kennicutt 2004, ARA&A 42, 603).
SDSS_BULGE_AXIS_RATIO = (0.45, 0.9)
#: Extra blueing of the disk relative to the bulge per 0.3 dex above the star-forming
#: sequence: the bulge weight in band b is multiplied by ``(w_b)**(s * dssfr / 0.3)``.
SDSS_DISK_SSFR_COLOUR = 0.3
#: Mean of the exponential distribution of the lopsidedness A1 (m = 1 mode).
SDSS_LOPSIDED_MEAN = 0.12
#: Numbers of spiral arms drawn (uniformly from this list).
SDSS_ARM_M = (1, 2, 2, 3, 3, 4, 5)
#: Mean fraction of the r-band disk light in star-forming clumps on the star-forming sequence.
SDSS_CLUMP_FRACTION = 0.07
#: Change of the clump fraction per 0.3 dex of sSFR above the sequence.
SDSS_CLUMP_SSFR_SLOPE = 0.04
#: Dust lanes: ratio of the dust to the stellar scale height, and the largest lane optical depth.
SDSS_DUST_LANE = {"height_ratio": 0.4, "max_tau": 2.5}
#: Rms (arcsec, per axis) of the offset between catalogue position and centre of the light
#: (*tuned* on the light-centroid offsets of the real cutouts, median 0.3 cutout px).
SDSS_POSITION_SCATTER = 0.25
#: Petrosian radii of the seeing-convolved image: the PSF terms (in units of the FWHM)
#: added in quadrature to the intrinsic R50 and R90 (classic: 0.5 and 0.91, a Gaussian
#: PSF). Measured with the SDSS Petrosian definition (eta = 0.2, flux within 2 R_P;
#: Blanton et al. 2001) on exponential disks convolved with the Moffat (beta = 3) PSF
#: the renderer uses: 0.76 and 1.38 reproduce R50 and R90 to ~5 % for intrinsic
#: R50 = 0.5-4"; the Moffat wings make small galaxies' Petrosian radii larger than a
#: Gaussian PSF would.
SDSS_PETRO_PSF = (0.76, 1.38)
#: Growth of the MZR scatter towards low mass: the intrinsic scatter is multiplied by
#: ``clip(1 + s (10 - log M*), 1, 2.5)`` (the scatter about the Tremonti et al. 2004
#: relation grows from ~0.07 dex at 10^11 to ~0.15-0.2 dex at 10^8.5-10^9 Msun;
#: Tremonti et al. 2004, Fig. 6; Zahid et al. 2012, ApJ 750, 120).
SDSS_MZR_SCATTER_SLOPE = 0.6
#: Factor on the median Shen et al. (2003) disk size in the "sdss" preset (*tuned*): the
#: real cutouts, scaled to 5 petroR90, show point sources ~25 % smaller (in cutout pixels)
#: and more neighbours than the simulated ones, i.e. the real galaxies are larger relative
#: to the seeing. Independent support: the 3" SDSS fibre holds ~1/3 of the light of a
#: typical star-forming galaxy (Brinchmann et al. 2004, MNRAS 351, 1151; Kewley et al.
#: 2005, PASP 117, 227), which needs petroR50 ~ 2.5-3", against 1.9" without the factor.
SDSS_SIZE_SCALE = 1.15
#: Probability that a galaxy is an irregular: ``base + per_dex (10 - log M*) + per_dssfr
#: dssfr / 0.3`` (clipped to 0-0.5). Irregular and peculiar galaxies are a few per cent
#: of bright SDSS galaxies and most common among low-mass, strongly star-forming ones
#: (Nair & Abraham 2010, ApJS 186, 427; Lintott et al. 2011, MNRAS 410, 166).
SDSS_IRREGULAR_FRACTION = {"base": 0.04, "per_dex": 0.06, "per_dssfr": 0.03}
#: Fraction of galaxies with a close, interacting companion (r-band flux ratio 1:1-1:10)
#: rendered next to them: close pairs within ~30 kpc and mergers are a few per cent of
#: SDSS main-sample galaxies (Patton & Atfield 2008, ApJ 685, 235; Darg et al. 2010,
#: MNRAS 401, 1043; Ellison et al. 2008, AJ 135, 1877).
SDSS_INTERACTING_FRACTION = 0.04
#: Range (uniform, kpc) of the projected separation of an interacting companion.
SDSS_COMPANION_SEPARATION_KPC = (6.0, 30.0)
#: Lowest stellar mass (log Msun) of the "sdss" population (classic: 8.5).
SDSS_LOGM_MIN = 8.0
#: Mean number of stars (14 < r < 21) per field in the "sdss" preset (classic: 40).
SDSS_STARS_PER_FIELD = 100
#: Mean number of faint (17.8 < r < 22) background galaxies per field in the "sdss" preset
#: (~4,000 per deg^2, counts rising as 10^(0.45 r): Yasuda et al. 2001, AJ 122, 1104).
SDSS_BACKGROUND_GALAXIES = 150
#: Pedestal (nanomaggies per pixel) added to the g, r, i images before the asinh stretch
#: (*tuned* on the sky of the real JPEGs).
SDSS_JPEG_SKY_PEDESTAL = {"g": 0.0022, "r": 0.003, "i": 0.008}
#: Field-to-field variation of the sky in the "sdss" preset: rms (mag) of the dark-sky
#: brightness common to all bands (on top of 0.15 mag per band; the SDSS r-band sky
#: ranges over ~20.3-21.3 mag/arcsec^2 with moon and airmass: Stoughton et al. 2002, AJ
#: 123, 485), and rms of the natural log of the JPEG pedestal (the sky-subtraction
#: residual varies from field to field: Blanton et al. 2011, AJ 142, 31) (*tuned*).
SDSS_SKY_VARIATION = {"sky_mag": 0.25, "pedestal": 0.35}
#: Spline order of the resampling of the frames onto the cutout grid (classic: 1, bilinear).
SDSS_CUTOUT_ORDER = 1
#: Make the colour image at the native 0.396" scale and resample the JPEG (True), or
#: resample the frames onto the cutout grid first (False).
SDSS_JPEG_NATIVE = True
#: Rms (native pixels, per axis) of the residual misregistration of the g and i images
#: relative to r in the colour image (colour fringes on one side of bright sources).
SDSS_BAND_REGISTRATION = 0.15
#: IJG quality of the JPEG compression of the native-scale colour image (None: none).
SDSS_JPEG_NATIVE_QUALITY = None
#: Asinh stretch of the "sdss" JPEGs (`astro_metallicity.preprocess.gri_composite` keywords;
#: empty: `astro_metallicity.preprocess.SDSS_JPEG_STRETCH`).
SDSS_JPEG_STRETCH = {"stretch": 2.2}
#: Gaussian smoothing (sigma, cutout pixels) of the g, r, i cutouts before the stretch.
SDSS_JPEG_SMOOTHING = 0.6
#: IJG quality of the first JPEG compression of the "sdss" preset.
SDSS_JPEG_FIRST_QUALITY = 72
#: IJG quality of the final JPEG save (the tables of the real ImgCutout files).
SDSS_JPEG_QUALITY = 92


def check_appearance(appearance):
    """Validate an appearance name.

    Parameters
    ----------
    appearance : str
        ``"classic"`` or ``"sdss"``.

    Returns
    -------
    appearance : str
        The same name.

    Raises
    ------
    ValueError
        If the name is not one of `APPEARANCES`.
    """
    if appearance not in APPEARANCES:
        msg = f"appearance must be one of {list(APPEARANCES)}, got {appearance!r}"
        raise ValueError(msg)
    return appearance
