"""Physics-based simulated chest radiographs (PA/AP), vectorised in torch over a batch.

Each case is an analytic 3D thorax projected along the beam (parallel rays): for every
pixel the path length through each structure is computed in closed form (ellipsoid,
cylinder and sphere chords, tubes for ribs/clavicles/trachea), so a batch of 256
images is a few hundred tensor operations and runs on a GPU in milliseconds.

Image formation (SCIENCE.md 3d): line integral P = sum(mu_i * t_i) with linear
attenuation at ~60 keV (soft tissue 0.217/cm, lung 0.053/cm, bone 0.604/cm, air 0,
scaled by +-8% for kVp), primary I = exp(-P), scatter = k * blur(I) with k drawn so
the scatter-to-primary ratio is ~0.3-1 in the lungs and rises to ~3 behind the
mediastinum, Poisson (Gaussian-approximated) quantum noise, then log, a random
window/gamma/edge-enhancement as X-ray processing does, giving display values in
[0, 1] (MONOCHROME2 polarity). Patient size, habitus, inspiration, position, rotation,
PA/AP (40% AP: magnified heart, shallower inspiration) and exposure vary per case.

Findings are drawn with the NIH marginal frequencies (``labels.NIH_PREVALENCE``,
independently; ``floor`` raises rare labels for training) and rendered by their
radiological sign:

* Cardiomegaly: heart widened to a cardiothoracic ratio 0.53-0.66 (normal 0.38-0.48).
* Effusion: fluid replacing lung at the base with a meniscus rising laterally,
  blunting the costophrenic angle (uni- or bilateral).
* Pneumothorax: lung collapsed 15-50% towards the hilum; the rim is air without lung
  markings, bounded by a thin visceral pleural line.
* Nodule: 1-3 soft-tissue spheres of 10-30 mm; Mass: a lobulated lesion of 32-70 mm.
* Consolidation: lobar opacity with one sharp fissure border and air bronchograms.
* Pneumonia: segmental ill-defined round consolidation with air bronchograms.
* Infiltration: several small patchy ill-defined densities.
* Atelectasis: volume loss (hemidiaphragm raised, mediastinum shifted towards it) and
  a plate-like basal density.
* Edema: bilateral perihilar "bat-wing" haze and Kerley B lines at the bases.
* Emphysema: lung density 0.45-0.7 of normal, taller lungs, flat low diaphragm,
  sparse peripheral markings, apical bullae.
* Fibrosis: basal peripheral reticular (net-like) texture and volume loss.
* Pleural thickening: 4-12 mm lumpy soft-tissue rim along the lateral wall (+apex).
* Hernia: retrocardiac round air-fluid bubble with a flat fluid level.
* COVID-19: bilateral peripheral lower-zone patchy ground glass (mu +10-30% of soft tissue).
* Tuberculosis: upper-zone cavitating nodules (air inside a soft-tissue wall) with
  patchy apical consolidation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qcd.analyzers.chest.labels import LABELS, NIH_PREVALENCE

MU_PER_MM = {"soft": 0.0217, "water": 0.0206, "lung": 0.0053, "bone": 0.0604, "air": 0.0}
"""Linear attenuation at ~60 keV (per mm; SCIENCE.md 3d table, per cm / 10)."""
FIELD_MM = 430.0
"""Detector height (a 43 cm cassette)."""
AP_FRACTION = 0.4
"""Share of AP views (NIH: 44,810 AP of 112,120)."""
IDX = {label: i for i, label in enumerate(LABELS)}


@dataclass
class SimBatch:
    """A simulated batch: display images, labels and the geometry used (for tests)."""

    display: torch.Tensor
    """(B, H, W) display values in [0, 1], MONOCHROME2 polarity."""
    labels: torch.Tensor
    """(B, 16) float 0/1 in :data:`LABELS` order."""
    maps: dict[str, torch.Tensor]
    """(B, H, W) path-length maps in mm: heart, lung, aerated, opacity, fluid, bone."""
    params: dict[str, torch.Tensor]
    """(B,) per-case parameters: ctr, ap, pixel_mm, effusion_side, ..."""
    pixel_mm: float


def prevalence(floor: float = 0.0) -> torch.Tensor:
    """Per-label probability: the NIH marginals, rare labels raised to ``floor``."""
    return torch.tensor([max(NIH_PREVALENCE[label], floor) for label in LABELS])


def sample_labels(n: int, gen: torch.Generator, floor: float = 0.0,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, 16) independent Bernoulli labels with :func:`prevalence`."""
    p = prevalence(floor).to(device)
    return (torch.rand(n, len(LABELS), generator=gen, device=device) < p).float()


class _Rng:
    """Per-case random draws as (B, 1, 1) tensors that broadcast over the image."""

    def __init__(self, n: int, gen: torch.Generator, device: torch.device) -> None:
        self.n, self.gen, self.device = n, gen, device

    def u(self, lo: float, hi: float) -> torch.Tensor:
        r = torch.rand(self.n, 1, 1, generator=self.gen, device=self.device)
        return lo + (hi - lo) * r

    def normal(self, sd: float) -> torch.Tensor:
        return sd * torch.randn(self.n, 1, 1, generator=self.gen, device=self.device)

    def side(self) -> torch.Tensor:
        """-1 (patient's right, image left) or +1 (patient's left, image right)."""
        return torch.where(self.u(0, 1) < 0.5, -1.0, 1.0)

    def coin(self, p: float) -> torch.Tensor:
        return (self.u(0, 1) < p).float()

    def noise(self, *shape: int) -> torch.Tensor:
        return torch.randn(self.n, *shape, generator=self.gen, device=self.device)


def _gauss_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) (or (B, C, H, W)) with reflected borders."""
    squeeze = x.ndim == 3
    y = x.unsqueeze(1) if squeeze else x
    c = y.shape[1]
    k = _gauss_kernel(sigma, x.device)
    r = (len(k) - 1) // 2
    r_h, r_w = min(r, y.shape[-2] - 1), min(r, y.shape[-1] - 1)
    k_h, k_w = k[r - r_h:r + r_h + 1], k[r - r_w:r + r_w + 1]
    y = F.pad(y, (0, 0, r_h, r_h), mode="reflect")
    y = F.conv2d(y, (k_h / k_h.sum()).view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(),
                 groups=c)
    y = F.pad(y, (r_w, r_w, 0, 0), mode="reflect")
    y = F.conv2d(y, (k_w / k_w.sum()).view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(),
                 groups=c)
    return y[:, 0] if squeeze else y


def _chord(r2: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """Chord through a circle of squared radius r2 at squared distance d2 from its centre."""
    return 2.0 * torch.sqrt(torch.relu(r2 - d2))


def _sphere(x: torch.Tensor, y: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
            r: torch.Tensor) -> torch.Tensor:
    return _chord(r * r, (x - x0) ** 2 + (y - y0) ** 2)


def _tube(x: torch.Tensor, y: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
          x1: torch.Tensor, y1: torch.Tensor, r: float | torch.Tensor) -> torch.Tensor:
    """Path length through a cylinder of radius r lying in the detector plane (segment)."""
    dx, dy = x1 - x0, y1 - y0
    t = (((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-6)).clamp(0, 1)
    d2 = (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2
    return _chord(torch.as_tensor(r, device=x.device) ** 2, d2)


def _blob(x: torch.Tensor, y: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
          sx: torch.Tensor | float, sy: torch.Tensor | float) -> torch.Tensor:
    return torch.exp(-0.5 * (((x - x0) / sx) ** 2 + ((y - y0) / sy) ** 2))


def _smooth(edge: torch.Tensor, width: float) -> torch.Tensor:
    return torch.sigmoid(edge / width)


@dataclass
class _Lung:
    """One lung's geometry (all (B, 1, 1)) and its rendered maps ((B, H, W))."""

    side: float
    cx: torch.Tensor
    cy: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    trunc: torch.Tensor
    """Diaphragm and mediastinum cut-off factor in [0, 1]."""
    u: torch.Tensor
    """Lateral coordinate: 0 at the lung's centre line, 1 at its lateral edge."""
    v: torch.Tensor
    """Vertical coordinate: -1 apex, 0 centre, +1 would-be bottom of the ellipsoid."""
    chord: torch.Tensor


def _lung_chord(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
                a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """AP path length through a lung: an ellipsoid widened towards its base."""
    t = (y - cy) / b
    a_eff = a * (1.0 + 0.22 * t)
    return _chord(torch.ones_like(t), ((x - cx) / a_eff) ** 2 + t * t) * c


def thoracic_half_width(cx: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Largest |x| of the lung outline (for the CTR), maximised over height."""
    t = torch.linspace(-1, 0.6, 161, device=a.device).view(1, 1, -1)
    return (cx.abs() + a * (1 + 0.22 * t) * torch.sqrt(1 - t * t)).amax(dim=-1, keepdim=True)


def simulate(labels: torch.Tensor, gen: torch.Generator, shape: tuple[int, int] = (320, 320),
             pixel_mm: float | None = None) -> SimBatch:
    """Render one simulated radiograph per row of ``labels`` ((B, 16) 0/1) on its device."""
    device = labels.device
    n = labels.shape[0]
    h, w = shape
    pixel_mm = pixel_mm or FIELD_MM / max(h, w)
    rng = _Rng(n, gen, device)
    lab = {name: labels[:, i].view(n, 1, 1) for name, i in IDX.items()}
    mu_s, mu_l, mu_b = MU_PER_MM["soft"], MU_PER_MM["lung"], MU_PER_MM["bone"]

    # --- detector grid and patient pose ------------------------------------------------
    ys = (torch.arange(h, device=device, dtype=torch.float32) - (h - 1) / 2) * pixel_mm
    xs = (torch.arange(w, device=device, dtype=torch.float32) - (w - 1) / 2) * pixel_mm
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    rot = rng.u(-4, 4) * math.pi / 180
    X = torch.cos(rot) * gx + torch.sin(rot) * gy - rng.normal(8.0)
    Y = -torch.sin(rot) * gx + torch.cos(rot) * gy - rng.normal(10.0) - 5.0

    # --- anatomy parameters (every case draws every parameter: labels don't shift RNG) --
    ap = rng.coin(AP_FRACTION)
    s = rng.u(0.86, 1.12)
    insp = rng.u(0.92, 1.06) * (1 - 0.05 * ap)
    lx, la, lc = 74 * s, 64 * s * rng.u(0.94, 1.06), 85 * s
    lb = 160 * s * insp
    emph_rho = rng.u(0.45, 0.7)
    lb = lb * torch.where(lab["Emphysema"] > 0, rng.u(1.08, 1.16), torch.ones_like(lb))
    lb = lb * torch.where(lab["Fibrosis"] > 0, rng.u(0.88, 0.95), torch.ones_like(lb))
    cy = -10.0 + rng.normal(6.0) - 0.5 * (lb - 160 * s)
    dome = 22 * s * torch.where(lab["Emphysema"] > 0, rng.u(0.2, 0.5), torch.ones_like(s))
    base = cy + 0.52 * lb
    atel_side, atel_elev, atel_shift = rng.side(), rng.u(10, 28), rng.u(3, 10)
    d_right = base - rng.u(5, 25) - atel_elev * lab["Atelectasis"] * (atel_side < 0)
    d_left = base - atel_elev * lab["Atelectasis"] * (atel_side > 0)
    x_med = atel_side * atel_shift * lab["Atelectasis"] + rng.normal(3.0)

    # --- body, mediastinum, heart --------------------------------------------------------
    body_w = (lx + la * 1.2 + rng.u(15, 45)) * torch.ones_like(s)
    body_d = 112 * s * rng.u(0.85, 1.2)
    shoulder = cy - lb - 25
    half_w = body_w - (body_w - 60 * s) * _smooth(shoulder - Y, 10.0)
    t_body = _chord(half_w ** 2, X ** 2) * body_d / half_w.clamp(min=1.0)

    thorax = thoracic_half_width(lx, la)  # outer lung edge (both sides symmetric)
    ctr = torch.where(lab["Cardiomegaly"] > 0, rng.u(0.53, 0.66), rng.u(0.38, 0.48))
    ctr = torch.where((lab["Emphysema"] > 0) & (lab["Cardiomegaly"] < 1),
                      rng.u(0.34, 0.42), ctr)
    ctr = ctr * torch.where(ap > 0, rng.u(1.0, 1.06), torch.ones_like(ctr)).clamp(max=1.0)
    ctr = torch.where(lab["Cardiomegaly"] > 0, ctr, ctr.clamp(max=0.485))
    heart_w = ctr * 2 * thorax
    phi = rng.u(25, 45) * math.pi / 180
    ratio = rng.u(0.72, 0.85)
    a_h = (heart_w / 2) / torch.sqrt(torch.cos(phi) ** 2 + (ratio * torch.sin(phi)) ** 2)
    b_h = ratio * a_h
    v_half = torch.sqrt((a_h * torch.sin(phi)) ** 2 + (b_h * torch.cos(phi)) ** 2)
    hx = x_med + heart_w * rng.u(0.12, 0.2)
    hy = d_left - dome * 0.6 - v_half * 0.85
    hu = (X - hx) * torch.cos(phi) + (Y - hy) * torch.sin(phi)
    hv = -(X - hx) * torch.sin(phi) + (Y - hy) * torch.cos(phi)
    heart = _chord(torch.ones_like(hu), (hu / a_h) ** 2 + (hv / b_h) ** 2) * 58 * s

    knob_y = cy - 0.45 * lb
    med_r = 24 * s + 6 * _smooth(Y - (cy - 0.1 * lb), 15.0)
    med_l = 24 * s + 16 * s * torch.exp(-0.5 * ((Y - knob_y) / 14) ** 2)

    # --- lungs -----------------------------------------------------------------------------
    lungs: list[_Lung] = []
    for side, dpk in ((-1.0, d_right), (1.0, d_left)):
        cx = side * lx + x_med * 0.3
        x_pk = cx - side * 0.15 * la
        diaphragm = dpk + dome * ((X - x_pk) / (la * 1.15)) ** 2
        med = med_r if side < 0 else med_l
        trunc = (((diaphragm - Y) / 14).clamp(0, 1) ** 0.6
                 * _smooth(side * (X - x_med) - med, 3.0))
        chord = _lung_chord(X, Y, cx, cy, la, lb, lc) * trunc
        u = side * (X - cx) / (la * (1 + 0.22 * (Y - cy) / lb))
        lungs.append(_Lung(side, cx, cy, la, lb, lc, trunc, u, (Y - cy) / lb, chord))

    opac = torch.zeros_like(X)  # mm of lung replaced by soft tissue / fluid
    fluid = torch.zeros_like(X)  # of which pleural fluid (for tests)
    lung_air = torch.zeros_like(X)  # mm of lung replaced by air
    air = torch.zeros_like(X)  # mm of soft tissue replaced by air
    markings = torch.ones_like(X)  # scale of vessel markings

    def in_lung(side: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor]:
        """A point at lateral fraction u and height v of the lung on ``side``."""
        t = v
        return (side * lx + x_med * 0.3 + side * u * la * (1 + 0.22 * t) * torch.sqrt(
            (1 - t * t).clamp(min=0.05)), cy + t * lb)

    def side_chord(side: torch.Tensor) -> torch.Tensor:
        return torch.where(side < 0, lungs[0].chord, lungs[1].chord)

    def side_u(side: torch.Tensor) -> torch.Tensor:
        return torch.where(side < 0, lungs[0].u, lungs[1].u)

    lung_total = lungs[0].chord + lungs[1].chord

    # Pneumothorax: lung shrunk towards its hilum; the rim is air, no markings, pleural line.
    ptx_side, ptx_k = rng.side(), 1 - rng.u(0.15, 0.5)
    ax_ptx = ptx_side * (lx - 0.55 * la) + x_med * 0.3
    ay_ptx = cy + 0.3 * lb
    Xc, Yc = ax_ptx + (X - ax_ptx) / ptx_k, ay_ptx + (Y - ay_ptx) / ptx_k
    Xl, Yl = ax_ptx + (X - ax_ptx) / (ptx_k - 1.2 / la), ay_ptx + (Y - ay_ptx) / (
        ptx_k - 1.2 / la)
    cx_ptx = ptx_side * lx + x_med * 0.3
    trunc_ptx = torch.where(ptx_side < 0, lungs[0].trunc, lungs[1].trunc)
    collapsed = _lung_chord(Xc, Yc, cx_ptx, cy, la, lb, lc) * ptx_k * trunc_ptx
    inner = _lung_chord(Xl, Yl, cx_ptx, cy, la, lb, lc) * ptx_k * trunc_ptx
    whole = side_chord(ptx_side)
    collapsed = torch.minimum(collapsed, whole)
    rim = (whole - collapsed) * lab["Pneumothorax"]
    lung_air = lung_air + rim
    opac = opac + (collapsed - torch.minimum(inner, collapsed)).clamp(max=8.0) * lab[
        "Pneumothorax"] * rng.u(0.6, 1.0)
    markings = markings * (1 - lab["Pneumothorax"] * (rim / whole.clamp(min=1e-3)).clamp(0, 1))

    # Emphysema: lower lung density, fewer peripheral markings, apical bullae.
    rho = torch.where(lab["Emphysema"] > 0, emph_rho, torch.ones_like(emph_rho))
    periph = torch.maximum(lungs[0].u, lungs[1].u).clamp(0, 1)
    markings = markings * (1 - lab["Emphysema"] * 0.6 * periph)
    for _ in range(2):
        bx, by = in_lung(rng.side(), rng.u(0.1, 0.7), rng.u(-0.8, -0.3))
        bulla = _sphere(X, Y, bx, by, rng.u(14, 30)) * rng.coin(0.7)
        lung_air = lung_air + bulla * lab["Emphysema"]

    # Effusion: basal fluid with a meniscus rising laterally (blunted costophrenic angle).
    eff_bilateral = rng.coin(0.3)
    eff_side = rng.side()
    for lung in lungs:
        on = torch.maximum(eff_bilateral, (eff_side == lung.side).float()) * lab["Effusion"]
        y_cp = torch.where(torch.as_tensor(lung.side < 0), d_right, d_left) + dome
        surface = y_cp - rng.u(18, 75) - rng.u(10, 28) * lung.u.clamp(0, 1.2) ** 2
        layer = _smooth(Y - surface, 4.0) * rng.u(0.85, 0.98)
        f = lung.chord * layer * on
        fluid, opac = fluid + f, opac + f
        markings = markings * (1 - layer * on)

    # Pleural thickening: lumpy rim along the lateral wall, sometimes an apical cap.
    pt_side, pt_bilat = rng.side(), rng.coin(0.35)
    for lung in lungs:
        on = torch.maximum(pt_bilat, (pt_side == lung.side).float()) * lab[
            "Pleural thickening"]
        t = rng.u(4, 12) * (0.55 + 0.45 * torch.sin(Y / rng.u(12, 30) + rng.u(0, 6.28)))
        t = t * _smooth(Y - (lung.cy - 0.7 * lung.b), 10.0) + rng.coin(0.5) * rng.u(
            4, 12) * _smooth((lung.cy - 0.6 * lung.b) - Y, 10.0)
        thin = _lung_chord(X - lung.side * t * (lung.u > 0).float(), Y - t * (
            lung.v < -0.6).float(), lung.cx, lung.cy, lung.a - t, lung.b - t * 0.5, lung.c)
        opac = opac + torch.relu(lung.chord - thin * lung.trunc) * on

    # Nodules (<= 30 mm) and masses (> 30 mm).
    for k in range(3):
        nx, ny = in_lung(rng.side(), rng.u(0.0, 0.85), rng.u(-0.75, 0.4))
        present = torch.ones_like(s) if k == 0 else rng.coin(0.5 if k == 1 else 0.25)
        opac = opac + _sphere(X, Y, nx, ny, rng.u(5, 15)) * present * lab["Nodule"]
    mx, my = in_lung(rng.side(), rng.u(0.0, 0.7), rng.u(-0.6, 0.3))
    m_r = rng.u(16, 35)
    mass = _sphere(X, Y, mx, my, m_r)
    for _ in range(2):
        ang = rng.u(0, 6.28)
        mass = torch.maximum(mass, _sphere(X, Y, mx + 0.55 * m_r * torch.cos(ang),
                                           my + 0.55 * m_r * torch.sin(ang),
                                           m_r * rng.u(0.45, 0.7)))
    opac = opac + mass * lab["Mass"]

    # Lung markings and air bronchograms: noise on a polar grid around each hilum,
    # smooth along the radius and sharp across it, so lines radiate from the hila.
    polar = F.avg_pool2d(rng.noise(4, 96, 59), (1, 12), stride=1)  # (B, 4, 96, 48)
    polar = polar / polar.std(dim=(2, 3), keepdim=True)
    vessels = torch.zeros_like(X)
    bronch = torch.zeros_like(X)
    hila = []
    for i, lung in enumerate(lungs):
        hx_, hy_ = lung.side * 42 * s + x_med, cy - 0.05 * lb
        hila.append((hx_, hy_))
        r = torch.sqrt((X - hx_) ** 2 + (Y - hy_) ** 2)
        theta = torch.atan2(Y - hy_, lung.side * (X - hx_))
        grid = torch.stack([(r / 200.0).clamp(max=1.0) * 2 - 1, theta / math.pi], dim=-1)
        g = F.grid_sample(polar[:, 2 * i:2 * i + 2], grid, align_corners=False)
        vessels = vessels + torch.relu(g[:, 0] - 0.5) * 11.0 * torch.exp(-r / 90) * (
            lung.chord > 1).float()
        bronch = bronch + torch.exp(-(g[:, 1] / 0.12) ** 2) * torch.exp(-r / 120)
        opac = opac + 14 * s * _blob(X, Y, hx_, hy_ + 8, 10.0, 22.0) * (lung.chord > 1).float()

    # Consolidation: lobar, one sharp fissure border, air bronchograms.
    c_side = rng.side()
    zone = rng.u(0, 1)
    fiss_y = cy + torch.where(zone < 0.6, rng.u(-0.05, 0.2), rng.u(-0.45, -0.25)) * lb
    slope = rng.u(-0.25, 0.25)
    below = _smooth(Y - (fiss_y + slope * (X - c_side * lx)), 1.5)
    region = torch.where(zone < 0.6, below, 1 - below) * (side_u(c_side) > -0.9).float()
    consol = side_chord(c_side) * region * rng.u(0.75, 0.95) * (1 - 0.6 * bronch.clamp(0, 1))
    opac = opac + consol * lab["Consolidation"]

    # Pneumonia: 1-2 round ill-defined segmental consolidations, air bronchograms.
    p_side = rng.side()
    for k in range(2):
        px, py = in_lung(p_side, rng.u(0.0, 0.7), rng.u(-0.3, 0.35))
        present = torch.ones_like(s) if k == 0 else rng.coin(0.4)
        sig = rng.u(16, 30)
        patch = _blob(X, Y, px, py, sig, sig * rng.u(0.8, 1.3)) * rng.u(0.55, 0.85)
        opac = opac + side_chord(p_side) * patch.clamp(max=0.9) * (
            1 - 0.5 * bronch.clamp(0, 1)) * present * lab["Pneumonia"]

    # Infiltration: several small patchy ill-defined densities anywhere.
    fine = blur(rng.noise(h, w), 2.0)
    fine = fine / fine.std(dim=(1, 2), keepdim=True)
    for k in range(6):
        ix, iy = in_lung(rng.side(), rng.u(-0.3, 0.9), rng.u(-0.7, 0.4))
        present = torch.ones_like(s) if k < 2 else rng.coin(0.5)
        sig = rng.u(6, 14)
        patch = _blob(X, Y, ix, iy, sig, sig * rng.u(0.7, 1.4)) * rng.u(0.3, 0.55)
        opac = opac + lung_total * patch * (0.7 + 0.3 * fine).clamp(0, 1.3) * present * lab[
            "Infiltration"]

    # Atelectasis (geometry above): plus a plate-like basal band on its side.
    ax_, ay_ = in_lung(atel_side, rng.u(-0.2, 0.5), rng.u(0.15, 0.4))
    tilt = rng.u(-0.25, 0.25)
    band_v = (Y - ay_) - tilt * (X - ax_)
    plate = torch.exp(-0.5 * (band_v / rng.u(3, 6)) ** 2) * torch.exp(
        -0.5 * ((X - ax_) / rng.u(25, 45)) ** 2)
    opac = opac + side_chord(atel_side) * plate * 0.9 * lab["Atelectasis"]

    # Edema: bilateral perihilar bat-wing haze and Kerley B lines at the lateral bases.
    kerley = torch.exp(-(((torch.remainder(Y + rng.u(0, 9), 9.0) - 4.5)) / 0.9) ** 2)
    for lung, (hx_, hy_) in zip(lungs, hila, strict=True):
        wing = _blob(X, Y, hx_ + lung.side * 10, hy_, rng.u(30, 45), rng.u(40, 60))
        opac = opac + lung.chord * wing * rng.u(0.3, 0.55) * lab["Edema"]
        base_band = _smooth(lung.u - 0.72, 0.04) * _smooth(lung.v - 0.1, 0.05)
        opac = opac + 10 * kerley * base_band * (lung.chord > 2).float() * lab["Edema"]

    # Fibrosis: basal, peripheral reticular net (zero crossings of band-pass noise).
    dog = blur(rng.noise(h, w), max(0.8, 1.6 / pixel_mm))
    dog = dog - blur(dog, 3.0)
    dog = dog / dog.std(dim=(1, 2), keepdim=True)
    net = torch.exp(-(dog / 0.3) ** 2)
    for lung in lungs:
        zone_w = _smooth(lung.v + 0.1, 0.12) * _smooth(lung.u - 0.25, 0.12)
        opac = opac + lung.chord * net * zone_w * rng.u(0.25, 0.4) * lab["Fibrosis"]

    # COVID-19: bilateral peripheral lower-zone patchy ground glass.
    coarse = blur(rng.noise(h, w), 18.0 / pixel_mm)
    coarse = (coarse / coarse.std(dim=(1, 2), keepdim=True)).clamp(-2, 2) * 0.3 + 0.7
    gg = rng.u(0.10, 0.30) * mu_s / (mu_s - mu_l)  # mu +10-30% of soft tissue
    both = rng.coin(0.9)
    cov_side = rng.side()
    for lung in lungs:
        on = torch.maximum(both, (cov_side == lung.side).float()) * lab["COVID-19"]
        zone_w = _smooth(lung.u - 0.4, 0.1) * _smooth(lung.v + 0.15, 0.1)
        opac = opac + lung.chord * zone_w * coarse * gg * on

    # Tuberculosis: upper-zone cavitating nodules and patchy apical consolidation.
    tb_side, tb_bilat = rng.side(), rng.coin(0.3)
    for k in range(3):
        side_k = tb_side if k < 2 else -tb_side
        present = (torch.ones_like(s) if k == 0 else rng.coin(0.5)) * (
            1.0 if k < 2 else tb_bilat)
        cxk, cyk = in_lung(side_k, rng.u(0.0, 0.7), rng.u(-0.8, -0.45))
        r_out = rng.u(9, 18)
        r_in = r_out - rng.u(3, 6)
        shell = _sphere(X, Y, cxk, cyk, r_out)
        cav = _sphere(X, Y, cxk, cyk, r_in)
        opac = opac + (shell - cav) * present * lab["Tuberculosis"]
        lung_air = lung_air + cav * present * lab["Tuberculosis"]
        apx = _blob(X, Y, cxk, cyk - 10, rng.u(18, 30), rng.u(14, 24)) * rng.u(0.3, 0.55)
        opac = opac + side_chord(side_k) * apx * present * lab["Tuberculosis"]

    # Hernia: retrocardiac air-fluid bubble with a flat level.
    hr = rng.u(22, 40)
    hbx, hby = x_med + rng.u(5, 30), d_left - hr * 1.1
    level = hby + hr * rng.u(-0.2, 0.4)
    bubble = _sphere(X, Y, hbx, hby, hr)
    air = air + bubble * _smooth(level - Y, 1.0) * 0.8 * lab["Hernia"]

    # Airway, stomach bubble, bones.
    car_y = cy - 0.3 * lb
    tx = x_med * 0.5 + rng.normal(2.0)
    air = air + _tube(X, Y, tx, Y.new_full((1, 1, 1), -400.0), tx, car_y, 8 * s)
    for side in (-1.0, 1.0):
        air = air + _tube(X, Y, tx, car_y, tx + side * 32 * s, car_y + 28 * s, 5.5 * s)
    gastric = rng.coin(0.8)
    sx, sy = x_med + lx * rng.u(0.6, 1.1), d_left + dome + rng.u(15, 35)
    air = air + _sphere(X, Y, sx, sy, rng.u(12, 28)) * _smooth(Y - sy + 5, 2.0) * gastric

    bone = torch.zeros_like(X)
    spine_x = rng.normal(2.0)
    vert = 0.45 + 0.12 * torch.cos(2 * math.pi * (Y - rng.u(0, 26)) / 26.0) ** 8
    bone = bone + _chord((19 * s) ** 2, (X - spine_x) ** 2) * vert
    edge = lx + la * 1.12
    rib_r, spacing = 5.0 * s, (lb * 1.6) / 11.0
    first = cy - lb + 6
    ribs = torch.zeros_like(X)
    for side in (-1.0, 1.0):
        u = (side * (X - x_med * 0.3) - 12) / edge
        span = _smooth(u, 0.02) * _smooth(1.05 - u, 0.02)
        post = Y - first - edge * (0.30 * u * u - 0.05 * u)
        w_ = post / spacing
        idx = torch.round(w_)
        d = (w_ - idx) * spacing
        ribs = ribs + _chord(rib_r ** 2, d * d) * span * ((idx >= 0) & (idx < 10)).float()
        ant = Y - first - 20 - edge * 0.38 * (1 - u)
        w_ = ant / spacing
        idx = torch.round(w_)
        d = (w_ - idx) * spacing
        span_a = _smooth(u - 0.3, 0.03) * _smooth(1.02 - u, 0.02)
        ribs = ribs + 0.6 * _chord((rib_r * 0.8) ** 2, d * d) * span_a * (
            (idx >= 0) & (idx < 7)).float()
        clav_y = first - 10 - 12 * ap
        bone = bone + _tube(X, Y, x_med + side * 20, clav_y, x_med + side * 150 * s,
                            clav_y - rng.u(10, 35), 7 * s) * 0.55
    bone = bone + ribs * 0.4

    # --- vessels, totals, physics --------------------------------------------------------
    opac = opac + vessels * markings
    displaced = torch.minimum(0.8 * heart, lung_total)
    lung_eff = (lung_total - displaced).clamp(min=0)
    lung_air = torch.minimum(lung_air, lung_eff)
    opac = torch.minimum(opac, lung_eff - lung_air)
    energy = rng.u(0.92, 1.08)
    p = energy * (mu_s * (t_body - lung_eff + opac - air)
                  + mu_l * rho * (lung_eff - opac - lung_air)
                  + (mu_b - mu_s) * bone * (t_body > 0).float())
    p = p.clamp(min=0)
    primary = torch.exp(-p)
    down = 8
    coarse_p = F.avg_pool2d(primary.unsqueeze(1), down)
    sc = blur(coarse_p, 40.0 / (pixel_mm * down))
    scatter = F.interpolate(sc, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    total = primary + rng.u(0.3, 1.0) * scatter
    quanta = torch.exp(rng.u(math.log(2e4), math.log(2e6)))
    total = total + torch.sqrt(total / quanta) * torch.randn(
        total.shape, generator=gen, device=device)
    att = -torch.log(total.clamp(min=1e-5))

    # --- display processing (varies like vendors' processing does) ------------------------
    q = torch.quantile(att.flatten(1)[:, ::7], torch.tensor([0.02, 0.995], device=device),
                       dim=1).view(2, n, 1, 1)
    lo = q[0] + rng.u(-0.1, 0.1) * (q[1] - q[0])
    hi = q[1] * rng.u(0.9, 1.15)
    disp = ((att - lo) / (hi - lo)).clamp(0, 1.2)
    disp = disp ** rng.u(0.7, 1.3)
    disp = disp + rng.u(0.0, 0.6) * (disp - blur(disp, 6.0 / pixel_mm))
    disp = disp.clamp(0, 1)

    maps = {"heart": heart, "lung": lung_total, "aerated": lung_eff - opac - lung_air,
            "opacity": opac, "fluid": fluid, "bone": bone, "pneumothorax": rim}
    params = {"ctr": ctr.view(n), "ap": ap.view(n), "effusion_side": eff_side.view(n),
              "effusion_bilateral": eff_bilateral.view(n), "ptx_side": ptx_side.view(n),
              "thorax_half_width": thorax.view(n) * torch.ones(n, device=device),
              "rotation_deg": (rot * 180 / math.pi).view(n)}
    return SimBatch(disp, labels, maps, params, pixel_mm)


def make_batch(n: int, gen: torch.Generator, floor: float = 0.0,
               shape: tuple[int, int] = (320, 320),
               device: torch.device | str = "cpu") -> SimBatch:
    """Draw labels with the NIH frequencies (rare ones raised to ``floor``) and render."""
    return simulate(sample_labels(n, gen, floor, device), gen, shape)


def measure_ctr(heart: torch.Tensor, lung: torch.Tensor, pixel_mm: float) -> torch.Tensor:
    """Cardiothoracic ratio read off the maps as a radiologist would: widest horizontal
    extent of the heart shadow over widest extent of the lung fields (per case)."""
    def extent(mask: torch.Tensor) -> torch.Tensor:
        cols = mask.any(dim=1).float()  # (B, W)
        idx = torch.arange(cols.shape[1], device=cols.device).float()
        right = (cols * idx).amax(dim=1)
        left = torch.where(cols > 0, idx, torch.full_like(idx, 1e9)).amin(dim=1)
        return (right - left + 1) * pixel_mm

    return extent(heart > 1.0) / extent(lung > 1.0)
