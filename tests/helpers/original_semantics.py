"""Straightforward re-statements of the ORIGINAL 3D UX-Net and uC 3DU-Net, for tests and speed comparisons.

Written from ../shared/spec/architectures.md only, with the originals' module names (so their state dicts
carry the original keys) and their original semantics: grouped 1x1x1 DCS convs, hand-written channels-first
LayerNorm, MONAI-style blocks, uC folding the LAST spatial axis. No code from the project's networks is used,
so agreement between the two is evidence that both follow the spec. Not optimised on purpose.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Holder(nn.Module):
    """Keeps a layer under ``.conv`` (MONAI's Convolution naming)."""

    def __init__(self, conv: nn.Module, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = conv
        if norm is not None:
            self.adn = nn.ModuleDict({"N": norm})

    def forward(self, x):
        x = self.conv(x)
        return self.adn["N"](x) if hasattr(self, "adn") else x


# ---------------------------------------------------------------------------------------------- UX-Net
class LNcf(nn.Module):
    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class UxBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv3d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Conv3d(dim, 4 * dim, 1, groups=dim)
        self.pwconv2 = nn.Conv3d(4 * dim, dim, 1, groups=dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        y = self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + (self.gamma * y.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = Holder(nn.Conv3d(cin, cout, 3, padding=1, bias=False))
        self.conv2 = Holder(nn.Conv3d(cout, cout, 3, padding=1, bias=False))
        self.project = cin != cout
        if self.project:
            self.conv3 = Holder(nn.Conv3d(cin, cout, 1, bias=False))

    def forward(self, x):
        norm = lambda t: F.instance_norm(t, eps=1e-5)
        act = lambda t: F.leaky_relu(t, 0.01)
        out = norm(self.conv2(act(norm(self.conv1(x)))))
        residual = norm(self.conv3(x)) if self.project else x
        return act(out + residual)


class Layer(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.layer = block

    def forward(self, x):
        return self.layer(x)


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.transp_conv = Holder(nn.ConvTranspose3d(cin, cout, 2, stride=2, bias=False))
        self.conv_block = ResBlock(2 * cout, cout)

    def forward(self, x, skip):
        return self.conv_block(torch.cat([self.transp_conv(x), skip], 1))


class UXEncoder(nn.Module):
    def __init__(self, cin: int, depths, feat) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv3d(cin, feat[0], 7, 2, 3), LNcf(feat[0]))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(LNcf(feat[i]), nn.Conv3d(feat[i], feat[i + 1], 2, 2)))
        self.stages = nn.ModuleList(nn.Sequential(*[UxBlock(feat[i]) for _ in range(depths[i])]) for i in range(4))
        for i in range(4):
            self.add_module(f"norm{i}", LNcf(feat[i]))

    def forward(self, x):
        outs = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            outs.append(getattr(self, f"norm{i}")(x))
        return outs


class OriginalUXNet(nn.Module):
    def __init__(self, in_chans=1, out_chans=13, depths=(2, 2, 2, 2), feat_size=(48, 96, 192, 384), hidden_size=768):
        super().__init__()
        f = list(feat_size)
        self.uxnet_3d = UXEncoder(in_chans, depths, f)
        self.encoder1 = Layer(ResBlock(in_chans, f[0]))
        self.encoder2 = Layer(ResBlock(f[0], f[1]))
        self.encoder3 = Layer(ResBlock(f[1], f[2]))
        self.encoder4 = Layer(ResBlock(f[2], f[3]))
        self.encoder5 = Layer(ResBlock(f[3], hidden_size))
        self.decoder5 = UpBlock(hidden_size, f[3])
        self.decoder4 = UpBlock(f[3], f[2])
        self.decoder3 = UpBlock(f[2], f[1])
        self.decoder2 = UpBlock(f[1], f[0])
        self.decoder1 = Layer(ResBlock(f[0], f[0]))
        self.out = Holder(Holder(nn.Conv3d(f[0], out_chans, 1)))

    def forward(self, x):
        o = self.uxnet_3d(x)
        e1, e2, e3, e4 = self.encoder1(x), self.encoder2(o[0]), self.encoder3(o[1]), self.encoder4(o[2])
        d = self.decoder5(self.encoder5(o[3]), e4)
        d = self.decoder2(self.decoder3(self.decoder4(d, e3), e2), e1)
        return self.out(self.decoder1(d))


# ---------------------------------------------------------------------------------------------- uC 3DU-Net
class TwoConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_0 = Holder(nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True))
        self.conv_1 = Holder(nn.Conv3d(cout, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True))

    def forward(self, x):
        return F.leaky_relu(self.conv_1(F.leaky_relu(self.conv_0(x), 0.1)), 0.1)


class Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convs = TwoConv(cin, cout)

    def forward(self, x):
        return self.convs(F.max_pool3d(x, 2))


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(cout // 2, cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(cout // 2, cout), nn.ReLU())


class Down2d(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.AvgPool2d(2), nn.ModuleDict({"conv": double_conv(cin, cout)}))

    def forward(self, x):
        return self.down[1]["conv"](self.down[0](x))


class Up2d(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = nn.ModuleDict({"conv": double_conv(cin, cout)})

    def forward(self, x, skip):
        x = self.up(x)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv["conv"](torch.cat([skip, x], 1))


class UNet2d(nn.Module):
    def __init__(self, widths) -> None:
        super().__init__()
        self.downs = nn.ModuleList(Down2d(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.ups = nn.ModuleList(Up2d(b, a) for a, b in reversed(list(zip(widths[:-1], widths[1:]))))

    def forward(self, x):
        feats = [x]
        for d in self.downs:
            feats.append(d(feats[-1]))
        y = feats.pop()
        for u in self.ups:
            y = u(y, feats.pop())
        return y


class UC(nn.Module):
    def __init__(self, widths) -> None:
        super().__init__()
        self.unet = UNet2d(widths)

    def forward(self, x):  # fold the LAST axis
        b, c, d, h, w = x.shape
        y = self.unet(x.permute(0, 4, 1, 2, 3).reshape(b * w, c, d, h))
        return y.reshape(b, w, c, d, h).permute(0, 2, 3, 4, 1)


class DFiRef(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2 * c, c, 1, bias=False)
        self.conv2 = nn.Conv3d(c, 1, 1)
        self.conv3 = nn.Conv3d(c, 1, 1)

    def forward(self, f1, f2):
        return self.conv1(torch.cat([f1, f2], 1)) * torch.sigmoid(self.conv2(f1) + self.conv3(f2))


class UpCat(nn.Module):
    def __init__(self, cin: int, cat: int, cout: int, halves: bool) -> None:
        super().__init__()
        up = cin // 2 if halves else cin
        self.upsample = nn.ModuleDict({"deconv": nn.ConvTranspose3d(cin, up, 2, stride=2)})
        self.halves = halves
        if halves:
            self.dfi = DFiRef(up)
        else:
            self.convs = TwoConv(cat + up, cout)

    def forward(self, x, skip):
        x = self.upsample["deconv"](x)
        pads = []
        for i in range(3):
            pads += [0, 1 if skip.shape[-i - 1] != x.shape[-i - 1] else 0]
        x = F.pad(x, pads, "replicate")
        return self.dfi(x, skip) if self.halves else self.convs(torch.cat([skip, x], 1))


class OriginalUC3DUNet(nn.Module):
    def __init__(self, in_channels=1, out_channels=2, features=(32, 64, 128, 256, 512, 32)):
        super().__init__()
        f = list(features)
        self.conv_0 = TwoConv(in_channels, f[0])
        for i in range(1, 5):
            self.add_module(f"down_{i}", Down(f[i - 1], f[i]))
        for k in range(3):
            self.add_module(f"uC_skip{k}", UC(f[k:5]))
        self.upcat_4 = UpCat(f[4], f[3], f[3], True)
        self.upcat_3 = UpCat(f[3], f[2], f[2], True)
        self.upcat_2 = UpCat(f[2], f[1], f[1], True)
        self.upcat_1 = UpCat(f[1], f[0], f[5], False)
        self.final_conv = nn.Conv3d(f[5], out_channels, 1)

    def forward(self, x):
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        u = self.upcat_4(x4, x3)
        u = self.upcat_3(u, self.uC_skip2(x2))
        u = self.upcat_2(u, self.uC_skip1(x1))
        return self.final_conv(self.upcat_1(u, self.uC_skip0(x0)))


def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter away from its init, as the reference fixtures do, so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.2 * noise)
            elif p.ndim == 1:
                p.add_(0.2 * noise)
            else:
                p.add_(0.1 * p.abs().mean() * noise)
    return model.eval()
