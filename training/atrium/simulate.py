"""Simulated 3D bSSFP cardiac MR with a left-atrium label (SCIENCE.md section 4c).

Anatomy is built from signed distance functions (ellipsoids, tapered capsules,
elliptic cylinders) in a heart-centred frame (x patient left, y posterior, z
superior; mm), randomly rotated, on a 1.25 mm isotropic grid of varied size:

* left atrium: ellipsoid ~22 x 18 x 25 mm scaled so its volume is LAVI x BSA, with
  LAVI 70 % in 16-34 and 30 % in 35-60 mL/m2 and BSA 1.5-2.3 m2; wall 2-3 mm;
  four pulmonary veins (10-16 mm, 10-25 mm long, posterior, towards the lungs) and a
  tapered appendage (20-35 mm);
* LV (wall 8-11 mm) and RV along an oblique long axis, RA with SVC, ascending and
  descending aorta with the arch, pulmonary trunk and right pulmonary artery,
  epicardial fat, lungs, spine with bright CSF, liver, body with subcutaneous fat.

Contrast is bSSFP-like relative to blood (1.0): myocardium 0.20-0.30, fat 1.0-1.25,
body/muscle 0.28, liver 0.33, lungs 0.06. Partial volume comes from a one-voxel linear
occupancy ramp across each surface; then a slight blur (sigma 0.5 voxel), a smooth
multiplicative coil bias (+-20-40 %), optional respiratory ghosting (5-10 %), and
Rician noise with blood SNR 15-40. Label (LASC convention): LA blood pool, the first
10 mm of each pulmonary vein beyond the ostium, and the first 15 mm of the appendage.

Everything is torch on the given device, vectorised over the whole volume (a case is
some 40 full-volume passes; milliseconds on a GPU, about a second on one CPU core).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

GRID_MM = 1.25
ELLIPSOID_BASE_ML = 4.0 / 3.0 * math.pi * 22 * 18 * 25 / 1000.0
PV_LABEL_MM = 10.0
LAA_LABEL_MM = 15.0


@dataclass(frozen=True)
class SimConfig:
    nz: int = 80
    """Slices (z) per volume."""
    sizes: tuple[int, ...] = (160, 176, 192, 208, 224)
    """In-plane matrix sizes to draw from (field of view = size x 1.25 mm)."""
    grid_mm: float = GRID_MM


@dataclass
class Case:
    image: torch.Tensor
    """(z, y, x) float32, arbitrary scanner units."""
    label: torch.Tensor
    """(z, y, x) bool, left atrium (LASC convention)."""
    spacing: tuple[float, float, float]
    params: dict[str, Any] = field(default_factory=dict)
    ideal: torch.Tensor | None = None
    """The noiseless, unbiased tissue signal (blood = 1), when asked for."""


def sample_body(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(LAVI mL/m2, BSA m2, height m, weight kg) as in SCIENCE.md 4c."""
    lavi = rng.uniform(16, 34) if rng.random() < 0.7 else rng.uniform(35, 60)
    bsa = rng.uniform(1.5, 2.3)
    height = rng.uniform(1.55, 1.95)
    weight = bsa ** 2 * 3600 / (height * 100)
    if not 20 <= weight <= 300:  # keep the header plausible; BSA stays exact
        weight = float(np.clip(weight, 20, 300))
        height = bsa ** 2 * 3600 / weight / 100
    return float(lavi), float(bsa), float(height), float(weight)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = (math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay),
                              math.cos(az), math.sin(az))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def frame_to(direction: np.ndarray) -> np.ndarray:
    """A rotation whose rows map world vectors into a frame with local z = ``direction``."""
    z = direction / np.linalg.norm(direction)
    helper = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


Block = tuple[slice, slice, slice]


class Canvas:
    """Coordinates of every voxel in the heart frame, and the painting operations.

    Each primitive is evaluated only inside the voxel box of its bounding sphere
    (``extent`` mm around ``c``), so a case costs a few full-volume passes, not forty.
    """

    def __init__(self, shape: tuple[int, int, int], h: float, centre_vox: np.ndarray,
                 rot: np.ndarray, device: torch.device) -> None:
        self.h = h
        self.shape = shape
        self.device = device
        self.rot = rot
        self.centre_vox = centre_vox
        axes = [(torch.arange(n, device=device, dtype=torch.float32) - float(c)) * h
                for n, c in zip(shape, centre_vox, strict=True)]
        zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
        world = torch.stack([xx, yy, zz])  # (3, z, y, x): x, y, z components in mm
        r = torch.as_tensor(rot.T, dtype=torch.float32, device=device)  # world -> heart
        self.p = torch.einsum("ij,jzyx->izyx", r, world)
        self.image = torch.zeros(shape, device=device)

    def block(self, c: Any, extent: float | None) -> Block:
        """Voxel box holding the sphere of radius ``extent`` mm around heart point ``c``."""
        if extent is None:
            return (slice(None), slice(None), slice(None))
        world = self.rot @ np.asarray(c, dtype=float)
        idx = self.centre_vox + world[::-1] / self.h
        half = extent / self.h + 4  # room for walls grown by up to 5 mm
        return tuple(slice(max(0, math.floor(i - half)), max(0, min(n, math.ceil(i + half))))
                     for i, n in zip(idx, self.shape, strict=True))  # type: ignore[return-value]

    def _vec(self, v: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(v, dtype=np.float32), device=self.device).view(3, 1, 1, 1)

    def ellipsoid(self, c: Any, r: Any, frame: np.ndarray | None = None, pad: float = 0.0,
                  ) -> tuple[torch.Tensor, Block]:
        box = self.block(c, float(np.max(r)) + pad)
        q = self.p[(slice(None), *box)] - self._vec(c)
        if frame is not None:
            q = torch.einsum("ij,jzyx->izyx",
                             torch.as_tensor(frame, dtype=torch.float32, device=self.device), q)
        rr = self._vec(r)
        k0 = torch.linalg.vector_norm(q / rr, dim=0)
        k1 = torch.linalg.vector_norm(q / (rr * rr), dim=0).clamp_min(1e-6)
        return k0 * (k0 - 1.0) / k1, box

    def capsule(self, a: Any, b: Any, ra: float, rb: float, pad: float = 0.0,
                ) -> tuple[torch.Tensor, torch.Tensor, Block]:
        """Signed distance to a tapered capsule, the distance along it from ``a`` (mm), box."""
        a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        box = self.block((a_ + b_) / 2, float(np.linalg.norm(b_ - a_)) / 2 + max(ra, rb) + pad)
        av, bv = self._vec(a_), self._vec(b_)
        ba = bv - av
        length2 = float((ba * ba).sum())
        pa = self.p[(slice(None), *box)] - av
        t = ((pa * ba).sum(0) / length2).clamp(0.0, 1.0)
        d = torch.linalg.vector_norm(pa - ba * t, dim=0) - (ra + (rb - ra) * t)
        return d, t * math.sqrt(length2), box

    def cylinder_z(self, cx: float, cy: float, rx: float, ry: float) -> tuple[torch.Tensor, Block]:
        """Elliptic cylinder along the heart-frame z axis (approximate signed distance)."""
        qx, qy = (self.p[0] - cx) / rx, (self.p[1] - cy) / ry
        k = torch.sqrt(qx * qx + qy * qy)
        return (k - 1.0) * min(rx, ry), self.block(None, None)

    def occupancy(self, sdf: torch.Tensor) -> torch.Tensor:
        return (0.5 - sdf / self.h).clamp(0.0, 1.0)

    def paint(self, shape: tuple[torch.Tensor, Block], value: float, grow: float = 0.0) -> None:
        """Composite ``value`` over the image where the shape (grown by ``grow`` mm) is."""
        sdf, box = shape
        o = self.occupancy(sdf - grow)
        view = self.image[box]
        view.mul_(1.0 - o).add_(o * value)


def _unit(v: Any) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a / np.linalg.norm(a)


def _surface_point(radii: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Where the ray from the centre along ``direction`` leaves the ellipsoid."""
    return direction / np.linalg.norm(direction / radii)


def simulate_case(seed: int, device: torch.device | str = "cpu",
                  config: SimConfig = SimConfig(), keep_ideal: bool = False) -> Case:
    """One simulated volume with its label; deterministic for a given seed and device."""
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    h = config.grid_mm
    size = int(rng.choice(config.sizes))
    shape = (config.nz, size, size)
    lavi, bsa, height, weight = sample_body(rng)
    target_ml = lavi * bsa
    aspect = rng.uniform(0.88, 1.12, 3)
    aspect /= np.prod(aspect) ** (1 / 3)
    scale = (target_ml / ELLIPSOID_BASE_ML) ** (1 / 3)
    rl = np.array([22.0, 18.0, 25.0]) * scale * aspect
    # heart placement and orientation: varied position in the field of view
    centre = np.array([config.nz / 2 + rng.uniform(-6, 6) / h,
                       size / 2 + rng.uniform(-15, 15) / h,
                       size / 2 + rng.uniform(-15, 15) / h])
    angles = np.radians([rng.uniform(-15, 15), rng.uniform(-15, 15), rng.uniform(-25, 25)])
    cv = Canvas(shape, h, centre, rotation(*angles), device)
    u = rng.uniform

    myo = u(0.20, 0.30)
    fat = u(1.0, 1.25)
    blood = 1.0
    body_val, lung_val, liver_val = u(0.25, 0.31), u(0.04, 0.09), u(0.30, 0.38)

    # body, subcutaneous fat, lungs, spine, liver
    spine_y = rl[1] + u(35, 45)
    anterior, posterior = u(110, 125), spine_y + u(55, 75)
    bcx, bcy = u(-10, 10), (posterior - anterior) / 2
    brx, bry = u(140, 175), (posterior + anterior) / 2
    fat_t = u(5, 20)
    cv.paint(cv.cylinder_z(bcx, bcy, brx, bry), fat)
    cv.paint(cv.cylinder_z(bcx, bcy, brx - fat_t, bry - fat_t), body_val)
    for side in (-1, 1):
        cv.paint(cv.ellipsoid([side * u(65, 80), bcy + u(0, 15), u(-10, 20)],
                              [u(50, 62), u(65, 80), u(95, 120)]), lung_val)
    cv.paint(cv.cylinder_z(bcx + u(-5, 5), spine_y, u(17, 22), u(15, 19)), u(0.28, 0.36))
    cv.paint(cv.cylinder_z(bcx, spine_y + u(24, 28), 7.0, 6.0), u(0.8, 1.0))
    cv.paint(cv.ellipsoid([-u(30, 50), -u(20, 40), -u(85, 100)], [u(85, 100), u(70, 85),
                                                                   u(55, 65)]), liver_val)

    # ventricles (oblique long axis towards the apex: left, anterior, inferior)
    axis = _unit([u(0.45, 0.65), -u(0.55, 0.75), -u(0.35, 0.6)])
    lv_frame = frame_to(axis)
    lv_cav = np.array([u(22, 28), u(22, 28), u(40, 50)])
    lv_wall = u(8, 11)
    lv_c = np.array([u(12, 22), -(rl[1] + u(28, 36)), -(0.5 * rl[2] + u(14, 22))]) \
        + axis * (lv_cav[2] * 0.4)
    rv_c = lv_c + np.array([-u(30, 38), -u(14, 22), u(-5, 5)])
    rv_cav = np.array([u(18, 24), u(26, 34), u(40, 48)])
    epicardial = u(2, 6)  # fat around the ventricles, thicker in the grooves
    cv.paint(cv.ellipsoid(rv_c, rv_cav, lv_frame, pad=10), fat, grow=4 + epicardial)
    cv.paint(cv.ellipsoid(lv_c, lv_cav, lv_frame, pad=17), fat, grow=lv_wall + epicardial)
    cv.paint(cv.ellipsoid(rv_c, rv_cav + u(3, 4), lv_frame), myo)
    cv.paint(cv.ellipsoid(rv_c, rv_cav, lv_frame), blood * u(0.95, 1.02))
    cv.paint(cv.ellipsoid(lv_c, lv_cav, lv_frame, pad=11), myo, grow=lv_wall)
    cv.paint(cv.ellipsoid(lv_c, lv_cav, lv_frame), blood)

    # great vessels
    r_da = u(10, 14)
    da_x, da_y = u(12, 28), rl[1] + 3.5 + r_da + u(2, 6)
    arch_z = rl[2] + u(22, 32)
    r_aa = u(13, 17)
    aa_root = np.array([u(-8, 2), -(rl[1] + u(12, 20)), -u(5, 15)])
    aa_top = np.array([u(-12, -2), -(rl[1] + u(5, 12)), arch_z])
    pa_root = aa_root + np.array([u(18, 26), -u(12, 18), u(0, 8)])
    pa_top = np.array([u(8, 16), -u(0, 8), rl[2] + u(10, 16)])
    r_pa = u(12, 15)
    rpa_end = np.array([-u(55, 70), u(0, 10), pa_top[2] - u(0, 4)])
    ra_c = np.array([-(rl[0] + u(20, 28)), -u(5, 15), -u(0, 10)])
    ra_r = np.array([u(20, 25), u(18, 22), u(22, 28)])
    for a, b, r0, r1 in ((aa_root, aa_top, r_aa, r_aa), (aa_top, [da_x, da_y, arch_z],
                                                          r_aa * 0.9, r_da),
                         ([da_x, da_y, arch_z], [da_x, da_y, -160.0], r_da, r_da),
                         (pa_root, pa_top, r_pa, r_pa), (pa_top, rpa_end, 0.8 * r_pa, 8.0),
                         (ra_c, ra_c + [0, 0, 90], u(9, 11), u(9, 11)),
                         (ra_c, ra_c + [u(-5, 5), u(0, 8), -90], u(11, 13), u(11, 13))):
        d, _, box = cv.capsule(a, b, r0, r1)
        cv.paint((d, box), myo, grow=2.0)
        cv.paint((d, box), blood * u(0.95, 1.02))
    cv.paint(cv.ellipsoid(ra_c, ra_r + 2.0), myo)
    cv.paint(cv.ellipsoid(ra_c, ra_r), blood * u(0.95, 1.02))

    # left atrium: wall, then pulmonary veins, appendage and body (labelled parts last)
    wall = u(2, 3)
    veins = []
    for sx, sz in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        direction = _unit([sx * u(0.5, 0.8), u(0.5, 0.8), sz * u(0.2, 0.45)])
        ostium = _surface_point(rl, direction)
        out = _unit(direction + np.array([sx * u(0.3, 0.7), u(0.0, 0.4), sz * u(0, 0.2)]))
        diam, length = u(10, 16), u(10, 25)
        start = ostium - 4.0 * direction
        veins.append((start, ostium + out * length, diam / 2, diam / 2 * u(0.7, 0.9),
                      4.0 + PV_LABEL_MM))
    direction = _unit([u(0.6, 0.8), -u(0.5, 0.7), u(0.2, 0.5)])
    ostium = _surface_point(rl, direction)
    out = _unit(direction + np.array([u(0, 0.3), -u(0.3, 0.6), -u(0.3, 0.6)]))
    laa = (ostium - 4.0 * direction, ostium + out * u(20, 35), u(5, 8), u(2, 3),
           4.0 + LAA_LABEL_MM)
    tubes = [(cv.capsule(a, b, r0, r1), keep) for a, b, r0, r1, keep in (*veins, laa)]
    body = cv.ellipsoid([0, 0, 0], rl)
    cv.paint(body, myo, grow=wall)
    for (d, _, box), _ in tubes:
        cv.paint((d, box), myo, grow=1.5)
    label = torch.zeros(shape, dtype=torch.bool, device=device)
    label[body[1]] |= body[0] < 0
    for (d, t, box), keep in tubes:
        cv.paint((d, box), blood)
        label[box] |= (d < 0) & (t <= keep)
    cv.paint(body, blood)

    image = _acquire(cv.image, rng, device, seed)
    params = {"seed": seed, "lavi_ml_m2": lavi, "bsa_m2": bsa, "height_m": height,
              "weight_kg": weight, "target_la_ml": target_ml,
              "ellipsoid_ml": 4 / 3 * math.pi * float(np.prod(rl)) / 1000,
              "label_ml": float(label.sum()) * h ** 3 / 1000, "size": size,
              "angles_deg": [float(a) for a in np.degrees(angles)]}
    return Case(image, label, (h, h, h), params, cv.image.clone() if keep_ideal else None)


def _smooth_field(shape: tuple[int, int, int], rng: np.random.Generator,
                  device: torch.device) -> torch.Tensor:
    coarse = torch.as_tensor(rng.standard_normal((1, 1, 3, 3, 3)), dtype=torch.float32,
                             device=device)
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0]
    return field / field.abs().max().clamp_min(1e-6)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-2, 3, device=x.device, dtype=torch.float32)
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    w = w / w.sum()
    v = x[None, None]
    v = F.conv3d(F.pad(v, (0, 0, 0, 0, 2, 2), mode="replicate"), w.view(1, 1, 5, 1, 1))
    v = F.conv3d(F.pad(v, (0, 0, 2, 2, 0, 0), mode="replicate"), w.view(1, 1, 1, 5, 1))
    v = F.conv3d(F.pad(v, (2, 2, 0, 0, 0, 0), mode="replicate"), w.view(1, 1, 1, 1, 5))
    return v[0, 0]


def _acquire(ideal: torch.Tensor, rng: np.random.Generator, device: torch.device,
             seed: int) -> torch.Tensor:
    """Blur, coil bias, optional ghost, Rician noise, arbitrary scanner scale."""
    img = _blur(ideal, 0.5)
    bias = 1.0 + rng.uniform(0.2, 0.4) * _smooth_field(tuple(img.shape), rng, device)
    img = img * bias
    if rng.random() < 0.3:  # respiratory ghost along the phase-encoding (y) axis
        img = img + rng.uniform(0.05, 0.10) * torch.roll(img, int(img.shape[1] // 2), dims=1)
    sigma = 1.0 / rng.uniform(15, 40)  # blood = 1.0 before bias
    gen = torch.Generator(device=device).manual_seed(seed)
    n1 = torch.randn(img.shape, generator=gen, device=device) * sigma
    n2 = torch.randn(img.shape, generator=gen, device=device) * sigma
    img = torch.sqrt((img + n1) ** 2 + n2 ** 2)
    return img * float(rng.uniform(300, 3000))
