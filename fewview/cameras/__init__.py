"""Cameras and rays in one internal convention (OpenCV c2w, pixel intrinsics); see ``cameras.py``."""

from .cameras import CameraError, Cameras, check_rotations, intrinsics_matrix, rigid_inverse
from .rays import Rays, camera_rays, pixel_centers, rays_from_pixels
from .trajectories import (
    Circle3D,
    PseudoViews,
    annealed_sigmas,
    curriculum_angles,
    cycle_pose,
    fit_circle,
    input_orbit,
    look_at,
    nearest_point_to_axes,
    orbit,
    orbit_basis,
    pseudo_views,
    relative_to,
    sparsefusion_trajectory,
    spherical_cameras,
)

__all__ = [
    "CameraError",
    "Cameras",
    "Circle3D",
    "PseudoViews",
    "Rays",
    "annealed_sigmas",
    "camera_rays",
    "check_rotations",
    "curriculum_angles",
    "cycle_pose",
    "fit_circle",
    "input_orbit",
    "intrinsics_matrix",
    "look_at",
    "nearest_point_to_axes",
    "orbit",
    "orbit_basis",
    "pixel_centers",
    "pseudo_views",
    "rays_from_pixels",
    "relative_to",
    "rigid_inverse",
    "sparsefusion_trajectory",
    "spherical_cameras",
]
