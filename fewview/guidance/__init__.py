"""Score-distillation objectives, each returning named loss terms: SDS and IPSM's two score terms."""

from .score import ScorePrior, inpaint_prior, ipsm_terms, sds_terms

__all__ = ["ScorePrior", "inpaint_prior", "ipsm_terms", "sds_terms"]
