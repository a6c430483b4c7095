"""Noise-prediction networks ε̂_θ(x, t) for vectors (residual MLP) and images (small U-Net).

Both output ε̂ = √Δ_t x + f_θ(x, t): the first term is the exact ε of standard-normal data
(whose score is −x at every t), so an untrained network already has the right restoring force
far from the data, and backward sampling cannot run away where the network extrapolates
(with a bare f_θ, ε̂ ≈ 0 off the training region makes the reverse drift x + 2s grow like
e^{t}). f_θ starts at zero and learns the correction.

Both take OU time t and embed the log-SNR λ(t) = log(e^{−2t}/Δ_t) rather than t itself: λ is
what sets the noise level, it spreads the small-t region (where the score varies like 1/Δ_t)
over a wide range, and it is what training draws uniformly (see train.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .process import delta, log_snr

ARCHS = ("mlp", "unet")


def gaussian_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε of N(0, I) data: √Δ_t x (its score is −x, and ε = −√Δ_t s)."""
    return torch.sqrt(delta(t)).reshape(-1, *([1] * (x.dim() - 1))) * x


class SinusoidalEmbedding(nn.Module):
    """Transformer-style features of a scalar (Vaswani et al. 2017, §3.5), then an MLP."""

    def __init__(self, dim: int, out: int, scale: float = 0.25):
        super().__init__()
        half = dim // 2
        # λ ranges over about [−15, 15]: frequencies from 1 down to 1/1000 cover it
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(half) / half))
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(2 * half, out), nn.SiLU(), nn.Linear(out, out))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = (self.scale * log_snr(t))[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=1))


class ResidualBlock(nn.Module):
    """h + W₂ SiLU(W₁ LayerNorm(h) + emb(t)): pre-norm residual MLP block."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h, emb):
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + emb))


class MLP(nn.Module):
    """Residual MLP with a sinusoidal time embedding, for flattened data x ∈ ℝ^d."""

    def __init__(self, d: int, width: int = 256, depth: int = 3, embedding: int = 64):
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.emb = SinusoidalEmbedding(embedding, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, d))
        nn.init.zeros_(self.out[-1].weight)  # start at ε̂ = √Δ_t x, the N(0, I) answer
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.emb(t)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return gaussian_eps(x, t) + self.out(h)


# --- U-Net for images --------------------------------------------------------------------


def _groups(channels: int) -> int:
    return math.gcd(channels, 8) or 1


class ResBlock2d(nn.Module):
    """GroupNorm → SiLU → conv, time embedding added, twice, with a skip (Ho et al. 2020)."""

    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class Attention2d(nn.Module):
    """Single-head self-attention over pixels, used at the lowest resolution only."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return x + self.proj(att.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Small U-Net ε̂(x, t) for images of shape (channels, side, side), flattened in and out.

    `widths` are the channel counts per resolution (halving the side at each step down);
    attention runs at the lowest resolution."""

    def __init__(self, channels: int, side: int, widths=(32, 64), embedding: int = 64):
        super().__init__()
        if side % 2 ** (len(widths) - 1):
            raise ValueError(f"image side {side} must be divisible by 2^{len(widths) - 1}")
        self.shape = (channels, side, side)
        emb = 4 * widths[0]
        self.emb = SinusoidalEmbedding(embedding, emb)
        self.inp = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        cin = widths[0]
        for w in widths:
            self.down.append(ResBlock2d(cin, w, emb))
            cin = w
        self.mid = ResBlock2d(cin, cin, emb)
        self.attn = Attention2d(cin)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(ResBlock2d(cin + w, w, emb))
            cin = w
        self.out = nn.Sequential(
            nn.GroupNorm(_groups(cin), cin), nn.SiLU(), nn.Conv2d(cin, channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.emb(t)
        h = self.inp(x.reshape(-1, *self.shape))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.attn(self.mid(h, emb))
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.up) - 1:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        return gaussian_eps(x, t) + self.out(h).reshape(x.shape)


# --- DDPM U-Net (Ho et al. 2020; Biroli, Bonnaire, de Bortoli & Mézard 2024) -------------


def _groups32(channels: int) -> int:
    """GroupNorm(32) as in Ho et al.; fewer groups only where the channels do not split in 32."""
    return math.gcd(channels, 32)


class DDPMResBlock(nn.Module):
    """Ho et al.'s residual block: GroupNorm → SiLU → conv, + Dense(SiLU(emb)), GroupNorm →
    SiLU → dropout → conv (zero-initialised), with a 1×1-conv skip where the channels change."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups32(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(_groups32(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # the block starts as its skip (Ho et al.'s init)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class DDPMAttention(Attention2d):
    """Attention2d with GroupNorm(32) and a zero-initialised output projection (Ho et al.)."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.norm = nn.GroupNorm(_groups32(channels), channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)


class _Level(nn.Module):
    """One resolution of a DDPMUNet path: residual blocks, each followed by attention or not,
    then a resampling conv (or none at the path's end)."""

    def __init__(self, blocks, attend: bool, resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(
            DDPMAttention(b.conv2.out_channels) if attend else nn.Identity() for b in blocks
        )
        self.resample = resample


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv (Ho et al.)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class DDPMUNet(nn.Module):
    """The DDPM U-Net ε̂(x, t) of Ho et al. (2020), for images (channels, side, side),
    flattened in and out.

    `widths` are the channels per resolution (the side halves at each step down, by a
    stride-2 conv; up by nearest ×2 and a conv). Each level has `res_blocks` residual blocks on
    the way down and `res_blocks` + 1 on the way up, which take the skips: the input conv's
    output, each down block's and each downsampling's. Self-attention follows every block at
    the image sides listed in `attention` (default: the lowest resolution only); the middle
    (block, attention, block) always has it. GroupNorm(32), dropout in the blocks, and a time
    embedding (sinusoid of λ(t), then an MLP) of width 4 × widths[0].

    Paper configuration (Biroli et al. 2024, 32×32×3): widths (64, 128, 256, 256),
    res_blocks 2, attention (16,), dropout 0.1, embedding 64."""

    def __init__(
        self,
        channels: int,
        side: int,
        widths=(64, 128, 256, 256),
        embedding: int = 64,
        res_blocks: int = 1,
        attention=None,
        dropout: float = 0.0,
    ):
        super().__init__()
        levels = len(widths)
        if side % 2 ** (levels - 1):
            raise ValueError(f"image side {side} must be divisible by 2^{levels - 1}")
        if res_blocks < 1:
            raise ValueError(f"res_blocks must be at least 1, not {res_blocks}")
        sides = [side // 2**i for i in range(levels)]
        attention = [sides[-1]] if attention is None else [int(a) for a in attention]
        if not set(attention) <= set(sides):
            raise ValueError(
                f"attention at sides {sorted(set(attention) - set(sides))}: the U-Net's "
                f"resolutions for side {side} and {levels} widths are {sides}"
            )
        self.shape = (channels, side, side)
        self.attention = tuple(sorted(set(attention), reverse=True))
        emb = 4 * widths[0]
        self.emb = SinusoidalEmbedding(embedding, emb)
        self.inp = nn.Conv2d(channels, widths[0], 3, padding=1)

        skips = [widths[0]]
        cin = widths[0]
        self.down = nn.ModuleList()
        for i, w in enumerate(widths):
            blocks = []
            for _ in range(res_blocks):
                blocks.append(DDPMResBlock(cin, w, emb, dropout))
                cin = w
                skips.append(w)
            last = i == levels - 1
            down = None if last else nn.Conv2d(w, w, 3, stride=2, padding=1)
            if not last:
                skips.append(w)
            self.down.append(_Level(blocks, sides[i] in attention, down))

        self.mid1 = DDPMResBlock(cin, cin, emb, dropout)
        self.mid_attn = DDPMAttention(cin)
        self.mid2 = DDPMResBlock(cin, cin, emb, dropout)

        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            blocks = []
            for _ in range(res_blocks + 1):
                blocks.append(DDPMResBlock(cin + skips.pop(), widths[i], emb, dropout))
                cin = widths[i]
            self.up.append(_Level(blocks, sides[i] in attention, Upsample(cin) if i else None))
        assert not skips

        self.out = nn.Sequential(
            nn.GroupNorm(_groups32(cin), cin), nn.SiLU(), nn.Conv2d(cin, channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)  # start at ε̂ = √Δ_t x, the N(0, I) answer
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.emb(t)
        h = self.inp(x.reshape(-1, *self.shape))
        skips = [h]
        for level in self.down:
            for block, attn in zip(level.blocks, level.attn, strict=True):
                h = attn(block(h, emb))
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            for block, attn in zip(level.blocks, level.attn, strict=True):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            if level.resample is not None:
                h = level.resample(h)
        return gaussian_eps(x, t) + self.out(h).reshape(x.shape)


# Model keys that select DDPMUNet; without any of them, arch 'unet' is the small UNet.
DDPM_KEYS = ("res_blocks", "attention", "dropout")


def build_network(arch: dict, d: int, image_shape: tuple[int, int, int] | None = None):
    """The network a `models:` config entry describes, for data of dimension d.

    arch 'unet' is the small UNet unless the entry has any of `DDPM_KEYS` (res_blocks,
    attention, dropout): then it is the DDPM U-Net (DDPMUNet), with defaults res_blocks 1,
    attention at the lowest resolution and dropout 0 for the keys it lacks."""
    kind = arch["arch"]
    if kind == "mlp":
        return MLP(d, arch["width"], arch["depth"], arch["embedding"])
    if kind == "unet":
        if image_shape is None:
            raise ValueError("arch 'unet' needs image data (channels, side, side); use 'mlp'")
        channels, side = image_shape[0], image_shape[1]
        widths = tuple(arch["widths"])
        if not any(key in arch for key in DDPM_KEYS):
            return UNet(channels, side, widths, arch["embedding"])
        return DDPMUNet(
            channels,
            side,
            widths,
            arch["embedding"],
            res_blocks=int(arch.get("res_blocks", 1)),
            attention=arch.get("attention"),
            dropout=float(arch.get("dropout", 0.0)),
        )
    raise ValueError(f"unknown arch {kind!r}: use one of {ARCHS}")


class LearnedScore:
    """s(x, t) = −ε̂_θ(x, t)/√Δ_t (SCIENCE.md §2), evaluated without gradients."""

    def __init__(self, net: nn.Module, batch: int = 4096):
        self.net = net.eval()
        self.batch = batch

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        eps = torch.cat(
            [
                self.net(xb, tb)
                for xb, tb in zip(x.split(self.batch), tt.split(self.batch), strict=True)
            ]
        )
        return -eps / math.sqrt(delta(float(t)))


def save_trained(
    path, ema_state: dict, arch: dict, d: int, step: int, image_shape=None, checkpoints=None
):
    """The final model file: EMA weights, what is needed to rebuild the network, and the record
    of its training checkpoints (`store.checkpoint_record`: step → file beside it, digest)."""
    from .store import save_atomic  # here: the models import on a GPU machine without zarr

    save_atomic(
        {
            "ema": ema_state,
            "arch": dict(arch),
            "d": int(d),
            "step": int(step),
            "image_shape": list(image_shape) if image_shape else [],
            "checkpoints": checkpoints or {},
        },
        path,
    )


def load_trained(path, device="cpu") -> nn.Module:
    """Rebuild a network from `save_trained`'s file, with its EMA weights (weights_only)."""
    from .store import load_checkpoint

    state = load_checkpoint(path, device)
    net = build_network(state["arch"], state["d"], tuple(state["image_shape"]) or None)
    net.load_state_dict(state["ema"])
    return net.to(device).eval()
