"""Anatomically plausible augmentation of brain MRI slices, cut from 3-D volumes.

Used by `data.py brain --augment N`.  Each augmented slice is cut afresh from its
volume (trilinear, supersampled and box-averaged, so no interpolation of an already
resampled slice) on a plane that is one of the base slices' planes, moved by:

* slice position: +- half a slice spacing along the normal (the positions in between
  the base slices);
* orientation: an in-plane rotation of +- `rotate_deg` and a tilt of the plane of
  +- `tilt_deg` about each in-plane axis (3-D sources only);
* size and position: an isotropic zoom in [`zoom_min`, `zoom_max`] and an in-plane
  shift of +- `shift` of the field of view;
* left-right mirroring with probability `flip` (the volume's x axis: a mirrored brain
  is anatomically plausible; anterior-posterior and up-down flips are not used);
* a small elastic deformation: a displacement field drawn on a coarse
  `elastic_grid` x `elastic_grid` grid, N(0, `elastic_sd`) in units of the field of
  view, bicubically interpolated;

then, on intensities in [0, 1], a gamma v -> v^g with log g uniform in
[log `gamma_min`, log `gamma_max`] and a smooth multiplicative bias field
exp(b(x, y)), b a quadratic polynomial in the image coordinates (in [-1, 1]) with
coefficients uniform in +- `bias` (a slowly varying receive-coil shading), clipped
to [0, 1].

Geometry: a volume is RAS (x right, y anterior, z superior) with voxel sizes in mm;
the views are shown as `data.volume_slices` shows them (superior / anterior at the
top), in a square field of view whose side is the larger in-plane extent, centred on
the volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULTS = dict(
    rotate_deg=10.0, tilt_deg=6.0, zoom_min=0.9, zoom_max=1.1, shift=0.04, flip=0.5,
    elastic_grid=5, elastic_sd=0.01, gamma_min=0.75, gamma_max=1.35, bias=0.15,
)

# view -> (normal axis, row axis, row sign, column axis, column sign): image rows run
# along -z (sagittal, coronal) or -y (axial), columns along +y (sagittal) or +x.
VIEWS = {
    "sagittal": (0, 2, -1.0, 1, 1.0),
    "coronal": (1, 2, -1.0, 0, 1.0),
    "axial": (2, 1, -1.0, 0, 1.0),
}


@dataclass
class Jitter:
    """One draw of the augmentation parameters (see the module docs)."""

    slice_offset: float  # in slice spacings
    angle: float  # in-plane rotation, radians
    tilt_row: float  # rotation of the plane about its row axis, radians
    tilt_col: float  # ... about its column axis
    zoom: float
    shift: tuple  # (rows, cols), fraction of the field of view
    flip: bool
    elastic: np.ndarray  # (2, g, g): row / column displacement, fraction of the field of view
    gamma: float
    bias: np.ndarray  # (6,): 1, u, v, u^2, uv, v^2 coefficients

    @staticmethod
    def identity(grid: int = 5) -> "Jitter":
        return Jitter(0.0, 0.0, 0.0, 0.0, 1.0, (0.0, 0.0), False, np.zeros((2, grid, grid)), 1.0, np.zeros(6))


def draw(rng: np.random.Generator, cfg: dict, three_d: bool = True) -> Jitter:
    """Draws one set of parameters (the same number of draws whatever `three_d` is, so a
    sample's parameters depend only on its generator)."""
    u = rng.uniform(-1.0, 1.0, size=6)
    g = int(cfg["elastic_grid"])
    el = rng.normal(0.0, cfg["elastic_sd"], size=(2, g, g))
    flip = bool(rng.uniform() < cfg["flip"])
    zoom = rng.uniform(cfg["zoom_min"], cfg["zoom_max"])
    gamma = math.exp(rng.uniform(math.log(cfg["gamma_min"]), math.log(cfg["gamma_max"])))
    bias = rng.uniform(-cfg["bias"], cfg["bias"], size=6)
    bias[0] = 0.0  # the overall scale is fixed by the per-volume normalisation
    deg = math.pi / 180
    return Jitter(
        slice_offset=0.5 * u[0] if three_d else 0.0,
        angle=cfg["rotate_deg"] * deg * u[1],
        tilt_row=cfg["tilt_deg"] * deg * u[2] if three_d else 0.0,
        tilt_col=cfg["tilt_deg"] * deg * u[3] if three_d else 0.0,
        zoom=zoom,
        shift=(cfg["shift"] * u[4], cfg["shift"] * u[5]),
        flip=flip,
        elastic=el,
        gamma=gamma,
        bias=bias,
    )


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: rotation by `angle` about the unit vector `axis`."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def plane_points(shape, zooms, view: str, index: float, size: int, j: Jitter, supersample: int) -> np.ndarray:
    """The sampling points of one slice, (m, m, 3) in mm from the volume's corner (m = size *
    supersample); `index` is the (fractional) voxel index along the view's normal."""
    import torch
    import torch.nn.functional as F

    n_ax, r_ax, r_sign, c_ax, c_sign = VIEWS[view]
    ext = np.asarray(shape[:3], np.float64) * np.asarray(zooms[:3], np.float64)
    fov = max(ext[r_ax], ext[c_ax])
    e_n, e_r, e_c = np.eye(3)[n_ax], r_sign * np.eye(3)[r_ax], c_sign * np.eye(3)[c_ax]
    m = size * supersample
    t = (np.arange(m) + 0.5) / m - 0.5  # fraction of the field of view
    v, u = np.meshgrid(t, t, indexing="ij")  # rows, columns
    if np.any(j.elastic):
        d = F.interpolate(torch.from_numpy(j.elastic[None]).float(), size=(m, m), mode="bicubic",
                          align_corners=True)[0].double().numpy()
        v, u = v + d[0], u + d[1]
    ca, sa = math.cos(j.angle), math.sin(j.angle)
    ur = (ca * u - sa * v) / j.zoom + j.shift[1]
    vr = (sa * u + ca * v) / j.zoom + j.shift[0]
    centre = ext / 2
    pos = (index + 0.5 + j.slice_offset) * zooms[n_ax] - centre[n_ax]
    rot = _rotation(e_r, j.tilt_row) @ _rotation(e_c, j.tilt_col)
    local = fov * (ur[..., None] * e_c + vr[..., None] * e_r)  # (m, m, 3)
    p = centre + pos * e_n + local @ rot.T
    if j.flip:
        p[..., 0] = ext[0] - p[..., 0]
    return p


def render(vol, shape, zooms, view: str, index: float, size: int, j: Jitter, supersample: int) -> np.ndarray:
    """One slice, (size, size) float32 in [0, 1]: `vol` is a torch tensor (1, 1, nx, ny, nz) in
    [0, 1] (zero outside), sampled trilinearly at supersample^2 points per pixel and averaged."""
    import torch
    import torch.nn.functional as F

    p = plane_points(shape, zooms, view, index, size, j, supersample)
    ext = np.asarray(shape[:3], np.float64) * np.asarray(zooms[:3], np.float64)
    gn = p / ext * 2 - 1  # align_corners=False: voxel centres at (i + 0.5) / n * 2 - 1
    grid = torch.from_numpy(gn[..., ::-1].copy()).float()[None, None]  # (1, 1, m, m, 3) as (z, y, x)
    out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0, 0]
    if supersample > 1:
        out = F.avg_pool2d(out[None, None], supersample)[0, 0]
    return intensity(out.numpy(), j)


def intensity(img: np.ndarray, j: Jitter) -> np.ndarray:
    """Gamma, then the bias field, then a clip to [0, 1]."""
    n = img.shape[0]
    t = (np.arange(n) + 0.5) / n * 2 - 1
    v, u = np.meshgrid(t, t, indexing="ij")
    b = j.bias
    field = np.exp(b[1] * u + b[2] * v + b[3] * u * u + b[4] * u * v + b[5] * v * v)
    out = np.clip(img, 0.0, 1.0) ** j.gamma * field
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def supersample_for(shape, zooms, view: str, size: int, cap: int = 4) -> int:
    """Points per pixel side so that the sampling spacing is at most the voxel size (up to `cap`)."""
    _, r_ax, _, c_ax, _ = VIEWS[view]
    ext = np.asarray(shape[:3], np.float64) * np.asarray(zooms[:3], np.float64)
    fov = max(ext[r_ax], ext[c_ax])
    return int(min(cap, max(1, math.ceil(fov / size / min(zooms[r_ax], zooms[c_ax])))))
