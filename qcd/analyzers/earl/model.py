"""The two EARL CNNs (stage 1 clinical vs EARL, stage 2 EARL1 vs EARL2).

``PaperNet`` follows the seed paper (one conv block of 8 filters, kernel 3, stride 2,
LeakyReLU 0.2, dropout 0.6, dense 8, dense 2). ``EdgeNet`` is qcd's default: three
strided conv blocks and global average pooling, i.e. statistics of the edge texture
(noise and resolution) that do not depend on where anatomy lies in the slice, with
~15k instead of ~1M parameters. Both take (N, 1, 300, 200) and return 2 logits.

``EdgeNet`` options, recorded in the bundle's ``input``: ``voxel_input`` (the input has
two more constant planes carrying the original voxel size, which go to the head beside
the texture statistics; :func:`qcd.analyzers.earl.preprocess.voxel_channels`) and
``aux`` (three more outputs after the logits: the reconstruction's effective FWHM,
overshoot and log noise COV, normalised by :data:`AUX_TARGETS`, regressed in training
where the simulation knows them: the classes differ by a fraction of a millimetre of
resolution, which a class loss alone teaches poorly). Consumers read the class from
``logits[:, :2]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qcd.analyzers.earl.preprocess import SLICE_SHAPE


class PaperNet(nn.Module):
    channels_last_ok = False  # float32 like EdgeNet

    def __init__(self, shape: tuple[int, int] = SLICE_SHAPE) -> None:
        super().__init__()
        h, w = (shape[0] + 1) // 2, (shape[1] + 1) // 2
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1),
                                      nn.LeakyReLU(0.2), nn.Dropout(0.6))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * h * w, 8), nn.LeakyReLU(0.2),
                                  nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


N_CLASSES = 2
AUX_TARGETS: dict[str, tuple[float, float]] = {
    "fwhm_mm": (6.5, 2.0), "overshoot": (0.25, 0.15), "log_cov": (math.log(0.08), 0.6)}
"""Auxiliary target -> (centre, scale): the net regresses (value - centre) / scale."""


def aux_targets(fwhm_mm: float, overshoot: float, cov: float) -> list[float]:
    """Normalised auxiliary targets of one reconstruction, in :data:`AUX_TARGETS` order."""
    raw = {"fwhm_mm": fwhm_mm, "overshoot": overshoot, "log_cov": math.log(max(cov, 1e-3))}
    return [(raw[k] - c) / s for k, (c, s) in AUX_TARGETS.items()]


def aux_estimates(outputs: torch.Tensor) -> dict[str, float] | None:
    """(n_slices, 2 + 3) outputs -> mean estimates in physical units; None without aux."""
    if outputs.shape[-1] < N_CLASSES + len(AUX_TARGETS):
        return None
    mean = outputs[:, N_CLASSES:N_CLASSES + len(AUX_TARGETS)].float().mean(dim=0)
    values = {k: float(mean[i]) * s + c for i, (k, (c, s)) in enumerate(AUX_TARGETS.items())}
    return {"fwhm_mm": values["fwhm_mm"], "overshoot": values["overshoot"],
            "cov": math.exp(values["log_cov"])}


class EdgeNet(nn.Module):
    channels_last_ok = False
    """The batching predictor keeps this net in NCHW on CUDA: it runs in float32 with
    TF32 off, where cuDNN's NHWC kernels were slower (H100, batch-1 1384 against 2686
    slices/s, batched 18715 against 27508; two runs on two lent machines)."""

    def __init__(self, width: int = 16, voxel_input: bool = False, aux: bool = False) -> None:
        super().__init__()
        self.voxel_input, self.aux = voxel_input, aux
        layers: list[nn.Module] = []
        channels = [1, width, 2 * width, 2 * width]
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Dropout(0.3), nn.Linear(4 * channels[-1] + 2 * int(voxel_input),
                                       N_CLASSES + len(AUX_TARGETS) * int(aux)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Always float32, even under autocast: the signal is the fine noise texture of
        # the edge image, and half precision (fp16 or bf16) rounds it away. Measured:
        # fp16 autocast on an H200 moved case probabilities by up to 0.68 and flipped
        # 29 of 270 decisions; bf16 on CPU shifted logits by ~1.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            f = self.features(x[:, :1])
            stats = torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3)),
                               f.abs().mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
            if self.voxel_input:
                stats = torch.cat([stats, x[:, 1:3, 0, 0]], dim=1)
            return self.head(stats)


ARCHITECTURES: dict[str, type[nn.Module]] = {"paper": PaperNet, "edgenet": EdgeNet}


class EarlModel(nn.Module):
    """Both stages in one module so that one weights file (one checksum) holds them."""

    def __init__(self, architecture: str = "edgenet", voxel_input: bool = False,
                 aux: bool = False) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; "
                             f"valid: {', '.join(ARCHITECTURES)}")
        if architecture != "edgenet" and (voxel_input or aux):
            raise ValueError("voxel_input and aux are EdgeNet options")
        options = {"voxel_input": voxel_input, "aux": aux} if architecture == "edgenet" else {}
        self.stage1 = ARCHITECTURES[architecture](**options)
        self.stage2 = ARCHITECTURES[architecture](**options)
