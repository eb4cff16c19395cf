"""fewview: sparse-view 3D reconstruction with generative priors."""

__version__ = "0.1.0"
