"""Plain-PyTorch reference of keras_ambient's networks, loss, trainer and sampler.

The yardstick of `benchmarks/speed.py` and `benchmarks/sampling_speed.py`: the
same layers as `ka.networks.UNet` (default options: positional embedding, no
dropout, no condition) and `ka.networks.MLPDenoiser` (Fourier embedding),
written channels-first in plain PyTorch, with EDM preconditioning, the ambient
loss (truncated log-normal `sigma_t > sigma_n`, "unbiased" weighting capped at
100), `torch.optim.Adam` + an EMA of the weights, and EDM's Heun sampler.

`tests/test_torch_reference.py` checks that both networks have the parameter
count of the Keras network of the same configuration and, after
`load_keras_weights`, the same outputs. Keep that test passing when either
side changes: a reference that drifts from the library measures nothing.

Only torch and numpy are imported here (the plain-PyTorch benchmark workers do
not import Keras); `load_keras_weights` reads a Keras network through
`get_layer(name).get_weights()`.
"""

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SIGMA_DATA = 0.5


# ------------------------------------------------------------------ networks
class PositionalEmbedding(nn.Module):
    """`ka.layers.PositionalEmbedding` (scale 1)."""

    def __init__(self, dim, max_period=10000.0):
        super().__init__()
        half = dim // 2
        exps = torch.arange(half, dtype=torch.float32) / float(half - 1)
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * exps))

    def forward(self, c):
        angles = c.reshape(-1, 1) * self.freqs[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class FourierEmbedding(nn.Module):
    """`ka.layers.FourierEmbedding` (the frequencies are a buffer, copied over)."""

    def __init__(self, dim, scale=16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, c):
        angles = 2 * math.pi * c.reshape(-1, 1) * self.freqs[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class NoiseEmbedding(nn.Module):
    """`silu(dense2(silu(dense1(embed(c)))))` (networks/conditioning.py)."""

    def __init__(self, embed, in_dim, width):
        super().__init__()
        self.embed = embed
        self.dense1 = nn.Linear(in_dim, width)
        self.dense2 = nn.Linear(width, width)

    def forward(self, c):
        return F.silu(self.dense2(F.silu(self.dense1(self.embed(c)))))


def group_norm(channels, groups):
    return nn.GroupNorm(math.gcd(channels, groups), channels, eps=1e-6)


class DownsampleConv(nn.Conv2d):
    """Keras `Conv2D(3, strides=2, padding="same")`: on an even input, TF/Keras
    "same" pads 0 before and 1 after (torch's `padding=1` pads 1 on both sides,
    which samples the input one pixel off: same parameters, other function)."""

    def __init__(self, channels):
        super().__init__(channels, channels, 3, stride=2, padding=0)

    def forward(self, h):
        return super().forward(F.pad(h, (0, 1, 0, 1)))


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb_width, groups):
        super().__init__()
        self.norm1 = group_norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_width, 2 * cout)
        self.norm2 = group_norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, h, emb):
        x = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        x = F.silu(self.norm2(x) * (1 + scale) + shift)
        x = self.conv2(x)
        return (h if self.skip is None else self.skip(h)) + x

    def keras_layers(self, name):
        pairs = [(f"{name}_{k}", getattr(self, k)) for k in ("norm1", "conv1", "emb", "norm2", "conv2")]
        return pairs + ([(f"{name}_skip", self.skip)] if self.skip is not None else [])


class Attention(nn.Module):
    def __init__(self, channels, heads, groups):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.mha = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, h):
        b, c, hh, ww = h.shape
        a = self.norm(h).flatten(2).transpose(1, 2)
        a = self.mha(a, a, a, need_weights=False)[0]
        return h + a.transpose(1, 2).reshape(b, c, hh, ww)

    def keras_layers(self, name):
        return [(f"{name}_norm", self.norm), (f"{name}_mha", self.mha)]


class UNet(nn.Module):
    """The layers of `ka.networks.UNet` (default options), channels first.

    `forward(x, c_noise)` with `x` NCHW. `keras_layers()` lists
    `(keras layer name, module)` pairs for `load_keras_weights`.
    """

    def __init__(self, image_shape, base_channels, channel_multipliers, num_res_blocks=2,
                 attention_resolutions=(), heads=4, groups=8):
        super().__init__()
        size, _, cin = image_shape
        emb_dim, width = max(base_channels, 16), 4 * base_channels
        self.emb = NoiseEmbedding(PositionalEmbedding(emb_dim), emb_dim, width)
        self.input_conv = nn.Conv2d(cin, base_channels, 3, padding=1)
        self._names = [("input_conv", self.input_conv), ("noise_dense_1", self.emb.dense1),
                       ("noise_dense_2", self.emb.dense2)]
        self.down = nn.ModuleList()
        skips, ch, res = [base_channels], base_channels, size
        for level, mult in enumerate(channel_multipliers):
            for b in range(num_res_blocks):
                block = nn.ModuleList([ResBlock(ch, base_channels * mult, width, groups)])
                self._names += block[0].keras_layers(f"down{level}_block{b}")
                ch = base_channels * mult
                if res in attention_resolutions:
                    block.append(Attention(ch, heads, groups))
                    self._names += block[1].keras_layers(f"down{level}_attn{b}")
                self.down.append(block)
                skips.append(ch)
            if level < len(channel_multipliers) - 1:
                self.down.append(DownsampleConv(ch))
                self._names.append((f"down{level}_downsample", self.down[-1]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, width, groups), Attention(ch, heads, groups),
                                  ResBlock(ch, ch, width, groups)])
        self._names += (self.mid[0].keras_layers("mid_block0") + self.mid[1].keras_layers("mid_attn")
                        + self.mid[2].keras_layers("mid_block1"))
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_multipliers))):
            mult = channel_multipliers[level]
            for b in range(num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(ch + skips.pop(), base_channels * mult, width, groups)])
                self._names += block[0].keras_layers(f"up{level}_block{b}")
                ch = base_channels * mult
                if res in attention_resolutions:
                    block.append(Attention(ch, heads, groups))
                    self._names += block[1].keras_layers(f"up{level}_attn{b}")
                self.up.append(block)
            if level > 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))
                self._names.append((f"up{level}_upconv", self.up[-1]))
                res *= 2
        self.out_norm = group_norm(ch, groups)
        self.out_conv = nn.Conv2d(ch, cin, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        self._names += [("output_norm", self.out_norm), ("output_conv", self.out_conv)]

    def keras_layers(self):
        return list(self._names)

    def forward(self, x, c_noise):
        emb = self.emb(c_noise)
        h = self.input_conv(x)
        skips = [h]
        for m in self.down:
            if isinstance(m, nn.Conv2d):
                h = m(h)
            else:
                h = m[0](h, emb)
                for extra in m[1:]:
                    h = extra(h)
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for m in self.up:
            if isinstance(m, nn.Conv2d):
                h = m(F.interpolate(h, scale_factor=2, mode="nearest"))
            else:
                h = m[0](torch.cat([h, skips.pop()], dim=1), emb)
                for extra in m[1:]:
                    h = extra(h)
        return self.out_conv(F.silu(self.out_norm(h)))


class MLP(nn.Module):
    """The layers of `ka.networks.MLPDenoiser` (Fourier embedding).

    Keras's `LayerNormalization` has `epsilon=1e-3` (torch's default is 1e-5).
    """

    def __init__(self, data_dim, hidden, num_blocks=3, emb_dim=64):
        super().__init__()
        self.emb = NoiseEmbedding(FourierEmbedding(emb_dim), emb_dim, hidden)
        self.input = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.LayerNorm(hidden, eps=1e-3), nn.Linear(hidden, hidden),
                           nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)])
            for _ in range(num_blocks)
        )
        self.out_norm = nn.LayerNorm(hidden, eps=1e-3)
        self.out = nn.Linear(hidden, data_dim)
        nn.init.zeros_(self.out.weight)

    def keras_layers(self):
        pairs = [("noise_fourier", self.emb.embed), ("noise_dense_1", self.emb.dense1),
                 ("noise_dense_2", self.emb.dense2), ("input_dense", self.input)]
        for i, (norm, emb_dense, dense1, dense2) in enumerate(self.blocks):
            pairs += [(f"block{i}_norm", norm), (f"block{i}_emb", emb_dense),
                      (f"block{i}_dense1", dense1), (f"block{i}_dense2", dense2)]
        return pairs + [("output_norm", self.out_norm), ("output_dense", self.out)]

    def forward(self, x, c_noise):
        emb = self.emb(c_noise)
        h = self.input(x)
        for norm, emb_dense, dense1, dense2 in self.blocks:
            r = F.silu(norm(h) + emb_dense(emb))
            h = h + dense2(F.silu(dense1(r)))
        return self.out(F.silu(self.out_norm(h)))


def build_net(kind, *, base_channels=None, hidden_units=None, seed=0):
    """`kind`: "digits8" (8x8x1 U-Net, multipliers (1, 2)), "img32" (32x32x3,
    (1, 2, 2)) or "mlp2d" (2-D MLP, 3 blocks)."""
    torch.manual_seed(seed)
    if kind == "mlp2d":
        return MLP(2, hidden_units)
    kw = unet_kwargs(kind, base_channels)
    return UNet(kw["image_shape"], kw["base_channels"], kw["channel_multipliers"])


def unet_kwargs(kind, base_channels):
    """Keyword arguments of `ka.networks.UNet` for the benchmark presets."""
    if kind == "digits8":
        return dict(image_shape=(8, 8, 1), base_channels=base_channels, channel_multipliers=(1, 2))
    if kind == "img32":
        return dict(image_shape=(32, 32, 3), base_channels=base_channels, channel_multipliers=(1, 2, 2))
    raise ValueError(f"Unknown network kind. Received: kind={kind!r}")


def num_params(net):
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def load_keras_weights(torch_net, keras_net):
    """Copies a Keras `UNet` / `MLPDenoiser`'s weights into `torch_net` (in place).

    Layouts: Dense kernel `(in, out)` -> `weight = kernel.T`; Conv2D kernel
    `(kh, kw, in, out)` -> `(out, in, kh, kw)`; MultiHeadAttention q/k/v
    kernels `(C, heads, key_dim)` -> rows of `in_proj_weight`, output kernel
    `(heads, key_dim, C)` -> `out_proj.weight`; norms' gamma/beta as they are.
    """
    with torch.no_grad():
        for name, module in torch_net.keras_layers():
            w = [np.asarray(a, dtype="float32") for a in keras_net.get_layer(name).get_weights()]
            if isinstance(module, nn.MultiheadAttention):
                c = module.embed_dim
                qk, qb, kk, kb, vk, vb, ok, ob = w
                module.in_proj_weight.copy_(torch.from_numpy(
                    np.concatenate([a.reshape(c, -1).T for a in (qk, kk, vk)], axis=0)))
                module.in_proj_bias.copy_(torch.from_numpy(np.concatenate([qb.ravel(), kb.ravel(), vb.ravel()])))
                module.out_proj.weight.copy_(torch.from_numpy(ok.reshape(-1, c).T.copy()))
                module.out_proj.bias.copy_(torch.from_numpy(ob))
            elif isinstance(module, FourierEmbedding):
                module.freqs.copy_(torch.from_numpy(w[0]))
            elif isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.from_numpy(w[0].transpose(3, 2, 0, 1).copy()))
                module.bias.copy_(torch.from_numpy(w[1]))
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.from_numpy(w[0].T.copy()))
                module.bias.copy_(torch.from_numpy(w[1]))
            elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                module.weight.copy_(torch.from_numpy(w[0]))
                module.bias.copy_(torch.from_numpy(w[1]))
            else:  # pragma: no cover - a layer this function does not know
                raise TypeError(f"No weight mapping for {type(module).__name__} ({name}).")
    return torch_net


# ------------------------------------------------------- loss, trainer, sampler
def denoise(net, x, sigma, sigma_data=SIGMA_DATA):
    """M2: `D(x; sigma)` with EDM preconditioning (`sigma` one level per sample)."""
    s = sigma.reshape((-1,) + (1,) * (x.dim() - 1))
    total = s**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = s * sigma_data / torch.sqrt(total)
    c_in = 1.0 / torch.sqrt(total)
    c_noise = torch.log(sigma.clamp_min(1e-20)) / 4.0
    return c_skip * x + c_out * net(c_in * x, c_noise)


def ambient_loss(net, y, sigma_n, p_mean=-1.2, p_std=1.2, cap=100.0, sigma_data=SIGMA_DATA):
    """M1 + M3 with the library's defaults (see keras_ambient/losses/ambient_loss.py)."""
    u = torch.rand_like(sigma_n)
    a = (torch.log(sigma_n.clamp_min(1e-20)) - p_mean) / p_std
    cdf_a = 0.5 * (1 + torch.erf(a / math.sqrt(2.0)))
    p = (cdf_a + u * (1 - cdf_a)).clamp(1e-7, 1 - 1e-7)
    sigma_t = torch.exp(p_mean + p_std * math.sqrt(2.0) * torch.erfinv(2 * p - 1))
    sigma_t = torch.minimum(torch.maximum(sigma_t, sigma_n * (1 + 1e-4) + 1e-6),
                            torch.tensor(80.0, device=y.device))
    shape = (-1,) + (1,) * (y.dim() - 1)
    st, sn = sigma_t.reshape(shape), sigma_n.reshape(shape)
    x_t = y + torch.sqrt((st**2 - sn**2).clamp_min(0)) * torch.randn_like(y)
    denoised = denoise(net, x_t, sigma_t, sigma_data)
    ratio = sn**2 / st**2
    y_hat = (1 - ratio) * denoised + ratio * x_t
    sq_err = ((y_hat - y) ** 2).mean(dim=tuple(range(1, y.dim())))
    scale = 1 - sigma_n**2 / sigma_t**2
    w = (sigma_t**2 + sigma_data**2) / (sigma_t * sigma_data) ** 2
    w = w * torch.clamp(1 / scale**2, max=cap)
    return (w * sq_err).mean()


class Trainer:
    """Plain PyTorch training step: ambient loss, Adam, EMA (decay 0.999 with
    the library's warm-up `min(decay, (1 + n) / (10 + n))`)."""

    def __init__(self, net, lr=2e-4, compile_loss=False, autocast_dtype=None):
        self.net = net
        self.ema = copy.deepcopy(net).requires_grad_(False)
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)
        self.loss_fn = torch.compile(ambient_loss) if compile_loss else ambient_loss
        self.autocast_dtype = autocast_dtype
        self.step_count = 0

    def step(self, y, sigma_n):
        self.opt.zero_grad(set_to_none=True)
        if self.autocast_dtype is not None:
            with torch.autocast(y.device.type, dtype=self.autocast_dtype):
                loss = self.loss_fn(self.net, y, sigma_n)
        else:
            loss = self.loss_fn(self.net, y, sigma_n)
        loss.backward()
        self.opt.step()
        decay = min(0.999, (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.net.parameters()), 1 - decay)
        self.step_count += 1
        return loss


def edm_sigmas(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM schedule + final 0 (as `ka.samplers.edm_sigmas`)."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.append((hi + ramp * (lo - hi)) ** rho, 0.0).astype("float32")


@torch.no_grad()
def sample_heun(net, x, sigmas):
    """EDM's deterministic Heun sampler (NFE = 2N - 1), as `ka.samplers.sample_heun`."""
    n = x.shape[0]
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(net, x, torch.full((n,), s, device=x.device))) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - denoise(net, x_next, torch.full((n,), s_next, device=x.device))) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    return x
