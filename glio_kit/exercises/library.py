"""The library functions the checks compare against, imported in one place.

Other parts of glio-kit may move these functions; only this module names where they live.
"""
from ..detect.mapping import frozen, map_iterative, mapping_loss
from ..detect.slice_scores import anomaly_score, fit_scaling
from ..detect.detectors import reduce_subjects
from ..evaluate.metrics import rates, roc, threshold_at_fpr
from ..gan.model import build_models
from ..gan.train import BCE, dcgan_step

__all__ = ["anomaly_score", "fit_scaling", "frozen", "map_iterative", "mapping_loss", "reduce_subjects",
           "rates", "roc", "threshold_at_fpr", "build_models", "BCE", "dcgan_step"]
