"""Score-distillation objectives, each returning named loss terms: SDS, IPSM's two score terms and SparseFusion's
multi-step distillation loss."""

from .score import PhaseClock, ScorePrior, inpaint_prior, ipsm_terms, multistep_terms, sds_terms

__all__ = ["PhaseClock", "ScorePrior", "inpaint_prior", "ipsm_terms", "multistep_terms", "sds_terms"]
