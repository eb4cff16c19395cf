"""Options of a per-scene fit: those every fit reads, the field's and the Gaussians' (``FieldOptions`` and
``GaussianOptions`` share ``RunOptions``), and ``FitConfig``, which holds all of them for ``fewview fit``
(every field becomes an option). Named presets for sparse inputs follow."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as option


@dataclass
class RunOptions:
    """What every per-scene fit reads: representation, schedule length, background, mask and perceptual losses,
    device, checkpoints, seed."""

    representation: str = option(default="grid", metadata={"help": "grid | hashgrid | mlp | gaussians"})
    steps: int = option(default=3000, metadata={"help": "optimisation steps"})
    background: tuple[float, float, float] = option(default=(1.0, 1.0, 1.0), metadata={"help": "background RGB"})
    w_silhouette: float = option(default=0.0, metadata={"help": "weight of opacity-vs-mask loss"})
    w_perceptual: float = option(
        default=0.0, metadata={"help": "weight of LPIPS-alex on a random image patch per step"}
    )
    perceptual_patch: int = option(default=32, metadata={"help": "side of that patch in pixels (LPIPS needs >= 32)"})
    perceptual_weights: str = option(default="", metadata={"help": "LPIPS weights path (default: env/cache)"})
    device: str = option(default="cpu", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when available)"})
    checkpoint_every: int = option(default=500, metadata={"help": "write a checkpoint every N steps"})
    seed: int = option(default=0, metadata={"help": "random seed"})


@dataclass
class FieldOptions(RunOptions):
    """Radiance-field fits (grid, hashgrid, mlp)."""

    batch_rays: int = option(default=4096, metadata={"help": "rays per step"})
    lr_grid: float = option(
        default=0.0, metadata={"help": "learning rate of grid/table parameters (0: grid 0.1, hashgrid 0.01)"}
    )
    lr_net: float = option(default=0.0, metadata={"help": "learning rate of MLP parameters (0: 1e-3, mlp 5e-4)"})
    lr_decay: float = option(default=0.1, metadata={"help": "learning-rate factor reached at the last step"})
    grid_res: int = option(default=64, metadata={"help": "initial grid resolution (grid field)"})
    grid_res_final: int = option(default=128, metadata={"help": "grid resolution after upsampling (grid field)"})
    upsample_step: int = option(default=500, metadata={"help": "step at which the grid is upsampled"})
    init_alpha: float = option(default=1e-2, metadata={"help": "initial opacity of one march step"})
    step_voxels: float = option(default=0.5, metadata={"help": "march step in voxels of the final grid"})
    occupancy_res: int = option(default=128, metadata={"help": "occupancy grid resolution"})
    occupancy_every: int = option(default=200, metadata={"help": "re-estimate occupancy every N steps (0: never)"})
    occupancy_warmup: int = option(default=400, metadata={"help": "first step at which occupancy is re-estimated"})
    use_masks: bool = option(default=True, metadata={"help": "carve the occupancy grid with the input masks"})
    w_entropy: float = option(default=0.0, metadata={"help": "weight of opacity entropy loss"})
    w_distortion: float = option(default=0.0, metadata={"help": "weight of Mip-NeRF 360 distortion loss"})
    w_rgb_per_sample: float = option(default=0.0, metadata={"help": "weight of sum_i w_i |c_i - C|^2 (DVGO)"})
    w_tv: float = option(default=0.0, metadata={"help": "weight of density total variation (grid field)"})
    w_depth_smooth: float = option(default=0.0, metadata={"help": "weight of depth smoothness on 4x4 patches"})


@dataclass
class GaussianOptions(RunOptions):
    """3D Gaussian fits; defaults from 3DGS, schedule shortened for CPU budgets."""

    gs_init: str = option(
        default="auto", metadata={"help": "auto | hull | random | a 3DGS .ply | a field run folder (its depth points)"}
    )
    gs_num_init: int = option(default=20000, metadata={"help": "initial Gaussians (hull/random/field init)"})
    gs_sh_degree: int = option(default=3, metadata={"help": "maximum SH degree (0-3)"})
    gs_sh_every: int = option(default=500, metadata={"help": "raise the SH degree every N steps"})
    gs_lr_means: float = option(default=1.6e-4, metadata={"help": "centre learning rate x scene extent (start)"})
    gs_lr_means_final: float = option(default=1.6e-6, metadata={"help": "centre learning rate at the last step"})
    gs_lr_scales: float = option(default=5e-3, metadata={"help": "log-scale learning rate"})
    gs_lr_quats: float = option(default=1e-3, metadata={"help": "quaternion learning rate"})
    gs_lr_opacity: float = option(default=5e-2, metadata={"help": "opacity-logit learning rate"})
    gs_lr_sh: float = option(default=2.5e-3, metadata={"help": "SH DC learning rate (higher bands: / 20)"})
    gs_ssim_weight: float = option(default=0.2, metadata={"help": "weight of 1 - SSIM against L1"})
    gs_refine_start: int = option(default=500, metadata={"help": "first densification step"})
    gs_refine_stop: int = option(default=0, metadata={"help": "no densification from this step on (0: steps / 2)"})
    gs_refine_every: int = option(default=100, metadata={"help": "densify every N steps"})
    gs_reset_every: int = option(
        default=3000, metadata={"help": "reset opacities every N steps while densifying (0: never)"}
    )
    gs_grad_threshold: float = option(default=2e-4, metadata={"help": "densify above this mean NDC gradient"})
    gs_max_gaussians: int = option(default=1_000_000, metadata={"help": "densification stops adding here"})
    gs_w_opacity: float = option(default=0.0, metadata={"help": "weight of the mean opacity (sparsity) loss"})
    gs_hull_prune: bool = option(
        default=False, metadata={"help": "remove Gaussians outside the input masks' visual hull (sparse views)"}
    )
    gs_backend: str = option(default="auto", metadata={"help": "rasterizer: auto | numba | torch | gsplat"})


@dataclass
class FitConfig(FieldOptions, GaussianOptions):
    """Every option of ``fewview fit``: the field fitter reads its ``FieldOptions``, the Gaussian fitter its
    ``GaussianOptions``."""


# Chosen on validation data (benchmarks/tune_presets.py: lego-3view-val and 2 val objects of the mixed fewview-objects
# set, 400 steps, mean PSNR of lego and the objects): plain 13.51, + silhouette 13.14, + silhouette + TV 0.01 14.58,
# + distortion 0.01 14.78, silhouette + TV 0.05 15.03 (best). lego-3view's test views and mary_rose are held out.
SPARSE_PRESET = dict(
    grid_res=48,
    grid_res_final=96,
    w_rgb_per_sample=0.1,
    w_entropy=1e-3,
    w_silhouette=1.0,
    w_tv=5e-2,
)


# Gaussians from 3 views, chosen on validation data (benchmarks/tune_presets.py --representation gaussians
# --n-objects 1 --steps-gaussians 1500: lego-3view-val and 2 val objects, docs/benchmarks.md): silhouette, hull
# pruning, opacity reset at step 500 and an opacity loss of weight 0.2 / 0.5 / 1 / 2 / 4: validation score
# 20.52 / 21.31 / 21.12 / 20.16 / 18.39 dB. lego-3view's test views and mary_rose are held out.
GAUSSIAN_SPARSE_PRESET = dict(
    representation="gaussians", w_silhouette=1.0, gs_hull_prune=True, gs_w_opacity=0.5, gs_reset_every=500
)
