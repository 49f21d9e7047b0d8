"""Pure measurements on a functional loss: sharpness, landscape, histogram, spectrum, smoothness."""

from pipeline.measure.gauss_newton import gauss_newton_smoothness
from pipeline.measure.histogram import Histogram, update_histogram
from pipeline.measure.hvp import hessian_vector_products, hvp_operator, quadratic_forms
from pipeline.measure.landscape import StepSearch, base_loss, landscape_search, loss_landscape, search_step
from pipeline.measure.sharpness import (
    SharpnessResult,
    directional_sharpness,
    gradient_correlation,
    sharpness_with_robust,
    shifted_sharpness,
    update_norms,
)
from pipeline.measure.spectrum import (
    EigenResult,
    gradient_curvature_correlation,
    hutchinson_diagonal,
    hutchinson_diagonal_with_error,
    hutchinson_noise,
    rank_correlation,
    top_hessian_eigenvalue,
)
from pipeline.measure.topk import topk_sharpness_share
from pipeline.measure.vectors import Directions, prepare_directions

__all__ = [
    "Directions",
    "EigenResult",
    "Histogram",
    "SharpnessResult",
    "StepSearch",
    "base_loss",
    "directional_sharpness",
    "gauss_newton_smoothness",
    "gradient_correlation",
    "gradient_curvature_correlation",
    "hessian_vector_products",
    "hutchinson_diagonal",
    "hutchinson_diagonal_with_error",
    "hutchinson_noise",
    "hvp_operator",
    "landscape_search",
    "loss_landscape",
    "prepare_directions",
    "quadratic_forms",
    "rank_correlation",
    "search_step",
    "sharpness_with_robust",
    "shifted_sharpness",
    "top_hessian_eigenvalue",
    "topk_sharpness_share",
    "update_histogram",
    "update_norms",
]
