"""Configuration for astro-metallicity (``astro_metallicity.conf``).

Every item is read when a function runs, never frozen at import, so
``conf.set_temp`` and the user's ``astro_metallicity.cfg`` both take effect.
"""

from astropy import config as _config

__all__ = ["Conf", "conf"]


class Conf(_config.ConfigNamespace):
    """Configuration parameters for `astro_metallicity`."""

    skyserver_baseurl = _config.ConfigItem(
        "https://skyserver.sdss.org",
        "Base URL of the SDSS SkyServer (SQL search and ImgCutout JPEGs). "
        "The mock sky (astro_metallicity.mock.MockSDSS) points this at 127.0.0.1.",
    )
    sas_baseurl = _config.ConfigItem(
        "https://data.sdss.org/sas",
        "Base URL of the SDSS Science Archive Server (corrected frames).",
    )
    tap_url = _config.ConfigItem(
        "",
        "Optional TAP service (pyvo) used to find the SDSS fields that contain a position, "
        "e.g. https://datalab.noirlab.edu/tap; empty means the SkyServer SQL search.",
    )
    data_release = _config.ConfigItem(17, "SDSS data release to query.", cfgtype="integer")
    cutout_source = _config.ConfigItem(
        ["frames", "jpeg"],
        "Default source of gri cutouts: 'frames' (SAS corrected frames, reprojected "
        "and stretched locally) or 'jpeg' (SkyServer ImgCutout service).",
    )
    device = _config.ConfigItem(
        "auto",
        "Torch device for inference: 'auto' (CUDA if available, else CPU), 'cpu', 'cuda', ...",
    )
    timeout = _config.ConfigItem(
        60.0,
        "Timeout in seconds of one HTTP request as a whole (connection, answer and the whole "
        "download), and of any silence within it; a request over it is retried.",
        cfgtype="float",
    )
    max_retries = _config.ConfigItem(
        4, "How many times a failed download (timeout, 5xx, truncated file) is retried.",
        cfgtype="integer",
    )
    retry_backoff = _config.ConfigItem(
        1.0, "Initial wait in seconds before a retry; doubled after each failure.", cfgtype="float"
    )
    max_workers = _config.ConfigItem(
        4, "Number of concurrent downloads.", cfgtype="integer"
    )
    cache_dir = _config.ConfigItem(
        "",
        "Directory of the download cache. Empty means <astropy cache dir>/astro_metallicity. "
        "If it cannot be written, downloads are kept in memory only (with one warning).",
    )
    frames_in_memory = _config.ConfigItem(
        24,
        "Decompressed SDSS frames (about 12 MB each) the frames route keeps in memory, so "
        "that targets on neighbouring fields do not decompress a frame again.",
        cfgtype="integer",
    )
    batch_size = _config.ConfigItem(64, "Batch size for CNN inference.", cfgtype="integer")
    model_path = _config.ConfigItem(
        "",
        "Path of the model checkpoint (.pt, with a .json metadata file beside it) "
        "used by default. Empty means the bundled model.",
    )


# Items would otherwise belong to a "[_config]" section named after this private
# module; put them at the top of astro_metallicity.cfg instead.
for _item in vars(Conf).values():
    if isinstance(_item, _config.ConfigItem):
        _item.module = "astro_metallicity"

conf = Conf()
