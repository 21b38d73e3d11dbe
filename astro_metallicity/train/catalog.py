"""The training catalogue: SDSS spectroscopic galaxies with MPA-JHU labels.

`query_training_catalog` runs the CasJobs/SkyServer query of the paper's seed
repository (Wu & Boada 2018) through the acquisition stage's SkyServer SQL
search (astroquery, with retries and backoff): SpecObj
joined with Galaxy and the MPA-JHU GalSpecLine/Info/Indx/Extra tables, with
the seed's quality cuts. It talks to whatever SkyServer
``astro_metallicity.conf.skyserver_baseurl`` names, so the same call reaches
real SDSS or the local mock server (`astro_metallicity.mock.MockSDSS`).
"""

import astropy.units as u
import numpy as np
from astropy.table import Table
from .._config import conf
from ..acquire._http import sdss_urls
from ..acquire._sdss import query_sql
from ..logger import log

__all__ = ["query_training_catalog", "training_catalog_sql"]

# The seed repository's training-catalogue query (its ``INTO mydb.…`` clause
# dropped so it runs as a SkyServer SQL search). ``{top}`` is replaced by
# ``TOP n `` or by nothing.
_TRAINING_CATALOG_SQL = """SELECT {top}
  G.objID, GSI.specObjID, G.ra, G.dec,
  S.z, S.zErr, S.velDisp, S.velDispErr,
  G.modelMag_u, modelMagErr_u, G.modelMag_g, modelMagErr_g,
  G.modelMag_r, modelMagErr_r, G.modelMag_i, modelMagErr_i,
  G.modelMag_z, modelMagErr_z, G.petroR50_r, G.petroR90_r,
  GSL.nii_6584_flux, GSL.nii_6584_flux_err, GSL.h_alpha_flux, GSL.h_alpha_flux_err,
  GSL.oiii_5007_flux, GSL.oiii_5007_flux_err, GSL.h_beta_flux, GSL.h_beta_flux_err,
  GSL.h_delta_flux, GSL.h_delta_flux_err, GSX.d4000, GSX.d4000_err,
  GSE.bptclass, GSE.oh_p2p5, GSE.oh_p16, GSE.oh_p50, GSE.oh_p84, GSE.oh_p97p5,
  GSE.lgm_tot_p50, GSE.sfr_tot_p50
FROM SpecObj AS S
  JOIN Galaxy AS G ON G.objID = S.bestObjID
  JOIN GalSpecLine AS GSL ON GSL.specObjID = S.specObjID
  JOIN GalSpecInfo AS GSI ON GSI.specObjID = S.specObjID
  JOIN GalSpecIndx AS GSX ON GSX.specObjID = S.specObjID
  JOIN GalSpecExtra AS GSE ON GSE.specObjID = S.specObjID
WHERE (G.petroMag_r > 10 AND G.petroMag_r < 18)
  AND (G.modelMag_u - G.modelMag_r) > 0
  AND (G.modelMag_u - G.modelMag_r) < 6
  AND (modelMag_u > 10 AND modelMag_u < 25)
  AND (modelMag_g > 10 AND modelMag_g < 25)
  AND (modelMag_r > 10 AND modelMag_r < 25)
  AND (modelMag_i > 10 AND modelMag_i < 25)
  AND (modelMag_z > 10 AND modelMag_z < 25)
  AND S.rChi2 < 2
  AND (S.zErr > 0 AND S.zErr < 0.01)
  AND S.z > 0.02
  AND GSE.oh_p50 != -9999"""

_FLUX_UNIT = u.Unit("1e-17 erg / (s cm2)")

# Units attached to the catalogue columns (case-insensitive match).
_CATALOG_UNITS = {
    "ra": u.deg, "dec": u.deg,
    **{f"modelmag_{b}": u.mag for b in "ugriz"},
    **{f"modelmagerr_{b}": u.mag for b in "ugriz"},
    "petror50_r": u.arcsec, "petror90_r": u.arcsec,
    "veldisp": u.km / u.s, "veldisperr": u.km / u.s,
    **{name: _FLUX_UNIT for name in (
        "nii_6584_flux", "nii_6584_flux_err", "h_alpha_flux", "h_alpha_flux_err",
        "oiii_5007_flux", "oiii_5007_flux_err", "h_beta_flux", "h_beta_flux_err",
        "h_delta_flux", "h_delta_flux_err")},
    **{f"oh_{p}": u.dex for p in ("p2p5", "p16", "p50", "p84", "p97p5")},
    "lgm_tot_p50": u.dex(u.Msun),
    "sfr_tot_p50": u.dex(u.Msun / u.yr),
}


def training_catalog_sql(top=None):
    """The SQL text of the training-catalogue query.

    Parameters
    ----------
    top : int, optional
        Return at most this many rows (``SELECT TOP n``). Default: all.

    Returns
    -------
    sql : str
    """
    if top is None:
        return _TRAINING_CATALOG_SQL.format(top="")
    top = int(top)
    if top < 1:
        msg = f"top must be a positive integer or None, got {top}"
        raise ValueError(msg)
    return _TRAINING_CATALOG_SQL.format(top=f"TOP {top}")


def query_training_catalog(*, top=None, data_release=None, timeout=None):
    """Query SDSS for spectroscopic galaxies with MPA-JHU metallicities.

    Parameters
    ----------
    top : int, optional
        Maximum number of rows. Default: every galaxy that passes the cuts
        (about 140,000 on real DR17; SkyServer's SQL search caps results at
        500,000 rows, use CasJobs beyond).
    data_release : int, optional
        SDSS data release; default ``conf.data_release``.
    timeout : float, optional
        HTTP timeout in seconds; default ``conf.timeout``.

    Returns
    -------
    catalog : `~astropy.table.Table`
        One row per galaxy with ``objID``, ``specObjID``, ``ra``, ``dec`` (deg),
        ``z``, model magnitudes (mag), ``petroR50_r``/``petroR90_r`` (arcsec),
        line fluxes, ``oh_p50`` (12+log(O/H), dex), ``lgm_tot_p50`` (dex(Msun))
        and ``sfr_tot_p50`` (dex(Msun/yr)). Rows with a non-finite ``oh_p50`` are
        dropped.

    Raises
    ------
    astro_metallicity.FetchError
        If the server rejects the query, or it fails after retries.
    """
    data_release = int(conf.data_release if data_release is None else data_release)
    timeout = float(conf.timeout if timeout is None else timeout)
    sql = training_catalog_sql(top)
    urls = sdss_urls()
    log.info(f"Querying the training catalogue from {urls.skyserver} (DR{data_release})")
    table = query_sql(sql, data_release=data_release, timeout=timeout)
    if table is None:
        table = Table(names=["objID", "oh_p50"], dtype=[np.int64, float])
    table = Table(table)
    for name in table.colnames:
        unit = _CATALOG_UNITS.get(name.lower())
        if unit is not None:
            table[name].unit = unit
    if "oh_p50" in table.colnames and len(table):
        good = np.isfinite(np.asarray(table["oh_p50"], dtype=float))
        if not good.all():
            log.warning(f"Dropping {np.count_nonzero(~good)} rows with non-finite oh_p50")
            table = table[good]
    table.meta["query"] = " ".join(sql.split())
    table.meta["skyserver"] = urls.skyserver
    table.meta["data_release"] = data_release
    log.info(f"Training catalogue: {len(table)} galaxies")
    return table
