"""3D Gaussian splatting: EWA projection, tile rasterizers (numba CPU path, PyTorch reference, gsplat on
CUDA), a Gaussian model with 3DGS densification, and the 3DGS PLY format."""

from .model import GaussianModel, knn_mean_distance
from .ply import load_ply, save_ply
from .project import Projected, covariance_3d, project, quat_to_rotmat
from .rasterize import GaussianRender, gsplat_available, rasterize
from .sh import eval_sh, rgb_to_sh, sh_basis, sh_to_rgb
from .strategy import DefaultStrategy, DensifyConfig

__all__ = [
    "DefaultStrategy",
    "DensifyConfig",
    "GaussianModel",
    "GaussianRender",
    "Projected",
    "covariance_3d",
    "eval_sh",
    "gsplat_available",
    "knn_mean_distance",
    "load_ply",
    "project",
    "quat_to_rotmat",
    "rasterize",
    "rgb_to_sh",
    "save_ply",
    "sh_basis",
    "sh_to_rgb",
]
