"""The two EARL CNNs (stage 1 clinical vs EARL, stage 2 EARL1 vs EARL2).

``PaperNet`` follows the seed paper (one conv block of 8 filters, kernel 3, stride 2,
LeakyReLU 0.2, dropout 0.6, dense 8, dense 2). ``EdgeNet`` is qcd's default: three
strided conv blocks and global average pooling, i.e. statistics of the edge texture
(noise and resolution) that do not depend on where anatomy lies in the slice, with
~15k instead of ~1M parameters. Both take (N, 1, 300, 200) and return 2 logits.
"""

from __future__ import annotations

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


class EdgeNet(nn.Module):
    channels_last_ok = False
    """The batching predictor keeps this net in NCHW on CUDA: it runs in float32 with
    TF32 off, where cuDNN's NHWC kernels were slower (H100, batch-1 1384 against 2686
    slices/s, batched 18715 against 27508; two runs on two lent machines)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [1, width, 2 * width, 2 * width]
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(4 * channels[-1], 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Always float32, even under autocast: the signal is the fine noise texture of
        # the edge image, and half precision (fp16 or bf16) rounds it away. Measured:
        # fp16 autocast on an H200 moved case probabilities by up to 0.68 and flipped
        # 29 of 270 decisions; bf16 on CPU shifted logits by ~1.
        with torch.autocast(device_type=x.device.type, enabled=False):
            f = self.features(x.float())
            stats = torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3)),
                               f.abs().mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
            return self.head(stats)


ARCHITECTURES: dict[str, type[nn.Module]] = {"paper": PaperNet, "edgenet": EdgeNet}


class EarlModel(nn.Module):
    """Both stages in one module so that one weights file (one checksum) holds them."""

    def __init__(self, architecture: str = "edgenet") -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; "
                             f"valid: {', '.join(ARCHITECTURES)}")
        self.stage1 = ARCHITECTURES[architecture]()
        self.stage2 = ARCHITECTURES[architecture]()
