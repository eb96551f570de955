"""
A causal 3-D convolutional video VAE, all of it in this one file: videos <-> latents.
Suggest reading: [1] Kingma & Welling, Auto-Encoding Variational Bayes (arXiv 1312.6114),
Eq. 10 (reparameterisation) and Appendix B (the Gaussian KL); [2] MedSora, arXiv 2411.01647,
whose VAE is the CogVideoX 3-D causal VAE (arXiv 2408.06072, Sec. 2.1) plus frequency
compensation; [3] Open-Sora 1.2 report, docs/report_03.md (per-channel latent shift/scale).
Run `python vae.py` for a smoke demo (tiny VAE, 2 CPU cores, ~2 minutes); real training: train.py --stage=vae.

Glossary (code name <-> symbol):
    x, x_hat       video and its reconstruction, (B, F, C, H, W) in [-1, 1]
    mu, logvar     posterior q(z|x) = N(mu, exp(logvar)), each (B, f, c, h, w)    [1] Eq. 9
    z              a latent, z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)       [1] Eq. 10
    kl             KL(q(z|x) || N(0, I)) per latent element                       [1] App. B
    latent_shift   per-channel mean of mu (c,); latent_scale = 1 / std (c,)       [3]
    f, h, w        F = 1 + 4k frames -> f = 1 + k latents; h = H / 4 (tiny), H / 8 (base)
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


@dataclass
class VAEConfig:
    in_channels: int = 3          # RGB
    base_channels: int = 16       # width of conv_in, conv_out and the full-resolution layers
    channel_mult: tuple = (1, 2)  # level i has width base_channels * channel_mult[i] and starts with a x2 spatial downsample
    num_res_blocks: int = 1       # ResBlocks per level, encoder and decoder alike
    z_channels: int = 4           # c, latent channels (SD: 4, CogVideoX/MedSora: 16)
    temporal_downsample: int = 2  # how many of the downsamples also halve time: 2 -> 1 + 4k frames -> 1 + k latents
    norm_groups: int = 8          # GroupNorm groups (CogVideoX: 32, at 128+ channels)
    kl_weight: float = 1e-6       # small on purpose: L1 must dominate; the KL only keeps sigma > 0 and mu from drifting (see below)
    freq_comp: bool = False       # MedSora frequency-compensation adapters + focal frequency loss (a later issue)

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        assert 0 <= self.temporal_downsample <= len(self.channel_mult), "each temporal halving rides on a spatial downsample"
        assert not self.freq_comp, "freq_comp=True (MedSora's frequency compensation + focal frequency loss) comes in a later issue"
        self.spatial_factor = 2 ** len(self.channel_mult)  # derived: H / h
        self.temporal_factor = 2 ** self.temporal_downsample  # derived: (F - 1) / (f - 1)

# I keep kl_weight at 1e-6 on *means* over elements. LDM's 1e-6 is on per-sample *sums* of
# both terms, which per element is ~48x weaker still; I can afford a slightly stronger pull
# because measure_latent_stats() fixes the overall scale for the diffusion model anyway.
VAE_PRESETS = {
    "tiny": dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, temporal_downsample=2),  # x4 space, x4 time, CPU
    "base": dict(base_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2, z_channels=16, temporal_downsample=2, norm_groups=32),  # x8 space, x4 time
}


def valid_num_frames(num_frames, temporal_factor=4):
    """Return num_frames if it is 1 + temporal_factor * k, else raise a ValueError saying so."""
    if num_frames < 1 or (num_frames - 1) % temporal_factor != 0:
        t = temporal_factor
        raise ValueError(f"num_frames must be 1+{t}k, e.g. {1 + 4 * t} (also 1, {1 + t}, {1 + 2 * t}, ...), "
                         f"for a causal VAE with {t}x temporal compression; got {num_frames}")
    return num_frames

# -----------------------------------------------------------------------------
# building blocks; all work on (B, C, F, H, W), the layout conv3d wants

def per_frame(fn, x):
    """Apply a 2-D module to every frame separately: (B, C, F, H, W) -> (B, C', F, H', W')."""
    b = x.shape[0]
    x = fn(rearrange(x, 'b c f h w -> (b f) c h w'))  # (B*F, C', H', W')
    return rearrange(x, '(b f) c h w -> b c f h w', b=b)  # (B, C', F, H', W')


class CausalConv3d(nn.Module):
    """3x3x3 conv whose output frame t sees input frames t-2, t-1, t only (CogVideoX Sec. 2.1)."""

    def __init__(self, cin, cout, kernel_size=3):
        super().__init__()
        self.time_pad = kernel_size - 1  # all of the temporal padding goes on the past side
        self.conv = nn.Conv3d(cin, cout, kernel_size, padding=(0, kernel_size // 2, kernel_size // 2))

    def forward(self, x):
        # I pad the past with copies of frame 0 (as CogVideoX does) rather than zeros, so a
        # still clip looks still to the first frames too; space is zero-padded symmetrically.
        first = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)  # (B, C, 2, H, W)
        return self.conv(torch.cat([first, x], dim=2))  # (B, C, F+2, H, W) -> (B, Cout, F, H, W)


class ResBlock3d(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        # important! GroupNorm over the whole clip would let frame F-1 shift the statistics of
        # frame 0 and break causality (CogVideoX normalises over a whole chunk of frames); I normalise
        # each frame on its own.
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(per_frame(self.norm1, x)))  # (B, Cout, F, H, W)
        h = self.conv2(F.silu(per_frame(self.norm2, h)))  # (B, Cout, F, H, W)
        return self.skip(x) + h  # (B, Cout, F, H, W)


class Downsample(nn.Module):
    """x2 in space (stride-2 conv per frame), and x2 in time keeping frame 0 alone: 1+2k -> 1+k."""

    def __init__(self, ch, temporal):
        super().__init__()
        self.temporal = temporal
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)  # CogVideoX: 3x3, stride 2, pad (0, 1, 0, 1)

    def forward(self, x):
        if self.temporal:
            assert x.shape[2] % 2 == 1, "temporal downsample needs 1 + 2k frames"
            # latent 0 <- frame 0; latent j <- mean of frames 2j-1, 2j (CogVideoX's average pool),
            # so latent j never sees a frame later than 2j: still causal.
            k = (x.shape[2] - 1) // 2
            pairs = x[:, :, 1:].reshape(*x.shape[:2], k, 2, *x.shape[3:]).mean(3)  # (B, C, k, H, W)
            x = torch.cat([x[:, :, :1], pairs], dim=2)  # (B, C, 1+k, H, W)
        return per_frame(lambda y: self.conv(F.pad(y, (0, 1, 0, 1))), x)  # (B, C, F', H/2, W/2)


class Upsample(nn.Module):
    """The mirror of Downsample: latent 0 -> 1 frame, every later one -> 2 frames; x2 in space."""

    def __init__(self, cin, cout, temporal):
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(cin, cout)  # tells the two frames of a repeated pair apart, causally

    def forward(self, x):
        if self.temporal:
            rest = x[:, :, 1:].repeat_interleave(2, dim=2)  # (B, C, 2k, h, w)
            x = torch.cat([x[:, :, :1], rest], dim=2)  # (B, C, 1+2k, h, w)
        # CogVideoX upsamples in space and then convolves; I convolve first, at a quarter of the
        # cost, and leave smoothing the 2x2 blocks to the next ResBlock (or conv_out).
        x = self.conv(x)  # (B, Cout, F', h, w)
        return F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")  # (B, Cout, F', 2h, 2w)

# -----------------------------------------------------------------------------
# encoder and decoder


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, g = cfg.base_channels, cfg.norm_groups
        self.conv_in = CausalConv3d(cfg.in_channels, ch)
        # I downsample at the *start* of each level (LDM does it at the end), so no ResBlock
        # runs at full resolution: one 32-channel conv3d on a 32 px, 17-frame batch of 8 costs
        # ~0.4 s fwd+bwd on 2 CPU cores, more than my whole training-step budget. The price is
        # less capacity for fine detail. TODO (base model issue): full-resolution blocks on GPU.
        self.levels = nn.ModuleList()
        for i, mult in enumerate(cfg.channel_mult):
            blocks = [Downsample(ch, temporal=i < cfg.temporal_downsample)]
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock3d(ch, cfg.base_channels * mult, g))
                ch = cfg.base_channels * mult
            self.levels.append(nn.Sequential(*blocks))
        # mid block: two ResBlocks, no attention. LDM/CogVideoX put self-attention here; at our
        # tiny sizes the 3x3x3 receptive field already covers most of an 8x8 latent, and attention
        # would have to be causal in time too. TODO: add it for the base model.
        self.mid = nn.Sequential(ResBlock3d(ch, ch, g), ResBlock3d(ch, ch, g))
        # FREQ-COMP HOOK (MedSora adapter 1, later issue): h = h + adapter(h) after self.mid
        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = CausalConv3d(ch, 2 * cfg.z_channels)  # mu and logvar

    def forward(self, x):  # (B, C, F, H, W)
        h = self.conv_in(x)  # (B, base, F, H, W)
        for level in self.levels:
            h = level(h)  # (B, ch_i, F_i, H/2^(i+1), W/2^(i+1))
        h = self.mid(h)  # (B, ch, f, h, w)
        return self.conv_out(F.silu(per_frame(self.norm_out, h)))  # (B, 2c, f, h, w)


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.channel_mult)
        chs = [cfg.base_channels] + [cfg.base_channels * m for m in cfg.channel_mult]  # width before/after each level
        ch = chs[-1]
        self.conv_in = CausalConv3d(cfg.z_channels, ch)
        self.mid = nn.Sequential(ResBlock3d(ch, ch, g), ResBlock3d(ch, ch, g))
        # FREQ-COMP HOOK (MedSora adapter 1, later issue): h = h + adapter(h) after self.mid
        self.levels = nn.ModuleList()
        for i in reversed(range(n)):  # the encoder's levels, run backwards
            blocks = [ResBlock3d(ch, chs[i + 1], g) for _ in range(cfg.num_res_blocks)]
            blocks.append(Upsample(chs[i + 1], chs[i], temporal=i < cfg.temporal_downsample))
            ch = chs[i]
            self.levels.append(nn.Sequential(*blocks))
            # FREQ-COMP HOOK (MedSora adapter 2, later issue): h = h + conv3d(dropout(relu(bn(h)))) per level
        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = CausalConv3d(ch, cfg.in_channels)

    def forward(self, z):  # (B, c, f, h, w)
        h = self.mid(self.conv_in(z))  # (B, ch, f, h, w)
        for level in self.levels:
            h = level(h)  # (B, ch_i, F_i, 2h, 2w)
        return self.conv_out(F.silu(per_frame(self.norm_out, h)))  # (B, C, F, H, W)

# -----------------------------------------------------------------------------


class CausalVideoVAE(nn.Module):

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        # Open-Sora 1.2 practice: per-channel latent normalisation, measured once after VAE training
        # and saved in the state_dict so that the checkpoint carries it.
        self.register_buffer("latent_shift", torch.zeros(cfg.z_channels))  # (c,)
        self.register_buffer("latent_scale", torch.ones(cfg.z_channels))  # (c,)

    def latent_shape(self, num_frames, size):
        """(f, c, h, w) of the latents of a (num_frames, C, H, W) clip; size is H or (H, W)."""
        H, W = (size, size) if isinstance(size, int) else size
        s, t = self.cfg.spatial_factor, self.cfg.temporal_factor
        valid_num_frames(num_frames, t)
        if H % s or W % s:
            raise ValueError(f"height and width must be multiples of {s} for this VAE; got {H}x{W}")
        return (1 + (num_frames - 1) // t, self.cfg.z_channels, H // s, W // s)

    def encode(self, x):
        """x (B, F, C, H, W) in [-1, 1] -> mu, logvar, each (B, f, c, h, w)."""
        self.latent_shape(x.shape[1], tuple(x.shape[3:]))  # raises a readable ValueError on bad shapes
        h = self.encoder(rearrange(x, 'b f c h w -> b c f h w'))  # (B, 2c, f, h, w)
        mu, logvar = rearrange(h, 'b c f h w -> b f c h w').chunk(2, dim=2)  # 2 x (B, f, c, h, w)
        return mu, logvar.clamp(-30.0, 20.0)  # exp(logvar) stays finite (LDM's clamp)

    def decode(self, z):
        """z (B, f, c, h, w) -> x_hat (B, F, C, H, W), F = 1 + temporal_factor * (f - 1)."""
        x = self.decoder(rearrange(z, 'b f c h w -> b c f h w'))  # (B, C, F, H, W)
        return rearrange(x, 'b c f h w -> b f c h w')  # (B, F, C, H, W)

    def forward(self, x, sample=True):
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu  # [1] Eq. 10
        return self.decode(z), mu, logvar

    @staticmethod
    def kl(mu, logvar):
        """KL(N(mu, exp(logvar)) || N(0, 1)), averaged over every latent element."""
        # [1] App. B: -KL = 1/2 sum(1 + log sigma^2 - mu^2 - sigma^2); I take the mean, not the sum,
        # so that kl_weight does not depend on the clip size.
        return 0.5 * torch.mean(mu.pow(2) + logvar.exp() - 1.0 - logvar)

    def loss(self, x, out=None):
        """L1 + kl_weight * KL, both means over elements. Returns (total, dict(l1, kl)).
        out: the (x_hat, mu, logvar) of a forward pass already made (train.py runs it through DDP)."""
        x_hat, mu, logvar = self(x, sample=True) if out is None else out
        l1 = (x_hat - x).abs().mean()  # MedSora trains with L1 (+LPIPS +FFL); I start with L1 alone
        kl = self.kl(mu, logvar)
        # FREQ-COMP HOOK (later issue): + ffl_weight * focal_frequency_loss(x_hat, x)  (MedSora: 0.01)
        return l1 + self.cfg.kl_weight * kl, dict(l1=l1.detach(), kl=kl.detach())

    @torch.no_grad()
    def measure_latent_stats(self, batches):
        """Set latent_shift = mean, latent_scale = 1 / std of the posterior means, per channel.
        batches: an iterable of videos (B, F, C, H, W), or of tuples/lists whose first item is one."""
        n, s1, s2 = 0, 0.0, 0.0
        for x in batches:
            x = x[0] if isinstance(x, (tuple, list)) else x
            mu, _ = self.encode(x.to(self.latent_shift.device))
            mu = rearrange(mu, 'b f c h w -> c (b f h w)').double()  # (c, N), float64 sums
            n, s1, s2 = n + mu.shape[1], s1 + mu.sum(1), s2 + mu.pow(2).sum(1)
        assert n > 0, "measure_latent_stats got no batches"
        mean = s1 / n
        std = (s2 / n - mean ** 2).clamp_min(1e-12).sqrt()
        self.latent_shift.copy_(mean.float())  # (c,)
        self.latent_scale.copy_(1.0 / std.float())  # (c,)
        return self.latent_shift, self.latent_scale

    @torch.no_grad()  # the diffusion stages keep the VAE frozen (style rule 11)
    def encode_latents(self, x, sample=False):
        """Video (B, F, C, H, W) -> normalised latents (B, f, c, h, w), ~N(0, 1) per channel."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        # Open-Sora stores scale = std and divides; I store 1/std and multiply, like SD's 0.18215.
        return (z - self.latent_shift.view(1, 1, -1, 1, 1)) * self.latent_scale.view(1, 1, -1, 1, 1)

    def decode_latents(self, z):
        """Normalised latents (B, f, c, h, w) -> video (B, F, C, H, W) clamped to [-1, 1]."""
        z = z / self.latent_scale.view(1, 1, -1, 1, 1) + self.latent_shift.view(1, 1, -1, 1, 1)
        return self.decode(z).clamp(-1.0, 1.0)

# -----------------------------------------------------------------------------


def smooth_blobs(batch, num_frames, size, seed=0):
    """Moving Gaussian blobs (one per colour channel) in [-1, 1]: a data-free stand-in for video."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(5, batch, 1, 3, 1, 1, generator=g)  # x0, y0, vx, vy, width, each (B, 1, 3, 1, 1)
    t = torch.linspace(0, 1, num_frames).view(1, -1, 1, 1, 1)  # (1, F, 1, 1, 1)
    yy, xx = torch.meshgrid(2 * [torch.linspace(-1, 1, size)], indexing="ij")  # (H, W) each
    cx, cy = p[0] - 0.5 + (p[2] - 0.5) * t, p[1] - 0.5 + (p[3] - 0.5) * t  # (B, F, 3, 1, 1)
    return 2 * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.05 + 0.3 * p[4])) - 1  # (B, F, 3, H, W)


if __name__ == "__main__":
    import time
    torch.manual_seed(0)
    model = CausalVideoVAE(VAEConfig(**VAE_PRESETS["tiny"]))
    print(f"tiny VAE: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    try:  # the synthetic biomedical clips when data.py has them, else moving blobs
        from data import render_synthetic, MODALITIES
        clip = lambda i: torch.from_numpy(render_synthetic(MODALITIES[i % len(MODALITIES)], i, 17, 32)[0])  # (F, H, W, 3) uint8
        videos = lambda n, s: torch.stack([clip(s + i) for i in range(n)]).permute(0, 1, 4, 2, 3) / 127.5 - 1  # (n, 17, 3, 32, 32)
    except ImportError:
        videos = lambda n, s: smooth_blobs(n, 17, 32, seed=s)  # (n, 17, 3, 32, 32)
    pool, held_out = videos(400, 0), videos(16, 10**6)  # rendered once: per step it would add ~1/4 to each step
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    t0 = time.time()
    for step in range(301):
        loss, parts = model.loss(pool[torch.randint(len(pool), (8,))])  # (8, 17, 3, 32, 32)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                mse = (model.decode(model.encode(held_out)[0]).clamp(-1, 1) - held_out).pow(2).mean()
            psnr = 10 * torch.log10(4 / mse)  # peak-to-peak range is 2 in [-1, 1]
            print(f"step {step}: l1 {parts['l1']:.4f} kl {parts['kl']:.1f} held-out PSNR {psnr:.2f} dB ({time.time() - t0:.0f}s)")
