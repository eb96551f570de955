"""
A causal 3-D convolutional video VAE with MedSora's frequency compensation, all of it in this one file.
Suggest reading: [1] Kingma & Welling, Auto-Encoding Variational Bayes (arXiv 1312.6114), Eq. 10
(reparameterisation) and Appendix B (the Gaussian KL); [2] MedSora, arXiv 2411.01647, Fig. 4: a 3-D causal
VAE (CogVideoX's, arXiv 2408.06072, Sec. 2.1), two "frequency compensation" structures and the focal frequency
loss; [3] Jiang et al., Focal Frequency Loss, arXiv 2012.12821, Sec. 3; [4] Open-Sora 1.2 report, its
docs/report_03.md (per-channel latent shift/scale); [5] Mathieu, Couprie & LeCun, Deep multi-scale video
prediction beyond mean square error, arXiv 1511.05440, Sec. 3, Eq. 5 (the gradient difference loss).
`python vae.py` prints the presets' parameter counts; training is train.py --stage=vae.

Glossary (code name <-> symbol):
    x, x_hat       video and its reconstruction, (B, F, C, H, W) in [-1, 1]
    mu, logvar     posterior q(z|x) = N(mu, exp(logvar)), each (B, f, c, h, w)    [1] Eq. 9
    z              a latent, z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)       [1] Eq. 10
    kl             KL(q(z|x) || N(0, I)) per latent element                       [1] App. B
    ffl            focal frequency loss, mean of w * |F(x_hat) - F(x)|^2          [3] Sec. 3.2
    gdl            gradient difference loss, | |d x_hat| - |d x| | along H and W   [5] Eq. 5
    latent_shift   per-channel mean of mu (c,); latent_scale = 1 / std (c,)       [4]
    f, h, w        F = 1 + 4k frames -> f = 1 + k latents (tiny: F = 1 + 2k); h = H / 4 (tiny), H / 8 (base)
    cache          dict module -> state carried from one chunk of frames to the next (chunked encode/decode)
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
    channel_mult: tuple = (1, 2)  # level i: width base_channels * channel_mult[i], after a x2 downsample
    num_res_blocks: int = 1       # ResBlocks per level, encoder and decoder alike
    z_channels: int = 4           # c, latent channels (SD: 4, CogVideoX/MedSora: 16)
    temporal_downsample: int = 2  # how many downsamples also halve time: 2 -> 1 + 4k frames -> 1 + k latents
    norm_groups: int = 8          # GroupNorm groups (CogVideoX: 32, at 128+ channels)
    kl_weight: float = 1e-6       # small: L1 must dominate; the KL only keeps sigma > 0, mu from drifting
    up_first: bool = False        # decoder levels upsample first, then run their ResBlocks at the new size
    full_res_blocks: int = 0      # encoder ResBlocks at full size and frame rate, for thin or fast things
    mid_attn: bool = False        # per-frame self-attention in both mid blocks (LDM: yes, CogVideoX: no)
    freq_comp: bool = False       # MedSora's frequency-compensation adapters + focal frequency loss [2]
    fc_fold: int = 2              # latent frames folded into channels by adapter (1) (MedSora: 2, its chunk)
    fc_dropout: float = 0.0       # dropout in adapters (2) (MedSora: 0.2, when only the adapters train)
    ffl_weight: float = 1.0       # lambda_ffl, with freq_comp (MedSora: 0.01; the FFL paper's AE: 100 x MSE)
    ffl_alpha: float = 1.0        # alpha, the focal exponent of the spectrum weight ([3] and MedSora: 1)
    gdl_weight: float = 0.0       # lambda of the gradient difference loss [5]: sharp edges of thin things

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        if not 0 <= self.temporal_downsample <= len(self.channel_mult):
            raise ValueError(f"temporal_downsample={self.temporal_downsample}: each temporal halving rides "
                             f"on a spatial downsample, so use 0..{len(self.channel_mult)} (the length of "
                             f"channel_mult)")
        if self.fc_fold < 1:
            raise ValueError(f"fc_fold={self.fc_fold}: fold at least 1 latent frame into channels")
        self.spatial_factor = 2 ** len(self.channel_mult)  # derived: H / h
        self.temporal_factor = 2 ** self.temporal_downsample  # derived: (F - 1) / (f - 1)

# kl_weight: 1e-6 on element means is ~48x LDM's on per-sample sums; measure_latent_stats() fixes the scale
VAE_PRESETS = {
    # tiny, for CPUs: x4 space, x2 time (x4 aliases the fastest motion); GDL [5]: round trips keep more motion
    "tiny": dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, temporal_downsample=1,
                 up_first=True, gdl_weight=1.0),
    "tiny-fc": dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, z_channels=16,  # x4 time
                    temporal_downsample=2, freq_comp=True),
    "base": dict(base_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2, z_channels=16,
                 temporal_downsample=2, norm_groups=32, freq_comp=True),  # x8 space, x4 time
}

def valid_num_frames(num_frames, temporal_factor=4):
    """Return num_frames if it is 1 + temporal_factor * k, else raise a ValueError saying so."""
    if num_frames < 1 or (num_frames - 1) % temporal_factor != 0:
        t = temporal_factor
        raise ValueError(f"num_frames must be 1+{t}k, e.g. {1 + 4 * t} (also 1, {1 + t}, {1 + 2 * t}, ...), "
                         f"for a causal VAE with {t}x temporal compression; got {num_frames}")
    return num_frames

# ---- building blocks on (B, C, F, H, W); `cache`: None (whole clip) or one dict shared while chunking

def per_frame(fn, x):
    """Apply a 2-D module to every frame separately: (B, C, F, H, W) -> (B, C', F, H', W')."""
    y = fn(rearrange(x, 'b c f h w -> (b f) c h w'))  # (B*F, C', H', W')
    return rearrange(y, '(b f) c h w -> b c f h w', b=x.shape[0])  # (B, C', F, H', W')

def with_past(key, x, n, cache):
    """Prepend the n frames before x: (B, C, F, H, W) -> (B, C, n+F, H, W), the whole causal state: n copies
    of frame 0 for a clip or first chunk (CogVideoX; zeros would make a still clip move), else cache[key]."""
    past = cache.get(key) if cache is not None else None
    if past is None:
        past = x[:, :, :1].expand(-1, -1, n, -1, -1)  # (B, C, n, H, W)
    x = torch.cat([past, x], dim=2)  # (B, C, n+F, H, W)
    if cache is not None:
        cache[key] = x[:, :, x.shape[2] - n:].clone()  # (B, C, n, H, W); cloned: the chunk can be freed
    return x

def is_first_chunk(key, cache):
    """True for a whole clip and for the first chunk of one; marks `key` as past its first chunk."""
    if cache is None:
        return True
    first = key not in cache
    cache[key] = True
    return first

class CausalConv3d(nn.Module):
    """3x3x3 conv whose output frame t sees input frames t-2, t-1, t only (CogVideoX Sec. 2.1)."""
    def __init__(self, cin, cout, kernel_size=3):
        super().__init__()
        self.time_pad = kernel_size - 1  # all of the temporal padding goes on the past side
        pad = (0, kernel_size // 2, kernel_size // 2)  # none in time; in space: symmetric zeros
        self.conv = nn.Conv3d(cin, cout, kernel_size, padding=pad)

    def forward(self, x, cache=None):
        if self.time_pad:
            x = with_past(self, x, self.time_pad, cache)  # (B, C, 2+F, H, W): the cached or replicated past
        return self.conv(x)  # (B, Cout, F, H, W)

class ResBlock3d(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        # important! GroupNorm per frame: over the clip, frame F-1 would shift frame 0's statistics
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, cache=None):
        h = self.conv1(F.silu(per_frame(self.norm1, x)), cache)  # (B, Cout, F, H, W)
        h = self.conv2(F.silu(per_frame(self.norm2, h)), cache)  # (B, Cout, F, H, W)
        return self.skip(x) + h  # (B, Cout, F, H, W)

class FrameAttention(nn.Module):
    """Single-head self-attention among the h*w positions of each frame (LDM's AttnBlock), frame by frame."""
    def __init__(self, ch, groups):
        super().__init__()
        self.norm, self.qkv = nn.GroupNorm(groups, ch), nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x, cache=None):  # needs no cache: it never looks at another frame
        B, C, Fr, H, W = x.shape
        q, k, v = per_frame(lambda y: self.qkv(self.norm(y)), x).chunk(3, dim=1)  # 3 x (B, C, F, H, W)
        q, k, v = (rearrange(t, 'b c f h w -> (b f) 1 (h w) c') for t in (q, k, v))  # (B*F, 1, H*W, C) each
        y = F.scaled_dot_product_attention(q, k, v)  # (B*F, 1, H*W, C)
        y = rearrange(y, '(b f) 1 (h w) c -> b c f h w', b=B, h=H)  # (B, C, F, H, W)
        return x + per_frame(self.proj, y)  # (B, C, F, H, W)

class Downsample(nn.Module):
    """x2 in space (stride-2 conv per frame), and x2 in time keeping frame 0 alone: 1+2k -> 1+k."""
    def __init__(self, ch, temporal):
        super().__init__()
        self.temporal = temporal
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)  # CogVideoX: 3x3, stride 2, pad (0, 1, 0, 1)

    def forward(self, x, cache=None):
        if self.temporal:
            # latent 0 <- frame 0, latent j <- mean of frames 2j-1, 2j (CogVideoX's mean pool): still causal
            first = is_first_chunk(self, cache)
            if x.shape[2] % 2 != int(first):  # later chunks: whole pairs only, none straddles two chunks
                raise ValueError(f"temporal downsample got {x.shape[2]} frames: the first chunk needs 1+2k "
                                 f"frames, later chunks 2k (chunk lengths must be multiples of the temporal "
                                 f"factor)")
            head, rest = (x[:, :, :1], x[:, :, 1:]) if first else (x[:, :, :0], x)  # 1 or 0 frames, 2k frames
            pairs = rest.reshape(*x.shape[:2], rest.shape[2] // 2, 2, *x.shape[3:]).mean(3)  # (B, C, k, H, W)
            x = torch.cat([head, pairs], dim=2)  # (B, C, 1+k or k, H, W)
        return per_frame(lambda y: self.conv(F.pad(y, (0, 1, 0, 1))), x)  # (B, C, F', H/2, W/2)

class Upsample(nn.Module):
    """The mirror of Downsample: latent 0 -> 1 frame, every later one -> 2 frames; x2 in space."""
    def __init__(self, cin, cout, temporal, conv_after):
        super().__init__()
        self.temporal, self.conv_after = temporal, conv_after
        self.conv = CausalConv3d(cin, cout)  # tells the two frames of a repeated pair apart, causally

    def forward(self, x, cache=None):
        if self.temporal:
            first = is_first_chunk(self, cache)
            rest = (x[:, :, 1:] if first else x).repeat_interleave(2, dim=2)  # (B, C, 2k, h, w)
            x = torch.cat([x[:, :, :1], rest], dim=2) if first else rest  # (B, C, 1+2k or 2k, h, w)
        if self.conv_after:  # CogVideoX: upsample in space, then convolve at the new resolution
            x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")  # (B, C, F', 2h, 2w)
            return self.conv(x, cache)  # (B, Cout, F', 2h, 2w)
        # convolving first costs a quarter, but leaves 2x2 blocks of equal pixels for the next layer to smooth
        x = self.conv(x, cache)  # (B, Cout, F', h, w)
        return F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")  # (B, Cout, F', 2h, 2w)

# ---- MedSora's two frequency-compensation structures ([2] Fig. 4) ----------------------------

class FoldAdapter(nn.Module):
    """Structure (1): h + Conv2d(ReLU(Conv2d(h folded))), `fold` consecutive frames folded into channels.
    MedSora folds its fixed 2-latent chunk (f = 2 only, not causal); I fold a causal window (frames t-fold+1
    .. t): any f, their weights at fold = 2. No final ReLU (the residual could only add); zeroed last conv."""
    def __init__(self, ch, fold):
        super().__init__()
        self.fold = fold
        self.conv1 = nn.Conv2d(ch * fold, ch * fold, 3, padding=1)
        self.conv2 = nn.Conv2d(ch * fold, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h, cache=None):
        hp = with_past(self, h, self.fold - 1, cache) if self.fold > 1 else h  # (B, C, fold-1+f, H, W)
        win = hp.unfold(2, self.fold, 1)  # (B, C, f, H, W, fold): frames t-fold+1 .. t for each t
        y = rearrange(win, 'b c f h w k -> (b f) (k c) h w')  # (B*f, fold*C, H, W): time folded into channels
        y = self.conv2(F.relu(self.conv1(y)))  # (B*f, C, H, W)
        return h + rearrange(y, '(b f) c h w -> b c f h w', b=h.shape[0])  # (B, C, f, H, W)

class UpAdapter(nn.Module):
    """Structure (2), after each decoder up block: h + Conv3d(Dropout(ReLU(Norm(h)))). MedSora's BatchNorm3d
    mixes clips and frames, its 3x3x3 conv lets t see t+1: here per-frame GroupNorm, a zeroed causal conv."""
    def __init__(self, ch, groups, dropout):
        super().__init__()
        self.norm, self.drop, self.conv = nn.GroupNorm(groups, ch), nn.Dropout(dropout), CausalConv3d(ch, ch)
        nn.init.zeros_(self.conv.conv.weight)
        nn.init.zeros_(self.conv.conv.bias)

    def forward(self, h, cache=None):
        return h + self.conv(self.drop(F.relu(per_frame(self.norm, h))), cache)  # (B, C, F, H, W)

def focal_frequency_loss(x_hat, x, alpha=1.0):
    """[3] Sec. 3: mean of w(u, v) * |F_hat(u, v) - F(u, v)|^2 over frames, channels and frequencies, with the
    2-D DFT of each frame ('ortho': with w = 1 the pixel MSE, Parseval) and w = |F_hat - F|^alpha over its
    max per image, detached. x_hat, x: (B, F, C, H, W). w depends on the error only, not on the frequency."""
    d = torch.fft.fft2((x_hat - x).float(), norm="ortho")  # (B, F, C, H, W) complex: F(x_hat) - F(x), linear
    dist = d.real ** 2 + d.imag ** 2  # |F_hat - F|^2, the frequency distance of [3]
    w = dist.detach().sqrt() ** alpha  # [3]'s spectrum weight matrix, |F_hat - F|^alpha
    w = w / w.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)  # in [0, 1] per image; identical images: 0
    return (w * dist).mean()  # the weight is detached: it only focuses the gradient, never moves itself

def gradient_difference_loss(x_hat, x):
    """[5] Eq. 5 with alpha = 1, as a mean: | |x_hat[i, j] - x_hat[i-1, j]| - |x[i, j] - x[i-1, j]| |, plus
    the same along W; x_hat, x: (B, F, C, H, W). L1 accepts a blurred edge, this pays for lost contrast."""
    # torch.diff along H, then W: (B, F, C, H-1, W), then (B, F, C, H, W-1)
    return sum((x_hat.diff(dim=d).abs() - x.diff(dim=d).abs()).abs().mean() for d in (-2, -1))

# ---- encoder and decoder ---------------------------------------------------------------------

def run(blocks, h, cache):
    for block in blocks:
        h = block(h, cache)
    return h

def run_in_chunks(net, x, starts):
    """net(x) for x (B, C, F, H, W), one chunk of frames (each start up to the next) at a time, in order, with
    one cache carrying the causal state across chunks: the same result (to float rounding) in less memory."""
    cache, ends = {}, starts[1:] + [x.shape[2]]
    out = [net(x[:, :, s:e], cache) for s, e in zip(starts, ends)]  # (B, C', F'_i, H', W') each
    return torch.cat(out, dim=2)  # (B, C', F', H', W')

def mid_block(ch, cfg):
    """ResBlock, [attention], ResBlock. No attention by default, as CogVideoX: it could only look within a
    frame (to stay causal), and its (h w)^2 memory per frame would dominate. mid_attn=True: LDM's one."""
    g = cfg.norm_groups
    attn = [FrameAttention(ch, g)] if cfg.mid_attn else []
    return nn.ModuleList([ResBlock3d(ch, ch, g)] + attn + [ResBlock3d(ch, ch, g)])

class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, g = cfg.base_channels, cfg.norm_groups
        self.conv_in = CausalConv3d(cfg.in_channels, ch)
        self.full = nn.ModuleList([ResBlock3d(ch, ch, g) for _ in range(cfg.full_res_blocks)])
        # downsample at each level's *start* (LDM: end): no ResBlock pays for full size (adapter (2) helps)
        self.levels = nn.ModuleList()
        for i, mult in enumerate(cfg.channel_mult):
            blocks = [Downsample(ch, temporal=i < cfg.temporal_downsample)]
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock3d(ch, cfg.base_channels * mult, g))
                ch = cfg.base_channels * mult
            self.levels.append(nn.ModuleList(blocks))
        self.mid = mid_block(ch, cfg)
        self.adapter = FoldAdapter(ch, cfg.fc_fold) if cfg.freq_comp else None  # MedSora structure (1)
        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = CausalConv3d(ch, 2 * cfg.z_channels)  # mu and logvar

    def forward(self, x, cache=None):  # (B, C, F, H, W)
        h = run(self.full, self.conv_in(x, cache), cache)  # (B, base, F, H, W)
        for level in self.levels:
            h = run(level, h, cache)  # (B, ch_i, F_i, H/2^(i+1), W/2^(i+1))
        h = run(self.mid, h, cache)  # (B, ch, f, h, w)
        h = self.adapter(h, cache) if self.adapter is not None else h  # (B, ch, f, h, w)
        return self.conv_out(F.silu(per_frame(self.norm_out, h)), cache)  # (B, 2c, f, h, w)

class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.channel_mult)
        chs = [cfg.base_channels] + [cfg.base_channels * m for m in cfg.channel_mult]  # widths between levels
        self.conv_in = CausalConv3d(cfg.z_channels, chs[n])
        self.mid = mid_block(chs[n], cfg)
        self.adapter = FoldAdapter(chs[n], cfg.fc_fold) if cfg.freq_comp else None  # MedSora structure (1)
        self.levels = nn.ModuleList()
        for i in reversed(range(n)):  # the encoder's levels, backwards: chs[i + 1] channels in, chs[i] out
            temporal = i < cfg.temporal_downsample
            if cfg.up_first:  # an encoder level's mirror (LDM, CogVideoX): upsample, then work at that size
                blocks = [Upsample(chs[i + 1], chs[i], temporal, conv_after=True)]
                blocks += [ResBlock3d(chs[i], chs[i], g) for _ in range(cfg.num_res_blocks)]
            else:  # work, then upsample: a quarter of the cost, and nothing but conv_out at full resolution
                blocks = [ResBlock3d(chs[i + 1], chs[i + 1], g) for _ in range(cfg.num_res_blocks)]
                blocks.append(Upsample(chs[i + 1], chs[i], temporal, conv_after=False))
            if cfg.freq_comp:
                blocks.append(UpAdapter(chs[i], g, cfg.fc_dropout))  # MedSora structure (2), after up blocks
            self.levels.append(nn.ModuleList(blocks))
        self.norm_out = nn.GroupNorm(g, chs[0])
        self.conv_out = CausalConv3d(chs[0], cfg.in_channels)

    def forward(self, z, cache=None):  # (B, c, f, h, w)
        h = run(self.mid, self.conv_in(z, cache), cache)  # (B, ch, f, h, w)
        h = self.adapter(h, cache) if self.adapter is not None else h  # (B, ch, f, h, w)
        for level in self.levels:
            h = run(level, h, cache)  # (B, ch_i, F_i, 2h, 2w)
        return self.conv_out(F.silu(per_frame(self.norm_out, h)), cache)  # (B, C, F, H, W)

# ---- The VAE: encoder + decoder, chunked causal encode/decode, losses, the DiT's normalised latents

class CausalVideoVAE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        # per-channel latent normalisation [4], measured once after VAE training, kept in the checkpoint
        self.register_buffer("latent_shift", torch.zeros(cfg.z_channels))  # (c,)
        self.register_buffer("latent_scale", torch.ones(cfg.z_channels))  # (c,)

    @classmethod
    def from_checkpoint(cls, ckpt):
        """The VAE of any stage's checkpoint (its vae_args and weights), frozen and in eval mode."""
        vae = cls(VAEConfig(**ckpt["vae_args"]))
        vae.load_state_dict(ckpt["vae"])
        return vae.eval().requires_grad_(False)

    def latent_shape(self, num_frames, size):
        """(f, c, h, w) of the latents of a (num_frames, C, H, W) clip; size is H or (H, W)."""
        H, W = (size, size) if isinstance(size, int) else size
        s, t = self.cfg.spatial_factor, self.cfg.temporal_factor
        valid_num_frames(num_frames, t)
        if H % s or W % s:
            raise ValueError(f"height and width must be multiples of {s} for this VAE; got {H}x{W}")
        return (1 + (num_frames - 1) // t, self.cfg.z_channels, H // s, W // s)

    def encode(self, x, chunk_frames=0):
        """x (B, F, C, H, W) in [-1, 1] -> mu, logvar, each (B, f, c, h, w). chunk_frames > 0 (a multiple of
        temporal_factor, e.g. 8) encodes frames 0..chunk_frames, then chunk_frames at a time (CogVideoX)."""
        self.latent_shape(x.shape[1], tuple(x.shape[3:]))  # raises a readable ValueError on bad shapes
        x = rearrange(x, 'b f c h w -> b c f h w')  # (B, C, F, H, W)
        if chunk_frames % self.cfg.temporal_factor:
            raise ValueError(f"chunk_frames={chunk_frames} must be a multiple of "
                             f"{self.cfg.temporal_factor}, e.g. 8")
        h = (run_in_chunks(self.encoder, x, [0] + list(range(1 + chunk_frames, x.shape[2], chunk_frames)))
             if chunk_frames else self.encoder(x))  # (B, 2c, f, h, w)
        mu, logvar = rearrange(h, 'b c f h w -> b f c h w').chunk(2, dim=2)  # 2 x (B, f, c, h, w)
        return mu, logvar.clamp(-30.0, 20.0)  # exp(logvar) stays finite (LDM's clamp)

    def decode(self, z, chunk_latents=0):
        """z (B, f, c, h, w) -> x_hat (B, F, C, H, W), F = 1 + temporal_factor * (f - 1); chunk_latents > 0
        decodes that many latents at a time."""
        z = rearrange(z, 'b f c h w -> b c f h w')  # (B, c, f, h, w)
        x = (run_in_chunks(self.decoder, z, list(range(0, z.shape[2], chunk_latents))) if chunk_latents
             else self.decoder(z))  # (B, C, F, H, W)
        return rearrange(x, 'b c f h w -> b f c h w')  # (B, F, C, H, W)

    def forward(self, x, sample=True):
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu  # [1] Eq. 10
        return self.decode(z), mu, logvar

    @staticmethod
    def kl(mu, logvar):
        """KL(N(mu, exp(logvar)) || N(0, 1)) of [1] App. B, -KL = 1/2 sum(1 + log sigma^2 - mu^2 - sigma^2),
        as a mean over latent elements, not a sum, so that kl_weight does not depend on the clip size."""
        return 0.5 * torch.mean(mu.pow(2) + logvar.exp() - 1.0 - logvar)

    def loss(self, x, out=None):
        """L1 + kl_weight * KL (+ ffl_weight * FFL if freq_comp) (+ gdl_weight * GDL), means over elements ->
        (total, dict(l1, kl[, ffl][, gdl]) detached). out: an earlier forward's (x_hat, mu, logvar) (DDP)."""
        x_hat, mu, logvar = self(x, sample=True) if out is None else out
        l1 = (x_hat - x).abs().mean()  # MedSora: L1 (+ 0.01 LPIPS, which needs AlexNet weights: left out)
        kl = self.kl(mu, logvar)  # MedSora fine-tunes without a KL term; we train the whole VAE, so need it
        total, parts = l1 + self.cfg.kl_weight * kl, dict(l1=l1.detach(), kl=kl.detach())
        if self.cfg.freq_comp and self.cfg.ffl_weight > 0:
            # a focal MSE (Parseval), ~1/7 of the L1 at 20 dB: MedSora's 0.01 would vanish; 1.0 is untuned
            ffl = focal_frequency_loss(x_hat, x, self.cfg.ffl_alpha)
            total, parts["ffl"] = total + self.cfg.ffl_weight * ffl, ffl.detach()
        if self.cfg.gdl_weight > 0:  # [5] Eq. 5, added to the L1 as [5] combines them
            gdl = gradient_difference_loss(x_hat, x)
            total, parts["gdl"] = total + self.cfg.gdl_weight * gdl, gdl.detach()
        return total, parts

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
        if n == 0:
            raise ValueError("measure_latent_stats got no batches: pass some (B, F, C, H, W) videos")
        mean, std = s1 / n, (s2 / n - (s1 / n) ** 2).clamp_min(1e-12).sqrt()  # (c,) each, float64
        self.latent_shift.copy_(mean.float())  # (c,)
        self.latent_scale.copy_(1.0 / std.float())  # (c,)
        return self.latent_shift, self.latent_scale

    @torch.no_grad()  # the diffusion stages keep the VAE frozen
    def encode_latents(self, x, sample=False, chunk_frames=0):
        """Video (B, F, C, H, W) -> normalised latents (B, f, c, h, w), ~N(0, 1) per channel."""
        mu, logvar = (t.float() for t in self.encode(x, chunk_frames))  # float32 under autocast too
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        # Open-Sora stores scale = std and divides; I store 1/std and multiply, like SD's 0.18215.
        return (z - self.latent_shift.view(1, 1, -1, 1, 1)) * self.latent_scale.view(1, 1, -1, 1, 1)

    def decode_latents(self, z, chunk_latents=0):
        """Normalised latents (B, f, c, h, w) -> video (B, F, C, H, W) clamped to [-1, 1]."""
        z = z / self.latent_scale.view(1, 1, -1, 1, 1) + self.latent_shift.view(1, 1, -1, 1, 1)
        return self.decode(z, chunk_latents).clamp(-1.0, 1.0)

if __name__ == "__main__":
    for name, kw in VAE_PRESETS.items():
        n = sum(p.numel() for p in CausalVideoVAE(VAEConfig(**kw)).parameters())
        print(f"{name:8s} {n / 1e6:8.2f} M parameters  ({kw})")
