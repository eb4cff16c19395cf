"""Parametric object categories with part structure, random proportions and procedural materials.

Every object is z-up, centred, scaled into the unit sphere. Its appearance is a function of the
3-D surface point (solid textures: stripes, checks, rings, value noise) plus one-sided decals, so
what an unseen side looks like is predictable from the category (a mug's handle is always on +x
and its decal on -y; a vehicle's headlights are at its front), which is what priors must learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

PATTERNS = ("plain", "stripes", "checks", "rings", "noise")


@dataclass
class Material:
    color: np.ndarray  # (3,) base albedo in [0, 1]
    pattern: str = "plain"
    color2: np.ndarray = field(default_factory=lambda: np.zeros(3))
    frequency: float = 6.0
    axis: int = 2


@dataclass
class Decal:
    """A disc of colour on the surface near ``center`` (one side of the object)."""

    center: np.ndarray
    radius: float
    color: np.ndarray


@dataclass
class ObjectModel:
    category: str
    mesh: trimesh.Trimesh
    face_part: np.ndarray  # (F,) part index per face
    materials: list[Material]
    decals: list[Decal]
    source: str = ""  # the mesh file for meshes taken from a collection
    source: str = ""  # the mesh file for meshes taken from a collection

    def albedo(self, points: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """(N, 3) albedo at surface points belonging to the given parts."""
        out = np.zeros((len(points), 3))
        for k, m in enumerate(self.materials):
            sel = parts == k
            if sel.any():
                out[sel] = _pattern(m, points[sel])
        for d in self.decals:
            hit = np.linalg.norm(points - d.center, axis=1) < d.radius
            out[hit] = d.color
        return out


def _hash_noise(p: np.ndarray, freq: float) -> np.ndarray:
    """Trilinear value noise in [0, 1] from a hashed integer lattice (deterministic)."""
    q = p * freq
    i = np.floor(q).astype(np.int64)
    f = q - i
    f = f * f * (3 - 2 * f)

    def h(di, dj, dk):
        v = ((i[:, 0] + di) * 73856093) ^ ((i[:, 1] + dj) * 19349663) ^ ((i[:, 2] + dk) * 83492791)
        return (v % 1000003) / 1000003.0

    out = 0.0
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                w = (
                    (f[:, 0] if di else 1 - f[:, 0])
                    * (f[:, 1] if dj else 1 - f[:, 1])
                    * (f[:, 2] if dk else 1 - f[:, 2])
                )
                out = out + w * h(di, dj, dk)
    return out


def _pattern(m: Material, p: np.ndarray) -> np.ndarray:
    if m.pattern == "plain":
        t = np.zeros(len(p))
    elif m.pattern == "stripes":
        t = (np.floor(p[:, m.axis] * m.frequency) % 2).astype(float)
    elif m.pattern == "checks":
        t = (np.floor(p * m.frequency).sum(1) % 2).astype(float)
    elif m.pattern == "rings":
        t = (np.floor(np.linalg.norm(p[:, :2], axis=1) * m.frequency * 2) % 2).astype(float)
    else:
        t = _hash_noise(p, m.frequency)
    return m.color[None] * (1 - t[:, None]) + m.color2[None] * t[:, None]


# ------------------------------------------------------------------ assembling
def _random_material(rng: np.random.Generator, patterned: float = 0.6) -> Material:
    c = rng.uniform(0.05, 0.95, 3)
    pattern = str(rng.choice(PATTERNS[1:])) if rng.random() < patterned else "plain"
    return Material(c, pattern, rng.uniform(0.05, 0.95, 3), float(rng.uniform(3, 10)), int(rng.integers(0, 3)))


def _box(extents, center) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(center))


def _cyl(radius, height, center, axis="z", sections=24) -> trimesh.Trimesh:
    m = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
    if axis == "x":
        m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    elif axis == "y":
        m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    m.apply_translation(center)
    return m


def _sphere(radius, center) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=2, radius=radius)
    m.apply_translation(center)
    return m


def _revolve(profile: np.ndarray, sections: int = 28) -> trimesh.Trimesh:
    """A solid of revolution about z from (radius, z) profile points."""
    return trimesh.creation.revolve(profile, sections=sections)


def _assemble(category: str, parts: list[tuple[trimesh.Trimesh, int]], materials, decals) -> ObjectModel:
    meshes = [m for m, _ in parts]
    face_part = np.concatenate([np.full(len(m.faces), k) for m, k in parts])
    mesh = trimesh.util.concatenate(meshes)
    # Centre and scale into the unit sphere (decals move with the mesh).
    center = (mesh.bounds[0] + mesh.bounds[1]) / 2
    scale = 0.95 / np.linalg.norm(mesh.vertices - center, axis=1).max()
    mesh.apply_translation(-center)
    mesh.apply_scale(scale)
    for d in decals:
        d.center = (d.center - center) * scale
        d.radius *= scale
    return ObjectModel(category, mesh, face_part, materials, decals)


def mug(rng):
    r, h = rng.uniform(0.3, 0.5), rng.uniform(0.6, 1.1)
    body = _cyl(r, h, [0, 0, h / 2], sections=32)
    hr = rng.uniform(0.18, 0.3) * h
    handle = trimesh.creation.torus(
        major_radius=hr, minor_radius=rng.uniform(0.03, 0.06), major_sections=24, minor_sections=8
    )
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    handle.apply_translation([r + hr * 0.6, 0, h / 2])
    mats = [_random_material(rng), Material(rng.uniform(0.05, 0.95, 3))]
    decal = Decal(np.array([0.0, -r, h * rng.uniform(0.4, 0.6)]), r * rng.uniform(0.3, 0.5), rng.uniform(0, 1, 3))
    return _assemble("mug", [(body, 0), (handle, 1)], mats, [decal])


def chair(rng):
    w, d, sh = rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)
    t, leg = rng.uniform(0.06, 0.12), rng.uniform(0.05, 0.09)
    seat = _box([w, d, t], [0, 0, sh])
    legs = [_box([leg, leg, sh], [sx * (w / 2 - leg), sy * (d / 2 - leg), sh / 2]) for sx in (-1, 1) for sy in (-1, 1)]
    bh = rng.uniform(0.5, 0.9)
    back = _box([w, t, bh], [0, -d / 2 + t / 2, sh + bh / 2])  # back always on -y
    mats = [_random_material(rng), Material(rng.uniform(0.05, 0.6, 3)), _random_material(rng)]
    return _assemble("chair", [(seat, 0), *[(leg_m, 1) for leg_m in legs], (back, 2)], mats, [])


def table(rng):
    w, d, h = rng.uniform(1.0, 1.6), rng.uniform(0.6, 1.1), rng.uniform(0.6, 0.9)
    t = rng.uniform(0.05, 0.1)
    if rng.random() < 0.5:
        top = _box([w, d, t], [0, 0, h])
        leg = rng.uniform(0.05, 0.1)
        legs = [
            _box([leg, leg, h], [sx * (w / 2 - leg), sy * (d / 2 - leg), h / 2]) for sx in (-1, 1) for sy in (-1, 1)
        ]
    else:
        top = _cyl(w / 2, t, [0, 0, h], sections=32)
        legs = [_cyl(rng.uniform(0.05, 0.1), h, [0, 0, h / 2]), _cyl(w / 4, 0.05, [0, 0, 0.025])]
    mats = [_random_material(rng), Material(rng.uniform(0.05, 0.6, 3))]
    return _assemble("table", [(top, 0), *[(leg_m, 1) for leg_m in legs]], mats, [])


def vase(rng):
    h = rng.uniform(1.0, 1.8)
    zs = np.linspace(0, h, 8)
    base = rng.uniform(0.2, 0.35)
    belly = rng.uniform(0.3, 0.55)
    neck = rng.uniform(0.08, 0.2)
    radii = base + (belly - base) * np.sin(np.linspace(0, np.pi * 0.9, 8)) * np.linspace(1, 0.3, 8)
    radii[-2:] = neck
    profile = np.concatenate([[[0, 0]], np.stack([radii, zs], 1), [[0, h]]])
    mats = [_random_material(rng, patterned=0.8)]
    decal = Decal(np.array([0.0, -belly, h * 0.4]), belly * 0.35, rng.uniform(0, 1, 3))
    return _assemble("vase", [(_revolve(profile), 0)], mats, [decal] if rng.random() < 0.7 else [])


def lamp(rng):
    bh, ph = rng.uniform(0.05, 0.12), rng.uniform(0.8, 1.4)
    base = _cyl(rng.uniform(0.25, 0.4), bh, [0, 0, bh / 2])
    pole = _cyl(rng.uniform(0.03, 0.05), ph, [0, 0, bh + ph / 2])
    sh = rng.uniform(0.3, 0.5)
    r0, r1 = rng.uniform(0.1, 0.25), rng.uniform(0.3, 0.5)
    shade = _revolve(np.array([[0, 0], [r1, 0], [r0, sh], [0, sh]]))
    shade.apply_translation([0, 0, bh + ph - sh * 0.3])
    mats = [Material(rng.uniform(0.05, 0.5, 3)), Material(rng.uniform(0.3, 0.8, 3)), _random_material(rng)]
    return _assemble("lamp", [(base, 0), (pole, 1), (shade, 2)], mats, [])


def vehicle(rng):
    l, w, h = rng.uniform(1.2, 1.8), rng.uniform(0.6, 0.9), rng.uniform(0.3, 0.5)
    wr = rng.uniform(0.15, 0.25)
    body = _box([l, w, h], [0, 0, wr + h / 2])
    cl = l * rng.uniform(0.35, 0.6)
    cabin = _box([cl, w * 0.9, h * rng.uniform(0.6, 1.0)], [-l * 0.1, 0, wr + h + h * 0.35])
    wheels = [_cyl(wr, w * 0.15, [sx * l * 0.32, sy * w / 2, wr], axis="y") for sx in (-1, 1) for sy in (-1, 1)]
    mats = [_random_material(rng), Material(rng.uniform(0.1, 0.9, 3)), Material(np.array([0.08, 0.08, 0.08]))]
    lights = [
        Decal(np.array([l / 2, sy * w * 0.3, wr + h * 0.6]), w * 0.12, np.array([1.0, 0.95, 0.6])) for sy in (-1, 1)
    ]
    parts = [(body, 0), (cabin, 1), *[(wm, 2) for wm in wheels]]
    return _assemble("vehicle", parts, mats, lights)  # front is +x


def snowman(rng):
    r = sorted(rng.uniform(0.25, 0.5, 3), reverse=True)
    z, spheres = 0.0, []
    for ri in r:
        spheres.append(_sphere(ri, [0, 0, z + ri]))
        z += ri * 1.7
    hat = _cyl(r[2] * 0.7, r[2] * 0.8, [0, 0, z + r[2] * 0.2])
    nose = trimesh.creation.cone(radius=r[2] * 0.15, height=r[2] * 0.6)
    nose.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    nose.apply_translation([r[2] * 0.9, 0, z - r[2] * 0.7])  # faces +x
    mats = [
        Material(rng.uniform(0.8, 1.0, 3)),
        Material(rng.uniform(0.0, 0.3, 3)),
        Material(np.array([0.9, 0.45, 0.1])),
    ]
    eyes = [
        Decal(np.array([r[2] * 0.85, sy * r[2] * 0.35, z - r[2] * 0.45]), r[2] * 0.1, np.zeros(3)) for sy in (-1, 1)
    ]
    return _assemble("snowman", [*[(s, 0) for s in spheres], (hat, 1), (nose, 2)], mats, eyes)


class MissingMeshesError(RuntimeError):
    """The generic category needs the meshes of the ``pybullet`` wheel."""


def pybullet_mesh_files() -> list:
    """The OBJ meshes inside the installed ``pybullet`` wheel's ``pybullet_data`` folder (sorted):
    the 1,000 ``random_urdfs`` objects first, then the other shipped meshes. No network is used."""
    from pathlib import Path

    try:
        import pybullet_data
    except ImportError:
        raise MissingMeshesError(
            "the 'generic' category renders the meshes shipped in the pybullet wheel: pip install pybullet"
        ) from None
    root = Path(pybullet_data.getDataPath())
    files = sorted(root.glob("random_urdfs/*/*.obj"))
    files += sorted(p for p in root.rglob("*.obj") if "random_urdfs" not in p.parts)
    if not files:
        raise MissingMeshesError(f"{root}: no OBJ meshes found in pybullet_data")
    return files


def generic(rng):
    """A third-party mesh from pybullet_data with a random pose and random materials."""
    files = pybullet_mesh_files()
    for _ in range(50):
        path = files[int(rng.integers(len(files)))]
        try:
            m = trimesh.load(path, force="mesh", process=False)
        except (ValueError, IndexError, OSError):
            continue
        ext = np.asarray(m.extents) if len(m.faces) else np.zeros(3)
        if 12 <= len(m.faces) <= 40000 and ext.max() > 0 and ext.min() / ext.max() > 0.05:
            break
    else:  # the wheel ships hundreds of usable meshes
        raise MissingMeshesError("no usable mesh found in pybullet_data")
    m = trimesh.Trimesh(np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces), process=True)
    m.apply_transform(trimesh.transformations.rotation_matrix(rng.uniform(0, 2 * np.pi), [0, 0, 1]))
    obj = _assemble("generic", [(m, 0)], [_random_material(rng, patterned=0.7)], [])
    obj.source = "/".join(path.parts[-3:]) if "random_urdfs" in path.parts else path.name
    return obj


CATEGORIES = {
    "mug": mug,
    "chair": chair,
    "table": table,
    "vase": vase,
    "lamp": lamp,
    "vehicle": vehicle,
    "snowman": snowman,
    "generic": generic,
}


def make_object(category: str, rng: np.random.Generator) -> ObjectModel:
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    return CATEGORIES[category](rng)
