"""Customer-base and churn models (one estimator per module) and per-customer scoring."""

from churnsync.models.bgnbd import BetaGeoModel, BetaGeoParams
from churnsync.models.gamma_gamma import GammaGammaModel, GammaGammaParams
from churnsync.models.paretonbd import ParetoNBDModel, ParetoNBDParams
from churnsync.models.scoring import fit_and_score, model_version, score_customers

__all__ = [
    "BetaGeoModel",
    "BetaGeoParams",
    "GammaGammaModel",
    "GammaGammaParams",
    "ParetoNBDModel",
    "ParetoNBDParams",
    "fit_and_score",
    "model_version",
    "score_customers",
]
