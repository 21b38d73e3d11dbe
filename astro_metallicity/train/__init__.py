"""Retraining the metallicity CNN: catalogue, cutouts, training and evaluation.

The functions follow the data flow::

    from astro_metallicity.train import (query_training_catalog, build_dataset,
                                         read_dataset, TrainingConfig, train_model,
                                         calibrate_error_scale, evaluate)

    catalog = query_training_catalog()                  # SDSS + MPA-JHU labels
    build_dataset(catalog, "cutouts.h5")                # the pipeline's own cutouts
    train, val, test = read_dataset("cutouts.h5").split((0.8, 0.1, 0.1))
    result = train_model(train, val, TrainingConfig(epochs=30))
    report = evaluate(result.model, test, train=train)  # next to the baselines

`dataset_from_images` builds a set from a folder of JPEG/PNG cutouts and a
labels table instead. `cross_fit` gives every galaxy of a small labelled set
an out-of-fold prediction (k-fold cross-fitting, folds stratified by label)
and `calibrate_out_of_fold` calibrates the predicted errors on those
residuals; `ensemble_models` combines trained networks into one model. torch is imported when training runs, not on import.
"""

from .catalog import query_training_catalog, training_catalog_sql
from .crossfit import CrossFitResult, calibrate_out_of_fold, cross_fit, stratified_folds
from .dataset import LabelledCutouts, build_dataset, dataset_from_images, read_dataset
from .ensemble import ensemble_models
from .evaluation import calibrate_error_scale, evaluate, write_report
from .training import TrainingConfig, TrainingResult, train_model

__all__ = [
    "CrossFitResult",
    "LabelledCutouts",
    "TrainingConfig",
    "TrainingResult",
    "build_dataset",
    "calibrate_error_scale",
    "calibrate_out_of_fold",
    "cross_fit",
    "dataset_from_images",
    "ensemble_models",
    "evaluate",
    "query_training_catalog",
    "read_dataset",
    "stratified_folds",
    "train_model",
    "training_catalog_sql",
    "write_report",
]
