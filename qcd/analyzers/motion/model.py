"""Per-slice 2D CNN with an ordinal (cumulative binary) head for motion grades 1-5.

The net maps one preprocessed axial slice (1, 192, 192) to K-1 = 4 logits, logit k
being P(grade > k+1) (Frank & Hall / Niu et al. 2016 ordinal decomposition, trained
with binary cross-entropy on the targets [g > 1, g > 2, g > 3, g > 4]). A scan's
cumulative probabilities are the mean of its slices' (the seed paper averages slice
results too); :func:`decode` turns them into class probabilities and a grade. The
body follows the seed's small per-slice CNN (Walle et al. 2023: 3x3 convolutions of
16 filters, max-pooling, global pooling, dense 32) with batch norm, a little wider,
and global average *and* max pooling (streaks are sparse, a max keeps them).

With ``motion_head`` the net has one more output: the logarithm of the motion magnitude,
log(max(M, 8 um) / 100 um), regressed on the simulation's known M. The continuous
target teaches the ordering inside and across grade bands that the four binary targets
only see at the cut points; the scan's mean gives the quantitative motion estimate.
"""

from __future__ import annotations

import torch
from torch import nn

N_GRADES = 5
N_ORDINAL = N_GRADES - 1
MOTION_FLOOR_UM = 8.0
"""Magnitudes below this (1/8 voxel) regress to it: the log target needs a floor."""
MOTION_SCALE_UM = 100.0


class MotionNet(nn.Module):
    def __init__(self, width: int = 16, motion_head: bool = False) -> None:
        super().__init__()
        self.motion_head = motion_head
        chans = [1, width, 2 * width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(0.1)]
            if i < len(chans) - 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * chans[-1], 32), nn.ReLU(),
                                  nn.Linear(32, N_ORDINAL + int(motion_head)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


def cumulative_targets(grades: torch.Tensor) -> torch.Tensor:
    """(n,) grades 1-5 -> (n, 4) float targets [g > 1, g > 2, g > 3, g > 4]."""
    ks = torch.arange(1, N_GRADES, device=grades.device)
    return (grades[:, None] > ks[None, :]).float()


def log_motion_target(motion_um: torch.Tensor) -> torch.Tensor:
    """The regression target of the motion head for magnitudes in um."""
    return torch.log(motion_um.float().clamp_min(MOTION_FLOOR_UM) / MOTION_SCALE_UM)


def scan_motion_um(outputs: torch.Tensor) -> float | None:
    """(n_slices, 5) outputs of a net with a motion head -> the scan's magnitude estimate
    in um (geometric mean over slices); None for a net without the head."""
    if outputs.shape[-1] <= N_ORDINAL:
        return None
    return float(MOTION_SCALE_UM * torch.exp(outputs[:, N_ORDINAL].float().mean()))


def scan_cumulative(logits: torch.Tensor) -> torch.Tensor:
    """(n_slices, 4 or 5) outputs -> (4,) mean over slices of P(grade > k), made
    non-increasing (a motion-head column, if any, is ignored)."""
    p = torch.sigmoid(logits[:, :N_ORDINAL].float()).mean(dim=0)
    return torch.cummin(p, dim=0).values


def decode(cumulative: torch.Tensor) -> tuple[int, torch.Tensor, float]:
    """(4,) P(grade > k) -> (grade, (5,) class probabilities, expected grade).

    The grade is the median of the ordinal distribution: 1 + the number of
    P(grade > k) >= 0.5, so it never skips over the mass the way an arg-max can.
    """
    c = torch.cat([torch.ones(1), cumulative.float().cpu(), torch.zeros(1)])
    probs = (c[:-1] - c[1:]).clamp_min(0)
    probs = probs / probs.sum().clamp_min(1e-8)
    grade = 1 + int((cumulative >= 0.5).sum())
    expected = 1.0 + float(cumulative.clamp(0, 1).sum())
    return grade, probs, expected
