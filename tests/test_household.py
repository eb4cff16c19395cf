"""Household objects: the .sh3f/OBJ/MTL reader, textured rendering, skips with reasons, builds (all fixtures
are written by the tests; Debian's package is not needed)."""

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fewview.cameras import Cameras, intrinsics_matrix
from fewview.data import DataError
from fewview.objects.builder import ObjectsConfig, build, load_object, render_object, splits
from fewview.objects.household import (
    HouseholdObject,
    Lighting,
    SkipModel,
    SurfaceMaterial,
    TexturedMesh,
    catalog,
    load_model,
    parse_properties,
    read_catalog,
)
from fewview.objects.raster import sample_texture

from .helpers import depth_points

FLAT = Lighting(ambient=1.0, diffuse=0.0, specular=0.0)


def camera(res: int, f: float, dist: float) -> Cameras:
    """OpenCV camera at (0, 0, dist) looking down -z: image right = +x, image down = -y."""
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, dist], [0, 0, 0, 1]])[None]
    return Cameras(c2w, intrinsics_matrix(f, f, res / 2, res / 2)[None].float(), torch.tensor([res, res]))


def quad(corners: np.ndarray, material: SurfaceMaterial) -> TexturedMesh:
    """Two triangles over corners (bottom-left, bottom-right, top-right, top-left) with uv on the unit square."""
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv_c = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    n = np.cross(corners[1] - corners[0], corners[3] - corners[0])
    n = n / np.linalg.norm(n)
    return TexturedMesh(corners.astype(np.float64), faces, uv_c[faces], np.tile(n, (2, 3, 1)).astype(np.float32),
                        np.zeros(2, np.int32), [material])  # fmt: skip


def render(mesh, cam, ss=1):
    rgba, depth = render_object(HouseholdObject("test", mesh, FLAT), cam, supersample=ss)
    return rgba[0].astype(np.float64) / 255, depth[0]


def test_head_on_textured_quad_returns_its_texels():
    rng = np.random.default_rng(0)
    tex = rng.uniform(size=(4, 4, 3)).astype(np.float32)
    res, f, dist = 4, 4.0, 2.0  # the quad [-1, 1]^2 at distance 2 spans the 4x4 image exactly
    corners = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float)
    img, depth = render(quad(corners, SurfaceMaterial("t", np.ones(3), tex)), camera(res, f, dist))
    # pixel (i, j) centre sees uv ((j + .5) / 4, 1 - (i + .5) / 4): texel (i, j) exactly (texture row 0 = top)
    assert np.abs(img[..., :3] - tex).max() <= 0.5 / 255 + 1e-6
    assert np.all(img[..., 3] == 1) and np.allclose(depth, dist)


def test_slanted_checkerboard_matches_perspective_correct_lookup_and_affine_fails():
    checker = ((np.arange(8)[:, None] + np.arange(8)[None]) % 2).astype(np.float32)
    tex = np.repeat(checker[..., None], 3, -1)
    a = np.deg2rad(65)  # quad tilted about x: its top recedes from the camera
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    corners = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float) @ rot.T
    res, f, dist = 48, 40.0, 2.5
    img, _ = render(quad(corners, SurfaceMaterial("c", np.ones(3), tex)), camera(res, f, dist))
    # analytic: intersect each pixel's ray with the plane, read uv, look the texture up
    jj, ii = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5)
    d = np.stack([(jj - res / 2) / f, -(ii - res / 2) / f, -np.ones_like(jj)], -1)  # world ray directions
    o = np.array([0, 0, dist])
    n = rot[:, 2]
    t = -(o @ n) / (d @ n)
    p = o + t[..., None] * d
    local = p @ rot  # back to the quad's frame
    uv = ((local[..., :2] + 1) / 2).reshape(-1, 2).astype(np.float32)
    inside = (np.abs(local[..., 0]) < 0.97) & (np.abs(local[..., 1]) < 0.97)
    expected = sample_texture(tex, uv).reshape(res, res, 3)
    covered = (img[..., 3] == 1) & inside
    assert covered.sum() > 300
    err = np.abs(img[..., :3] - expected)[covered]
    assert err.max() < 3 / 255
    # affine (screen-space) interpolation of uv over each triangle gives a different image
    cam = camera(res, f, dist)
    px, _ = cam.project(torch.from_numpy(corners).float())
    px = px[0].double().numpy()
    q = np.stack([jj, ii], -1)
    uv_aff = np.zeros((res, res, 2))
    uvc = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    for tri in ([0, 1, 2], [0, 2, 3]):
        A = np.stack([px[tri[1]] - px[tri[0]], px[tri[2]] - px[tri[0]]], 1)
        w = np.linalg.solve(A, (q - px[tri[0]]).reshape(-1, 2).T).T.reshape(res, res, 2)
        inside_t = (w >= 0).all(-1) & (w.sum(-1) <= 1)
        u = uvc[tri[0]] + w[..., :1] * (uvc[tri[1]] - uvc[tri[0]]) + w[..., 1:] * (uvc[tri[2]] - uvc[tri[0]])
        uv_aff[inside_t] = u[inside_t]
    affine = sample_texture(tex, uv_aff.reshape(-1, 2).astype(np.float32)).reshape(res, res, 3)
    assert np.abs(affine - expected)[covered].max() > 0.5


def test_kd_only_material_gives_its_colour():
    kd = np.array([0.2, 0.6, 0.4])
    corners = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float) * 0.5
    img, _ = render(quad(corners, SurfaceMaterial("kd", kd)), camera(16, 16.0, 2.0))
    inner = img[img[..., 3] == 1]
    assert len(inner) > 20 and np.abs(inner[:, :3] - kd).max() <= 0.5 / 255 + 1e-6


def test_lighting_is_lambertian_plus_ambient():
    corners = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float) * 0.5
    light = np.array([0.0, 0.6, 0.8])
    lt = Lighting(direction=light, ambient=0.3, diffuse=0.7, specular=0.0)
    obj = HouseholdObject("t", quad(corners, SurfaceMaterial("kd", np.array([1.0, 0.5, 0.25]))), lt)
    rgba, _ = render_object(obj, camera(16, 16.0, 2.0), supersample=1)
    px = rgba[0][rgba[0][..., 3] == 255][:, :3] / 255
    want = np.array([1.0, 0.5, 0.25]) * (0.3 + 0.7 * 0.8)
    assert np.abs(px - want).max() <= 0.5 / 255 + 1e-6


def test_java_properties():
    text = "# c\n! c\nname#1=Caf\\u00e9 chair\nlong#1=a \\\n   b\nk\\=ey : v\\tx\n"
    p = parse_properties(text)
    assert p["name#1"] == "Café chair" and p["long#1"] == "a b" and p["k=ey"] == "v\tx"


# ---------------------------------------------------------------- .sh3f fixtures
CUBE_OBJ = """mtllib box.mtl
v -1 0 -1\nv 1 0 -1\nv 1 4 -1\nv -1 4 -1\nv -1 0 1\nv 1 0 1\nv 1 4 1\nv -1 4 1
vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1
usemtl wood
f 1/1 2/2 3/3 4/4
f 5/1 6/2 7/3 8/4
usemtl paint
f 1 2 6 5
f 4 3 7 8
f 1 4 8 5
f 2 3 7 6
"""
BOX_MTL = "newmtl wood\nKd 0.64 0.64 0.64\nmap_Kd tex/wood.png\nnewmtl paint\nKd 0.9 0.1 0.1\n"


def png(color) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), color, np.uint8)).save(b, "PNG")
    return b.getvalue()


def make_library(path, extra_models=True):
    cat = ["id=test-lib", "license=CC-BY-3.0",
           "id#1=lib#box", "name#1=Caf\\u00e9 box", "category#1=Kitchen", "creator#1=Ann Author",
           "model#1=/lib/box/box.obj", "modelRotation#1=1 0 0 0 1 0 0 0 1"]  # fmt: skip
    files = {"lib/box/box.obj": CUBE_OBJ, "lib/box/box.mtl": BOX_MTL, "lib/box/tex/wood.png": png((30, 200, 90))}
    if extra_models:
        cat += ["name#2=No texture", "category#2=Kitchen", "creator#2=B", "model#2=/lib/nt/nt.obj",
                "name#3=Bad line", "category#3=Office", "creator#3=C", "model#3=/lib/bad/bad.obj",
                "name#4=Empty", "category#4=Office", "creator#4=D", "model#4=/lib/empty/empty.obj",
                "name#5=Escape", "category#5=Office", "creator#5=E", "model#5=/lib/esc/esc.obj",
                "name#6=Door", "category#6=Doors and windows", "creator#6=F", "model#6=/lib/box/box.obj"]  # fmt: skip
        files |= {
            "lib/nt/nt.obj": CUBE_OBJ.replace("box.mtl", "nt.mtl"),
            "lib/nt/nt.mtl": BOX_MTL.replace("tex/wood.png", "gone.jpg"),
            "lib/bad/bad.obj": CUBE_OBJ.replace("mtllib box.mtl\n", "").replace("v 1 4 1", "v 1 two 1"),
            "lib/empty/empty.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\n",
            "lib/esc/esc.obj": CUBE_OBJ.replace("box.mtl", "esc.mtl"),
            "lib/esc/esc.mtl": BOX_MTL.replace("tex/wood.png", "../../../../evil.png"),
        }
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("PluginFurnitureCatalog.properties", "\n".join(cat) + "\n")
        for k, v in files.items():
            z.writestr(k, v)
    return path


def test_sh3f_catalog_round_trip(tmp_path):
    lib = make_library(tmp_path / "MyLib.sh3f")
    entries = read_catalog(lib)
    e = entries[0]
    assert (e.library, e.number, e.id, e.name, e.category, e.creator, e.license, e.model) == (
        "MyLib",
        1,
        "lib#box",
        "Café box",
        "Kitchen",
        "Ann Author",
        "CC-BY-3.0",
        "lib/box/box.obj",
    )
    assert e.rotation == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert [x.number for _, x in catalog(tmp_path)] == [1, 2, 3, 4, 5]  # the door is excluded
    mesh = load_model(lib, e)
    assert len(mesh.faces) == 12 and [m.name for m in mesh.materials] == ["paint", "wood"]
    assert mesh.materials[1].texture.shape == (8, 8, 3)
    assert np.allclose(mesh.materials[1].texture, np.array([30, 200, 90]) / 255)
    assert np.allclose(mesh.materials[0].kd, [0.9, 0.1, 0.1])
    # y-up box of height 4 becomes z-up, centred, inside the sphere of radius 0.95
    assert np.allclose(np.linalg.norm(mesh.vertices, axis=1).max(), 0.95)
    assert np.allclose(mesh.vertices.mean(0), 0) and np.ptp(mesh.vertices[:, 2]) > np.ptp(mesh.vertices[:, 0])


@pytest.mark.parametrize(
    "number, words",
    [(2, ["nt.obj", "lib/nt/gone.jpg", "missing"]), (3, ["bad.obj", "malformed OBJ line 7", "two"]),
     (4, ["empty.obj", "no faces"]), (5, ["esc.obj", "outside the archive"])],
)  # fmt: skip
def test_unusable_models_are_skipped_with_a_reason_naming_the_file(tmp_path, number, words):
    lib = make_library(tmp_path / "MyLib.sh3f")
    e = next(x for x in read_catalog(lib) if x.number == number)
    with pytest.raises(SkipModel) as info:
        load_model(lib, e)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_household_build_skips_bad_models_lists_them_and_writes_only_its_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_library(src / "MyLib.sh3f")
    cfg = ObjectsConfig(views=4, res=24, recipe="household", household=str(src), shard_size=2)
    out = tmp_path / "out"
    card = build(cfg, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    assert sorted(p.name for p in src.iterdir()) == ["MyLib.sh3f"]
    assert set(card["household"]["skipped"]) == {"1", "2", "3", "4"}
    assert "outside the archive" in card["household"]["skipped"]["4"]
    assert card["household"]["models"]["0"]["creator"] == "Ann Author"
    assert card["household"]["licenses"]["CC-BY-3.0"]["creators"] == ["Ann Author"]
    assert sum(len(v) for v in card["splits"].values()) == 1
    s = load_object(out, 0)
    assert s.meta["category"] == "Kitchen" and s.images.shape == (4, 3, 24, 24)
    with pytest.raises(DataError, match="skipped"):
        load_object(out, 2)
    # deterministic
    card2 = build(cfg, tmp_path / "again", progress=False)
    assert [s["sha256"] for s in card["shards"]] == [s["sha256"] for s in card2["shards"]]


def test_mixed_recipe_keeps_the_parametric_objects_and_splits_by_model(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_library(src / "A.sh3f", extra_models=False)
    make_library(src / "B.sh3f", extra_models=False)
    mixed = ObjectsConfig(objects=16, recipe="mixed", household=str(src))
    plain = ObjectsConfig(objects=16)
    sm, sp = splits(mixed), splits(plain)
    for k in sp:
        assert [i for i in sm[k] if i < 16] == sp[k]
    assert sorted(i for v in sm.values() for i in v) == list(range(18))
    with pytest.raises(ValueError, match="unknown recipe"):
        splits(ObjectsConfig(recipe="nope"))


def test_cli_names_the_package_when_libraries_are_missing(tmp_path, capsys, monkeypatch):
    from fewview.cli import main

    monkeypatch.setenv("FEWVIEW_HOUSEHOLD", str(tmp_path / "none"))
    monkeypatch.setattr("fewview.objects.household.DEFAULT_LOCATIONS", ())
    assert main(["data", "objects", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "apt-get download sweethome3d-furniture" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_household_depth_lies_on_the_mesh_and_masks_equal_depth_validity(tmp_path):
    import trimesh

    from fewview.metrics import nearest_distances
    from fewview.objects.builder import generate

    src = tmp_path / "src"
    src.mkdir()
    make_library(src / "MyLib.sh3f", extra_models=False)
    obj, cams = generate(ObjectsConfig(views=4, res=48, recipe="household", household=str(src)), 0)
    rgba, depth = render_object(obj, cams)
    assert np.array_equal(rgba[..., 3] > 0, depth > 0)
    pts = depth_points(rgba, depth, cams)
    mesh = trimesh.Trimesh(obj.vertices, obj.faces, process=False)
    surface = torch.from_numpy(trimesh.sample.sample_surface_even(mesh, 40000, seed=0)[0])
    err = nearest_distances(pts, surface).mean() / float(np.linalg.norm(mesh.extents))
    assert err < 0.005, float(err)
    # the textured sides show the texture's green, the painted ones Kd red, under the object's light
    rgb = rgba[..., :3][rgba[..., 3] == 255].astype(float)
    assert ((rgb[:, 1] > rgb[:, 0] + 30).any()) and ((rgb[:, 0] > rgb[:, 1] + 30).any())
