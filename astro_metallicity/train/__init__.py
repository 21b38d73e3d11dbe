"""Training utilities: catalogue query, dataset building, training and evaluation.

Retrain the metallicity CNN on your own data::

    from astro_metallicity.train import (query_training_catalog, build_dataset,
                                         read_dataset, train_model, evaluate)

The modules follow the data flow: ``astro_metallicity.train.catalog`` (SDSS
query) -> ``astro_metallicity.train.dataset`` (cutouts into HDF5) ->
``astro_metallicity.train.training`` -> ``astro_metallicity.train.evaluation``.
torch is imported by `astro_metallicity.model` functions when they run.
"""

from . import catalog as _catalog
from . import dataset as _dataset
from . import evaluation as _evaluation
from . import training as _training
from .catalog import *
from .dataset import *
from .evaluation import *
from .training import *

__all__ = _catalog.__all__ + _dataset.__all__ + _training.__all__ + _evaluation.__all__
