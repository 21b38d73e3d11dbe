"""The training-catalogue query against the mock SkyServer (and real SDSS, remote)."""

import numpy as np
import pytest
from astropy import units as u

from astro_metallicity.train import query_training_catalog, training_catalog_sql
from astro_metallicity.train.catalog import _TRAINING_CATALOG_SQL


def test_sql_text():
    assert "TOP" not in training_catalog_sql()
    assert training_catalog_sql(5).startswith("SELECT TOP 5")
    assert "GSE.oh_p50 != -9999" in _TRAINING_CATALOG_SQL
    with pytest.raises(ValueError, match="top must be a positive integer"):
        training_catalog_sql(0)


def test_query_against_mock_server():
    from astro_metallicity.mock import MockSDSS

    with MockSDSS(n_galaxies=200, seed=3) as server:
        catalog = query_training_catalog()
        top = query_training_catalog(top=7)
        truth = server.catalog
    assert len(top) == 7
    assert 0 < len(catalog) <= 200
    for name, unit in (("ra", u.deg), ("petroR90_r", u.arcsec), ("modelMag_r", u.mag),
                       ("oh_p50", u.dex)):
        assert catalog[name].unit == unit
    # the seed's cuts hold
    z = np.asarray(catalog["z"])
    assert np.all(z > 0.02)
    assert np.all((catalog["zErr"] > 0) & (catalog["zErr"] < 0.01))
    ur = np.asarray(catalog["modelMag_u"]) - np.asarray(catalog["modelMag_r"])
    assert np.all((ur > 0) & (ur < 6))
    # labels are the simulation's truth, matched by objID
    index = {int(o): k for k, o in enumerate(truth["objid"])}
    rows = [index[int(o)] for o in catalog["objID"]]
    np.testing.assert_allclose(np.asarray(catalog["oh_p50"]),
                               np.asarray(truth["oh_p50"].value)[rows], atol=1e-4)
    assert "GalSpecExtra" in catalog.meta["query"]


@pytest.mark.remote_data
def test_query_real_sdss():
    catalog = query_training_catalog(top=20)
    assert len(catalog) == 20
    assert np.all((catalog["oh_p50"] > 7) & (catalog["oh_p50"] < 10))
    assert catalog["petroR90_r"].unit == u.arcsec
