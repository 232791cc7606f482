"""Evaluation metrics with the official StarGAN v2 protocol.

fid (Inception features, float64 moment sums, Frechet distance), lpips (diversity), weights
(offline feature-network weights) are plain torch; evaluator is the sharded driver (Ray only when
num_workers > 0, imported inside it).
"""

from .evaluator import evaluate, fid_quick
from .fid import FeatureMoments, FrechetResult, fid_folders, fid_from_moments, frechet_distance
from .lpips import diversity
from .weights import FeatureWeights, MissingWeightsError

__all__ = ["evaluate", "fid_quick", "FeatureMoments", "FrechetResult", "fid_folders",
           "fid_from_moments", "frechet_distance", "diversity", "FeatureWeights",
           "MissingWeightsError"]
