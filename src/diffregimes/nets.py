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

from .process import delta
from .store import load_checkpoint, save_atomic

ARCHS = ("mlp", "unet")


def gaussian_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε of N(0, I) data: √Δ_t x (its score is −x, and ε = −√Δ_t s)."""
    return torch.sqrt(-torch.expm1(-2 * t)).reshape(-1, *([1] * (x.dim() - 1))) * x


def log_snr(t: torch.Tensor) -> torch.Tensor:
    """λ(t) = −2t − log(1 − e^{−2t}) in torch (t > 0)."""
    return -2 * t - torch.log(-torch.expm1(-2 * t))


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


def build_network(arch: dict, d: int, image_shape: tuple[int, int, int] | None = None):
    """The network a `models:` config entry describes, for data of dimension d."""
    kind = arch["arch"]
    if kind == "mlp":
        return MLP(d, arch["width"], arch["depth"], arch["embedding"])
    if kind == "unet":
        if image_shape is None:
            raise ValueError("arch 'unet' needs image data (channels, side, side); use 'mlp'")
        return UNet(image_shape[0], image_shape[1], tuple(arch["widths"]), arch["embedding"])
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


def save_trained(path, ema_state: dict, arch: dict, d: int, step: int, image_shape=None):
    """The final model file: EMA weights and what is needed to rebuild the network."""
    save_atomic(
        {
            "ema": ema_state,
            "arch": dict(arch),
            "d": int(d),
            "step": int(step),
            "image_shape": list(image_shape) if image_shape else [],
        },
        path,
    )


def load_trained(path, device="cpu") -> nn.Module:
    """Rebuild a network from `save_trained`'s file, with its EMA weights (weights_only)."""
    state = load_checkpoint(path, device)
    net = build_network(state["arch"], state["d"], tuple(state["image_shape"]) or None)
    net.load_state_dict(state["ema"])
    return net.to(device).eval()
