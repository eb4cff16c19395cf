"""Household objects: textured OBJ models read from Sweet Home 3D furniture libraries (``.sh3f``).

A ``.sh3f`` library is a zip archive holding ``PluginFurnitureCatalog.properties`` (a Java properties
file: per model ``id#N``, ``name#N``, ``category#N``, ``creator#N``, ``model#N``, optional
``modelRotation#N``) and, per model, an OBJ file with its MTL materials and JPEG/PNG textures.
Debian's package ``sweethome3d-furniture`` ships five of them (~820 models, CC0 / CC-BY 3.0)::

    apt-get download sweethome3d-furniture
    dpkg-deb -x sweethome3d-furniture_*.deb sh3d     # libraries in sh3d/usr/share/sweethome3d/furniture

Everything is read from the archives in memory: nothing is extracted, so a path inside an archive can
never write outside the dataset folder, and a texture path that leaves its archive is refused. A model
that cannot be used raises :class:`SkipModel` with a one-line reason naming the file.

Conventions of the returned :class:`TexturedMesh`: z-up (Sweet Home 3D models are y-up), centred on
its bounding-box centre, scaled so that its farthest vertex is at distance ``radius`` (inside the unit
sphere like every fewview-objects category). Materials keep the MTL diffuse colour ``Kd`` and the
diffuse texture ``map_Kd``; a textured material's colour is the texture alone (exporters write
``Kd`` 0.64-0.8 beside textures, which would only darken them). Materials with dissolve ``d`` <= 0.05
are invisible helpers and dropped; other transparent materials render opaque.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

# Licence of each library of Debian's package (its copyright file); a library not listed here falls back
# to its catalog's own ``license`` key.
LIBRARY_LICENSES = {
    "BlendSwap-CC-0": "CC0-1.0",
    "BlendSwap-CC-BY": "CC-BY-3.0",
    "KatorLegaz": "CC-BY-3.0-US",
    "Reallusion": "CC-BY-3.0-US",
    "Scopia": "CC-BY-3.0",
}
DEFAULT_LOCATIONS = ("/usr/share/sweethome3d/furniture",)
# Openings and stairs are architecture, not objects.
EXCLUDED_CATEGORIES = ("Doors and windows", "Staircases")
MAX_FACES = 150_000
INSTALL_HINT = (
    "get them with `apt-get download sweethome3d-furniture && dpkg-deb -x sweethome3d-furniture_*.deb sh3d` "
    "and pass --household sh3d/usr/share/sweethome3d/furniture (or set $FEWVIEW_HOUSEHOLD)"
)


class SkipModel(Exception):
    """A model that cannot be used; the message is the reason (it names the file)."""


class MissingLibrariesError(RuntimeError):
    """No ``.sh3f`` library was found."""


@dataclass(frozen=True)
class CatalogEntry:
    library: str  # library file stem, e.g. "BlendSwap-CC-0"
    number: int  # N of the catalog's ``key#N``
    id: str
    name: str
    category: str
    creator: str
    license: str
    model: str  # path of the OBJ inside the archive, without a leading slash
    rotation: tuple[float, ...] | None = None  # modelRotation, 9 numbers row-major

    def card(self) -> dict:
        keys = ("library", "number", "id", "name", "category", "creator", "license", "model")
        return {k: getattr(self, k) for k in keys}


@dataclass
class SurfaceMaterial:
    name: str
    kd: np.ndarray  # (3,) diffuse colour in [0, 1]
    texture: np.ndarray | None = None  # (H, W, 3) float32 in [0, 1], row 0 at the top (v = 1)
    texture_file: str = ""


@dataclass
class TexturedMesh:
    vertices: np.ndarray  # (N, 3) float64
    faces: np.ndarray  # (F, 3) int64
    uv: np.ndarray  # (F, 3, 2) float32 per-corner texture coordinates (0 where the OBJ gives none)
    normals: np.ndarray  # (F, 3, 3) float32 per-corner unit normals (the face normal where the OBJ gives none)
    material: np.ndarray  # (F,) int32 index into ``materials``
    materials: list[SurfaceMaterial] = field(default_factory=list)
    name: str = ""

    def face_normals(self) -> np.ndarray:
        v = self.vertices[self.faces]
        n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)


# ------------------------------------------------------------------ catalogs
def parse_properties(text: str) -> dict[str, str]:
    """A Java ``.properties`` file (comments, ``=``/``:``/space separators, continuation lines, escapes)."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].lstrip()
        i += 1
        if not line or line[0] in "#!":
            continue
        while _continues(line) and i < len(lines):
            line = line[:-1] + lines[i].lstrip()
            i += 1
        m = re.match(r"((?:\\.|[^=:\s\\])*)\s*[=:\s]?\s*(.*)$", line)
        if m:
            out[_unescape(m.group(1))] = _unescape(m.group(2))
    return out


def _continues(line: str) -> bool:
    n = len(line) - len(line.rstrip("\\"))
    return n % 2 == 1


def _unescape(s: str) -> str:
    def rep(m: re.Match) -> str:
        c = m.group(1)
        if c.startswith("u"):
            return chr(int(c[1:], 16))
        return {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(c, c)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", rep, s)


def read_catalog(library: str | Path) -> list[CatalogEntry]:
    """The models listed in one ``.sh3f`` library, in catalog order."""
    library = Path(library)
    try:
        with zipfile.ZipFile(library) as z:
            props = parse_properties(z.read("PluginFurnitureCatalog.properties").decode("latin-1"))
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise SkipModel(f"{library}: not a furniture library ({e})") from None
    lib = library.stem
    lic = LIBRARY_LICENSES.get(lib, props.get("license", "unknown"))
    out = []
    numbers = sorted(int(k.split("#")[1]) for k in props if k.startswith("model#") and k.split("#")[1].isdigit())
    for n in numbers:
        rot = props.get(f"modelRotation#{n}")
        rotation = None
        if rot:
            try:
                vals = tuple(float(x) for x in rot.split())
                rotation = vals if len(vals) == 9 else None
            except ValueError:
                rotation = None
        model = props[f"model#{n}"].lstrip("/")
        out.append(CatalogEntry(
            library=lib, number=n, id=props.get(f"id#{n}", f"{lib}#{n}"),
            name=props.get(f"name#{n}", Path(model).stem), category=props.get(f"category#{n}", "Miscellaneous"),
            creator=props.get(f"creator#{n}", "unknown"), license=lic, model=model, rotation=rotation,
        ))  # fmt: skip
    return out


def find_libraries(source: str | Path | None = None) -> list[Path]:
    """The ``.sh3f`` files under ``source`` (a folder searched recursively, or one file), else under
    ``$FEWVIEW_HOUSEHOLD``, else under Debian's install location. Sorted by name."""
    cands = [source] if source else [os.environ.get("FEWVIEW_HOUSEHOLD"), *DEFAULT_LOCATIONS]
    for c in cands:
        if not c:
            continue
        p = Path(c)
        if p.is_file() and p.suffix == ".sh3f":
            return [p]
        if p.is_dir():
            libs = sorted(p.rglob("*.sh3f"), key=lambda q: q.name)
            if libs:
                return libs
        if source:
            raise MissingLibrariesError(f"{p}: no .sh3f furniture libraries there; {INSTALL_HINT}")
    raise MissingLibrariesError(f"no Sweet Home 3D furniture libraries found; {INSTALL_HINT}")


def catalog(
    source: str | Path | None = None, exclude_categories=EXCLUDED_CATEGORIES
) -> list[tuple[Path, CatalogEntry]]:
    """Every usable catalog entry of every library, in a fixed order (library name, catalog number)."""
    out = []
    for lib in find_libraries(source):
        out += [(lib, e) for e in read_catalog(lib) if e.category not in set(exclude_categories)]
    return out


# ---------------------------------------------------------------- OBJ + MTL
@lru_cache(maxsize=8)
def _archive(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def _member(z: zipfile.ZipFile, base: str, ref: str, what: str) -> str:
    """Resolve ``ref`` relative to the archive folder ``base``; refuse paths that leave the archive."""
    ref = ref.replace("\\", "/").strip().strip('"')
    if ref.startswith("/") or re.match(r"^[A-Za-z]:", ref):
        ref = posixpath.basename(ref)  # absolute author paths: look beside the file, as viewers do
    p = posixpath.normpath(posixpath.join(base, ref))
    if p.startswith("../") or p == "..":
        raise SkipModel(f"{what} {ref!r} points outside the archive")
    names = _names(z)
    if p in names:
        return p
    low = {n.lower(): n for n in names}
    if p.lower() in low:
        return low[p.lower()]
    raise SkipModel(f"{what} {p} is missing from the archive")


_NAMES: dict[str, frozenset] = {}


def _names(z: zipfile.ZipFile) -> frozenset:
    key = str(z.filename)
    if key not in _NAMES:
        _NAMES[key] = frozenset(z.namelist())
    return _NAMES[key]


def parse_mtl(text: str, where: str) -> dict[str, dict]:
    """{material: {"kd": (3,), "map_kd": file or None, "d": opacity}}."""
    mats: dict[str, dict] = {}
    cur = None
    for ln, raw in enumerate(text.splitlines(), 1):
        parts = raw.split("#", 1)[0].split()
        if not parts:
            continue
        key = parts[0].lower()
        try:
            if key == "newmtl":
                cur = " ".join(parts[1:])
                mats[cur] = {"kd": np.array([0.8, 0.8, 0.8]), "map_kd": None, "d": 1.0}
            elif cur is None:
                continue
            elif key == "kd":
                mats[cur]["kd"] = np.clip(np.array([float(x) for x in parts[1:4]]), 0, 1)
            elif key == "d":
                mats[cur]["d"] = float(parts[1])
            elif key == "tr":
                mats[cur]["d"] = 1.0 - float(parts[1])
            elif key == "map_kd":
                mats[cur]["map_kd"] = _map_file(parts[1:])
        except (ValueError, IndexError):
            raise SkipModel(f"{where}: malformed MTL line {ln}: {raw.strip()[:60]!r}") from None
    return mats


_MAP_OPTION_ARGS = {"-blendu": 1, "-blendv": 1, "-bm": 1, "-boost": 1, "-cc": 1, "-clamp": 1, "-imfchan": 1,
                    "-mm": 2, "-o": 3, "-s": 3, "-t": 3, "-texres": 1, "-type": 1}  # fmt: skip


def _map_file(tokens: list[str]) -> str:
    i = 0
    while i < len(tokens) and tokens[i].lower() in _MAP_OPTION_ARGS:
        i += 1 + _MAP_OPTION_ARGS[tokens[i].lower()]
        # -o/-s/-t take 1 to 3 numbers
        while i < len(tokens) - 1 and re.fullmatch(r"[-+]?[\d.eE+-]+", tokens[i]):
            i += 1
    return " ".join(tokens[i:])


def parse_obj(text: str, where: str, max_faces: int = MAX_FACES):
    """Vertices, texture coordinates, normals and triangulated faces (polygon fans) with their material
    names. Raises :class:`SkipModel` on a malformed line or more than ``max_faces`` triangles."""
    v, vt, vn = [], [], []
    fv, ft, fn, fm = [], [], [], []
    mtllibs, mat = [], ""
    for ln, raw in enumerate(text.splitlines(), 1):
        if not raw or raw[0] == "#":
            continue
        parts = raw.split()
        if not parts:
            continue
        key = parts[0]
        try:
            if key == "v":
                v.append((float(parts[1]), float(parts[2]), float(parts[3])))
            elif key == "vt":
                vt.append((float(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0))
            elif key == "vn":
                vn.append((float(parts[1]), float(parts[2]), float(parts[3])))
            elif key == "f":
                corners = []
                for c in parts[1:]:
                    s = c.split("/")
                    iv = int(s[0])
                    it = int(s[1]) if len(s) > 1 and s[1] else 0
                    inn = int(s[2]) if len(s) > 2 and s[2] else 0
                    corners.append((
                        iv - 1 if iv > 0 else len(v) + iv,
                        (it - 1 if it > 0 else len(vt) + it) if it else -1,
                        (inn - 1 if inn > 0 else len(vn) + inn) if inn else -1,
                    ))  # fmt: skip
                if len(corners) < 3:
                    continue  # a two-corner "face" is an edge: nothing to render
                for k in range(1, len(corners) - 1):
                    tri = (corners[0], corners[k], corners[k + 1])
                    fv.append(tuple(c[0] for c in tri))
                    ft.append(tuple(c[1] for c in tri))
                    fn.append(tuple(c[2] for c in tri))
                    fm.append(mat)
                if len(fv) > max_faces:
                    raise SkipModel(f"{where}: more than {max_faces} triangles (the budget)")
            elif key == "usemtl":
                mat = " ".join(parts[1:])
            elif key == "mtllib":
                mtllibs.append(" ".join(parts[1:]))
        except (ValueError, IndexError):
            raise SkipModel(f"{where}: malformed OBJ line {ln}: {raw.strip()[:60]!r}") from None
    fv_a = np.asarray(fv, dtype=np.int64).reshape(-1, 3)
    ft_a = np.asarray(ft, dtype=np.int64).reshape(-1, 3)
    fn_a = np.asarray(fn, dtype=np.int64).reshape(-1, 3)
    if len(fv_a) and (fv_a.min() < 0 or fv_a.max() >= len(v)):
        raise SkipModel(f"{where}: a face refers to a vertex that does not exist")
    if len(ft_a) and (ft_a.max() >= len(vt) or ft_a.min() < -1):
        raise SkipModel(f"{where}: a face refers to a texture coordinate that does not exist")
    if len(fn_a) and (fn_a.max() >= len(vn) or fn_a.min() < -1):
        raise SkipModel(f"{where}: a face refers to a normal that does not exist")
    return (np.asarray(v, dtype=np.float64).reshape(-1, 3), np.asarray(vt, dtype=np.float64).reshape(-1, 2),
            np.asarray(vn, dtype=np.float64).reshape(-1, 3), fv_a, ft_a, fn_a, fm, mtllibs)  # fmt: skip


def load_texture(data: bytes, where: str, max_size: int = 256) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]; textures larger than ``max_size`` are reduced (JPEG: at decode time)."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        if im.format == "JPEG":
            im.draft("RGB", (max_size, max_size))
        im = im.convert("RGB")
        if max(im.size) > max_size:
            s = max_size / max(im.size)
            im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
        return np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise SkipModel(f"{where}: unreadable texture ({e})") from None


def load_model(library: str | Path, entry: CatalogEntry, max_faces: int = MAX_FACES, texture_size: int = 256,
               radius: float = 0.95) -> TexturedMesh:  # fmt: skip
    """Read one catalog entry's OBJ, MTL and textures from its library and normalise it (z-up, centred,
    scaled into the sphere of ``radius``)."""
    z = _archive(str(library))
    where = f"{Path(library).name}:{entry.model}"
    try:
        obj_text = z.read(_member(z, "", entry.model, "OBJ file")).decode("latin-1")
    except (zipfile.BadZipFile, OSError) as e:
        raise SkipModel(f"{where}: unreadable ({e})") from None
    v, vt, vn, fv, ft, fn, fm, mtllibs = parse_obj(obj_text, where, max_faces)
    base = posixpath.dirname(entry.model)
    mtl: dict[str, dict] = {}
    for lib in mtllibs:
        path = _member(z, base, lib, f"{where}: material library")
        mtl.update(parse_mtl(z.read(path).decode("latin-1"), f"{Path(library).name}:{path}"))
    return build_mesh(v, vt, vn, fv, ft, fn, fm, mtl, lambda ref: _texture(z, base, ref, where, texture_size),
                      where, entry.rotation, radius)  # fmt: skip


def _texture(z: zipfile.ZipFile, base: str, ref: str, where: str, size: int) -> np.ndarray:
    path = _member(z, base, ref, f"{where}: texture")
    return load_texture(z.read(path), f"{z.filename}:{path}", size)


def build_mesh(v, vt, vn, fv, ft, fn, fm, mtl, texture_loader, where, rotation=None, radius=0.95) -> TexturedMesh:
    """Assemble a :class:`TexturedMesh` from parsed OBJ arrays and MTL materials (see :func:`load_model`)."""
    names = sorted(set(fm))
    materials, keep_mat = [], []
    for n in names:
        m = mtl.get(n, {"kd": np.array([0.8, 0.8, 0.8]), "map_kd": None, "d": 1.0})
        tex = texture_loader(m["map_kd"]) if m["map_kd"] else None
        materials.append(SurfaceMaterial(n, np.asarray(m["kd"], float), tex, m["map_kd"] or ""))
        keep_mat.append(m["d"] > 0.05)
    index = {n: k for k, n in enumerate(names)}
    mat = np.array([index[n] for n in fm], dtype=np.int32)
    keep = np.asarray(keep_mat, bool)[mat] if len(mat) else np.zeros(0, bool)
    fv, ft, fn, mat = fv[keep], ft[keep], fn[keep], mat[keep]
    if len(fv) == 0:
        raise SkipModel(f"{where}: no faces")
    if rotation is not None:
        v = v @ np.asarray(rotation, float).reshape(3, 3).T
        vn = vn @ np.asarray(rotation, float).reshape(3, 3).T if len(vn) else vn
    # y-up (Sweet Home 3D) -> z-up: (x, y, z) -> (x, -z, y)
    yz = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    v = v @ yz.T
    vn = vn @ yz.T if len(vn) else vn
    tri = v[fv]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    used = np.unique(fv)
    lo, hi = v[used].min(0), v[used].max(0)
    extent = float(np.max(hi - lo))
    if not np.all(np.isfinite(v[used])) or extent <= 0 or area.sum() <= 1e-12 * extent**2:
        raise SkipModel(f"{where}: zero-area mesh")
    centre = (lo + hi) / 2
    scale = radius / max(float(np.linalg.norm(v[used] - centre, axis=1).max()), 1e-30)
    v = (v - centre) * scale
    uv = np.zeros((len(fv), 3, 2), np.float32)
    has_uv = (ft >= 0).all(1)
    if len(vt):
        uv[has_uv] = vt[ft[has_uv]]
    mesh = TexturedMesh(v, fv, uv, np.zeros((len(fv), 3, 3), np.float32), mat, materials, where)
    fnorm = mesh.face_normals()
    normals = np.repeat(fnorm[:, None], 3, 1)
    has_n = (fn >= 0).all(1)
    if len(vn) and has_n.any():
        nn = vn[fn[has_n]]
        nn = nn / np.maximum(np.linalg.norm(nn, axis=-1, keepdims=True), 1e-30)
        # keep the file's normals on the side of the geometric normal (some exporters flip them)
        flip = (nn * fnorm[has_n][:, None]).sum(-1, keepdims=True) < 0
        normals[has_n] = np.where(flip, -nn, nn)
    mesh.normals = normals.astype(np.float32)
    for k, m in enumerate(materials):  # a texture no face can look up: use the material's colour
        if m.texture is not None and not has_uv[mat == k].any():
            m.texture = None
    return mesh


# ------------------------------------------------------------------ shading
@dataclass
class Lighting:
    """Ambient + Lambertian diffuse + Blinn-Phong specular, with the light fixed in the object's frame."""

    direction: np.ndarray = field(
        default_factory=lambda: np.array([0.45, -0.5, 0.74]) / np.linalg.norm([0.45, -0.5, 0.74])
    )  # noqa: E501
    ambient: float = 0.35
    diffuse: float = 0.65
    specular: float = 0.05
    shininess: float = 24.0
    smooth: bool = True  # the OBJ's vertex normals where it has them; False: flat face normals

    @classmethod
    def random(cls, rng: np.random.Generator) -> Lighting:
        az, el = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(20, 70))
        d = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        ambient = rng.uniform(0.3, 0.45)
        return cls(d, ambient, 1 - ambient, rng.uniform(0.0, 0.1), rng.uniform(12, 48))


@dataclass
class HouseholdObject:
    """One catalog model, posed (random azimuth) and lit (random light), ready to render."""

    category: str
    mesh: TexturedMesh
    lighting: Lighting
    entry: CatalogEntry | None = None

    @property
    def vertices(self) -> np.ndarray:
        return self.mesh.vertices

    @property
    def faces(self) -> np.ndarray:
        return self.mesh.faces

    def shade(self, f: np.ndarray, bary: np.ndarray, points: np.ndarray, eye: np.ndarray) -> np.ndarray:
        """Colour (N, 3) of the surface samples on faces ``f`` at barycentrics ``bary`` (perspective-correct)
        seen from ``eye``."""
        from .raster import sample_texture

        m = self.mesh
        albedo = np.empty((len(f), 3))
        mat = m.material[f]
        for k, mm in enumerate(m.materials):
            sel = mat == k
            if not sel.any():
                continue
            if mm.texture is None:
                albedo[sel] = mm.kd
            else:
                uv = np.einsum("nk,nkc->nc", bary[sel], m.uv[f[sel]]).astype(np.float32)
                albedo[sel] = sample_texture(mm.texture, uv)
        lt = self.lighting
        if lt.smooth:
            n = np.einsum("nk,nkc->nc", bary, m.normals[f].astype(np.float64))
        else:
            n = m.face_normals()[f]
        n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        view = eye - points
        view /= np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-12)
        n = np.where((n * view).sum(1, keepdims=True) < 0, -n, n)  # two-sided: face the camera
        diffuse = np.clip(n @ lt.direction, 0, 1)
        half = view + lt.direction
        half /= np.maximum(np.linalg.norm(half, axis=1, keepdims=True), 1e-12)
        spec = lt.specular * np.clip((n * half).sum(1), 0, 1) ** lt.shininess * (diffuse > 0)
        return np.clip(albedo * (lt.ambient + lt.diffuse * diffuse)[:, None] + spec[:, None], 0, 1)


def make_household_object(library: str | Path, entry: CatalogEntry, rng: np.random.Generator,
                          max_faces: int = MAX_FACES, texture_size: int = 256) -> HouseholdObject:  # fmt: skip
    """Load a model, turn it by a random azimuth about z and give it a random light."""
    mesh = load_model(library, entry, max_faces, texture_size)
    a = rng.uniform(0, 2 * np.pi)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    mesh.vertices = mesh.vertices @ rz.T
    mesh.normals = (mesh.normals.astype(np.float64) @ rz.T).astype(np.float32)
    return HouseholdObject(entry.category, mesh, Lighting.random(rng), entry)
