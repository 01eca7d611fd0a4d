"""2D U-Net for the left atrium (Ronneberger et al. 2015, as in the seed).

Four down steps, a bottleneck and four up steps, each a double 3x3 convolution with
ReLU; batch norm is added after each convolution (it trains in a fraction of the
epochs on the small simulated set). Skip connections concatenate; upsampling is a 2x2
transposed convolution. ``base`` sets the width (base, 2x ... 16x at the bottleneck);
the default 16 is about 1.9 M parameters, which trains in minutes. Output: one logit
per pixel (sigmoid = P(left atrium)).
"""

from __future__ import annotations

import torch
from torch import nn


def _double(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True))


class UNet2D(nn.Module):
    """(n, in_channels, H, W) with H, W multiples of 16 -> (n, 1, H, W) logits."""

    def __init__(self, in_channels: int = 3, base: int = 16) -> None:
        super().__init__()
        widths = [base * 2 ** i for i in range(5)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:4]:
            self.down.append(_double(cin, w))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double(widths[3], widths[4])
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for w in reversed(widths[:4]):
            self.upconv.append(nn.ConvTranspose2d(2 * w, w, 2, stride=2))
            self.up.append(_double(2 * w, w))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips), strict=True):
            x = block(torch.cat([upconv(x), skip], dim=1))
        return self.head(x)
