"""
Training priors: frozen teachers whose features the DiT is pulled towards while it learns to denoise.
Used by train.py (evaluate.py borrows the DINO loader and the flow); sample.py never imports it.

Papers:
  [1] Endora, Li et al. MICCAI 2024, https://arxiv.org/abs/2403.11050  (Sec. 2.3 "prior-guided feature
      facilitation": DINO features of layers 2, 5, 8, 11, a strided conv projector, Eq. 2 Pearson correlation,
      total loss L_DDPM + alpha (1 - Corr), alpha = 0.5)
  [2] MedSora, Wang et al. 2024, https://arxiv.org/abs/2411.01647  (optical-flow alignment, weight 0.1)
  [3] REPA, Yu et al. 2024, https://arxiv.org/abs/2410.06940  (Eq. 8: per-token cosine to a frozen encoder
      after an MLP projector; our dino_mode="token")
  [4] Horn & Schunck, "Determining optical flow", 1981  (Eq. 9 the Jacobi update; the neighbourhood average)
  [5] Barron, Fleet & Beauchemin, IJCV 1994  (angular error between space-time directions (u, v, 1))
  [6] Baker et al., "A database and evaluation methodology for optical flow", IJCV 2011  (flow colour wheel)
  [7] DINO, Caron et al. 2021 (ViT-S/8 teacher); DINOv2 with registers, Darcet et al. 2023 (tokens we drop)
Shapes: B batch, F pixel frames, f latent frames, S = g*g DiT tokens per frame on a g x g grid, D DiT width,
Dt teacher width, n teacher layers, m = teacher grid / g.

Pixel frame -> latent frame: the causal VAE (vae.py) makes latent k from frames 4k-3..4k (latent 0 from frame
0 alone), so the teacher sees frame 4k, the newest one latent k has seen (one teacher pass per latent frame),
and the flow target of latent k is the motion 4k-4 -> 4k, in pixels per latent frame.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ENDORA_PAIRS = 14  # Endora's XL/2 has 14 (spatial, temporal) pairs and aligns DINO layer l with pair l

def latent_frame_index(num_frames, num_latents):
    """Pixel frame shown to the teacher for each latent frame: 4k for latent k (see the module docstring)."""
    if num_latents == 1:
        return [0]
    tf = (num_frames - 1) // (num_latents - 1)  # the VAE's temporal factor, 4
    assert tf * (num_latents - 1) == num_frames - 1, f"{num_frames} frames don't make {num_latents} latents"
    return [k * tf for k in range(num_latents)]

def parse_layers(layers, depth, ref=12):
    """'2,5,8,11' (0-based blocks of a 12-block ViT, Endora [1] supplement) -> the same relative depths in a
    `depth`-block teacher: round((l + 1) depth / 12) - 1."""
    ls = [int(s) for s in str(layers).split(",") if s.strip()]
    if not ls or any(not 0 <= l < ref for l in ls):
        raise SystemExit(f"--dino_layers={layers!r}: give 0-based blocks of a 12-block ViT, e.g. 2,5,8,11")
    return ls, [min(depth - 1, max(0, round((l + 1) * depth / ref) - 1)) for l in ls]

# ----------------------------------------------------------------------------------------------
# The DINO teacher (Endora [1]): a frozen ViT / DINOv2 from transformers, clean frames in, token grids out

class DinoTeacher(nn.Module):
    """Frozen ViT. forward(images (N, 3, H, W) in [-1, 1], grid) -> (N, n, grid, grid, Dt): the tokens of the
    chosen blocks after the final LayerNorm (as Endora's get_special_layers), CLS and register tokens dropped.
    The frames are resized to grid * patch pixels and ImageNet-normalised (Endora feeds [-1, 1]: a bug)."""

    def __init__(self, model, layers="2,5,8,11"):
        super().__init__()
        self.model, c = model.eval().requires_grad_(False), model.config
        self.dim, self.patch, self.depth = c.hidden_size, c.patch_size, c.num_hidden_layers
        self.skip = 1 + getattr(c, "num_register_tokens", 0)  # CLS (+ DINOv2 registers [7]) come first
        self.ref_layers, self.layers = parse_layers(layers, self.depth)
        self.interp = {"interpolate_pos_encoding": True} if c.model_type == "vit" else {}  # DINOv2: always
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode=True):
        return super().train(False)  # important! the teacher stays in eval mode (no dropout), always

    @torch.no_grad()
    def forward(self, images, grid, layers=None):
        R = grid * self.patch
        x = F.interpolate((images.float() + 1) / 2, size=(R, R), mode="bilinear", antialias=True,
                          align_corners=False)  # (N, 3, R, R) in [0, 1]
        out = self.model(pixel_values=(x - self.mean) / self.std, output_hidden_states=True, **self.interp)
        hs = out.hidden_states  # depth + 1 tensors (N, skip + grid^2, Dt); hs[0] is the patch embedding
        layers = self.layers if layers is None else layers
        feats = [self.model.layernorm(hs[l + 1])[:, self.skip:] for l in layers]  # n x (N, grid^2, Dt)
        feats = torch.stack(feats, 1).float()  # (N, n, grid^2, Dt)
        return rearrange(feats, "b k (h w) d -> b k h w d", h=grid)  # (N, n, grid, grid, Dt)

def load_dino(name, device="cpu", layers="2,5,8,11"):
    """Any ViTModel / Dinov2Model checkpoint by hub id (facebook/dino-vits8, as Endora) or local folder."""
    from transformers import AutoConfig, AutoModel, ViTModel
    fix = "use --dino=none, or a local folder written by save_pretrained"
    try:
        kind = AutoConfig.from_pretrained(name).model_type
        if kind not in ("vit", "dinov2", "dinov2_with_registers"):
            raise SystemExit(f"--dino={name!r} is a {kind!r} model, not a ViT/DINOv2 teacher; {fix}")
        # DINO v1 checkpoints have no pooler; ViTModel would otherwise add a random one (unused, but noisy)
        model = (ViTModel.from_pretrained(name, add_pooling_layer=False) if kind == "vit"
                 else AutoModel.from_pretrained(name))
    except Exception as e:  # offline hub id, missing folder, corrupt weights: one line with the fix
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        raise SystemExit(f"cannot load DINO teacher {name!r} ({why}); {fix}")
    return DinoTeacher(model, layers).to(device)

# ----------------------------------------------------------------------------------------------
# Losses

def pearson(a, b, dim=-1, eps=1e-8):
    """Pearson r along dim ([1] Eq. 2), the cosine of the centred vectors (a LayerNorm first changes no r)."""
    a, b = a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True)
    return F.cosine_similarity(a, b, dim=dim, eps=eps)  # [1] Eq. 2

def corr_loss(student, teacher):
    """Endora's 1 - Corr ([1] Eq. 2, Sec. 2.3) as its code has it: channel means, then one Pearson r across
    the S tokens of each (layer, frame). student, teacher: (..., S, D) and (..., S, D') -> loss (...,)."""
    return 1 - pearson(student.float().mean(-1), teacher.float().mean(-1))  # (...,)

def token_cosine_loss(pred, target):
    """REPA [3] Eq. 8 (as 1 - cos, the same up to a constant): per token, then the mean over axis -2."""
    return (1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean(-1)  # (...,)

# ----------------------------------------------------------------------------------------------
# Optical flow without weights: multi-scale Horn-Schunck [4] with warping, in torch

def _conv3(x, k):
    """Same-size 3x3 filtering of every channel of (N, C, H, W), replicate borders (HS's Neumann boundary)."""
    C = x.shape[1]
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")  # (N, C, H+2, W+2)
    return F.conv2d(x, k.to(x).expand(C, 1, 3, 3), groups=C)  # (N, C, H, W)

HS_AVG = torch.tensor([[1, 2, 1], [2, 0, 2], [1, 2, 1]]).float().view(1, 1, 3, 3) / 12  # [4] Fig. 2 weights
BLUR = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]]).float().view(1, 1, 3, 3) / 16  # binomial pre-smoothing
DX = torch.tensor([[0, 0, 0], [-1, 0, 1], [0, 0, 0]]).float().view(1, 1, 3, 3) / 2  # central difference

def warp(img, flow):
    """img (N, C, H, W) sampled at x + flow(x), flow (N, 2, H, W) in pixels: frame 2 pulled onto frame 1."""
    N, _, H, W = img.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=img.device), torch.arange(W, device=img.device),
                            indexing="ij")  # (H, W) each
    x = (xs + flow[:, 0]) * 2 / max(W - 1, 1) - 1  # (N, H, W) in [-1, 1]
    y = (ys + flow[:, 1]) * 2 / max(H - 1, 1) - 1  # (N, H, W)
    grid = torch.stack([x, y], -1)  # (N, H, W, 2)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)  # as img

@torch.no_grad()
def horn_schunck(I1, I2, alpha=0.1, iters=30, min_size=8, warps=2):
    """Dense flow I1 -> I2 (I1(x) ~ I2(x + flow(x))), I (N, 1, H, W) grey in [0, 1] -> (N, 2, H, W) in pixels.
    Coarse to fine over an image pyramid (halving down to min_size), `warps` times per level: warp I2 by the
    flow u0, linearise brightness constancy around it, run `iters` Jacobi steps of [4] Eq. 9 incrementally:
        u = u_bar - Ix (Ix (u_bar - u0) + Iy (v_bar - v0) + It) / (alpha^2 + Ix^2 + Iy^2), and the same for v;
    alpha is the smoothness weight [4] Eq. 8, in intensity units per pixel."""
    with torch.autocast(I1.device.type, enabled=False):  # important! bf16 derivatives swamp sub-pixel motion
        pyr = [(I1.float(), I2.float())]
        while min(pyr[-1][0].shape[-2:]) >= 2 * min_size:
            pyr.append(tuple(F.avg_pool2d(_conv3(x, BLUR), 2) for x in pyr[-1]))  # (N, 1, H/2, W/2) each
        flow = torch.zeros(I1.shape[0], 2, *pyr[-1][0].shape[-2:], device=I1.device)  # (N, 2, h, w) coarsest
        for a, b in reversed(pyr):
            if flow.shape[-2:] != a.shape[-2:]:  # to the finer level: twice the size, twice the pixels
                flow = 2 * F.interpolate(flow, size=a.shape[-2:], mode="bilinear", align_corners=False)
            a = _conv3(a, BLUR)
            for _ in range(warps):
                bw = warp(_conv3(b, BLUR), flow)  # (N, 1, H, W)
                mid = (a + bw) / 2  # gradients of the average of both frames (more symmetric than I1's alone)
                Ix, Iy, It = _conv3(mid, DX), _conv3(mid, DX.transpose(-1, -2)), bw - a  # (N, 1, H, W) each
                denom = alpha ** 2 + Ix ** 2 + Iy ** 2
                u0 = flow  # the data term is linearised around the flow at the start of this warp
                for _ in range(iters):
                    ub = _conv3(flow, HS_AVG)  # (N, 2, H, W) neighbourhood averages u_bar, v_bar [4]
                    r = (Ix * (ub[:, :1] - u0[:, :1]) + Iy * (ub[:, 1:] - u0[:, 1:]) + It) / denom
                    flow = ub - torch.cat([Ix, Iy], 1) * r  # [4] Eq. 9; r (N, 1, H, W)
        return flow

def to_grey(video):
    """(..., 3, H, W) in [-1, 1] -> (..., 1, H, W) luma in [0, 1] (ITU-R 601 weights)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=video.device).view(3, 1, 1)
    return ((video.float() + 1) / 2 * w).sum(-3, keepdim=True)

# The Middlebury flow wheel [6], red-yellow-green-cyan-blue-magenta: (55, 3) in [0, 1]
_SEGMENTS = [(15, lambda i: (1, i, 0)), (6, lambda i: (1 - i, 1, 0)), (4, lambda i: (0, 1, i)),
             (11, lambda i: (0, 1 - i, 1)), (13, lambda i: (i, 0, 1)), (6, lambda i: (1, 0, 1 - i))]
WHEEL = torch.tensor([c(k / n) for n, c in _SEGMENTS for k in range(n)], dtype=torch.float32)

def flow_to_rgb(flow):
    """(N, 2, H, W) -> (N, 3, H, W) in [0, 1]: hue = direction, saturation = speed / the frame's max speed [6]
    (what MedSora's flow_to_image feeds to DINO)."""
    wheel = WHEEL.to(flow.device)  # (K, 3)
    u, v = flow[:, 0], flow[:, 1]  # (N, H, W) each
    rad = torch.sqrt(u ** 2 + v ** 2)
    rad = rad / (rad.amax((1, 2), keepdim=True) + 1e-5)  # (N, H, W) in [0, 1]
    fk = (torch.atan2(-v, -u) / torch.pi + 1) / 2 * (len(wheel) - 1)  # (N, H, W) position on the wheel
    k0 = fk.floor().long().clamp(0, len(wheel) - 1)
    frac = (fk - k0)[..., None]  # (N, H, W, 1)
    col = (1 - frac) * wheel[k0] + frac * wheel[(k0 + 1) % len(wheel)]  # (N, H, W, 3)
    return rearrange(1 - rad[..., None] * (1 - col), "n h w c -> n c h w")  # (N, 3, H, W), white = still

def latent_flow(video, num_latents, **hs):
    """Flow per latent frame, (B, F, 3, H, W) -> (B, f, 2, H, W) in pixels per latent frame: the sum of the
    frame-to-frame flows over latent k's frames 4k-4 -> 4k (an Eulerian sum, fine for small motion); latent 0
    takes latent 1's window. Not averaged over all frames as MedSora's code does, which erases time."""
    B, Fp = video.shape[:2]
    if num_latents < 2:
        raise ValueError(f"flow alignment needs >= 2 latent frames (num_frames >= 5), not {num_latents}")
    g = to_grey(video)  # (B, F, 1, H, W)
    pair = horn_schunck(g[:, :-1].flatten(0, 1), g[:, 1:].flatten(0, 1), **hs)  # (B*(F-1), 2, H, W)
    pair = pair.unflatten(0, (B, Fp - 1))  # (B, F-1, 2, H, W)
    cum = torch.cat([torch.zeros_like(pair[:, :1]), pair.cumsum(1)], 1)  # (B, F, 2, H, W) moved since frame 0
    idx, ks = latent_frame_index(Fp, num_latents), range(num_latents)
    start, end = [idx[max(k - 1, 0)] for k in ks], [idx[max(k, 1)] for k in ks]
    return cum[:, end] - cum[:, start]  # (B, f, 2, H, W)

# ----------------------------------------------------------------------------------------------
# The learnable heads: one module, saved under ckpt["priors"], used only by the training losses

def mlp(d_in, d_hidden, d_out):
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_hidden), nn.SiLU(),
                         nn.Linear(d_hidden, d_out))  # REPA's 3-layer projector [3]

class PriorHeads(nn.Module):
    """The projectors of both priors and their losses. forward(feats, targets) -> dict of unweighted losses
    ('dino', 'flow'); feats are the DiT's token features (B, f, S, D) of the blocks in self.taps, in order.
    DINO, corr [1]: one Conv2d(Dt, D, m, stride m, no bias) shared by the n layers (Endora's `cov`), teacher
      grid m*g -> DiT grid g; kernel = stride = m as in Endora's code (the paper's 3x3 s2 window straddles
      the next token, blurring the position-wise match that Pearson scores).
    DINO, token [3]: an MLP per layer from the DiT width to Dt; the teacher grid is average-pooled m x m to g.
    Flow [2]: an MLP to (u, v, 1) per token (flow="hs") or to the flow image's DINO tokens (flow="dino")."""

    def __init__(self, hidden_size, depth, grid, dino_dim=0, dino_layers="2,5,8,11", dino_mode="corr",
                 dino_grid_mult=2, flow="none", flow_dim=3):
        super().__init__()
        assert dino_mode in ("corr", "token"), f"dino_mode={dino_mode!r}: use corr or token"
        assert flow in ("none", "hs", "dino"), f"flow={flow!r}: use none, hs or dino"
        self.args = dict(hidden_size=hidden_size, depth=depth, grid=grid, dino_dim=dino_dim,
                         dino_layers=dino_layers, dino_mode=dino_mode, dino_grid_mult=dino_grid_mult,
                         flow=flow, flow_dim=flow_dim)  # ckpt["prior_args"]: a resume loads heads built alike
        D, P, m = hidden_size, depth // 2, dino_grid_mult
        self.grid, self.m, self.dino_mode, self.flow = grid, m, dino_mode, flow
        self.dino_taps, self.flow_tap = [], None
        if dino_dim:
            ref, _ = parse_layers(dino_layers, 12)
            self.dino_taps = [2 * max(0, round((l + 1) * P / ENDORA_PAIRS) - 1) for l in ref]  # spatial ones
            if dino_mode == "corr":
                self.dino_proj = nn.Conv2d(dino_dim, D, kernel_size=m, stride=m, bias=False)  # [1]'s Conv(.)
            else:
                self.dino_proj = nn.ModuleList([mlp(D, 2 * D, dino_dim) for _ in ref])
        if flow != "none":
            self.flow_tap = 2 * max(1, round(P / 3)) - 1  # temporal, ~depth/3: motion needs mixed frames
            self.flow_proj = mlp(D, 2 * D, flow_dim)
        self.taps = tuple(sorted(set(self.dino_taps + ([] if self.flow_tap is None else [self.flow_tap]))))

    def forward(self, feats, targets):
        at = dict(zip(self.taps, feats))  # block index -> (B, f, S, D)
        losses = {}
        if self.dino_taps:
            x = torch.stack([at[i] for i in self.dino_taps], 2)  # (B, f, n, S, D) student
            y = targets["dino"]  # (B, f, n, m*g, m*g, Dt) teacher
            B, f, n, G = y.shape[:4]
            assert G == self.m * self.grid, f"teacher grid {G} is not {self.m} x the DiT grid {self.grid}"
            y = rearrange(y, "b f n h w d -> (b f n) d h w")  # (B*f*n, Dt, m*g, m*g)
            corr = self.dino_mode == "corr"
            y = self.dino_proj(y) if corr else F.avg_pool2d(y, self.m)  # (B*f*n, D or Dt, g, g): Conv(A) [1]
            y = rearrange(y, "(b f n) d h w -> b f n (h w) d", b=B, f=f)  # (B, f, n, S, D or Dt)
            if corr:
                losses["dino"] = corr_loss(x, y).mean()  # mean over (sample, frame, layer) of 1 - r [1] Eq. 2
            else:
                pred = torch.stack([p(x[:, :, k]) for k, p in enumerate(self.dino_proj)], 2)  # as y
                losses["dino"] = token_cosine_loss(pred, y).mean()  # [3] Eq. 8
        if self.flow_tap is not None:
            pred = self.flow_proj(at[self.flow_tap])  # (B, f, S, flow_dim)
            # 1 - cos per token [2]; not MedSora's 1/(t+1)-weighted, 0.01-hinged loss (zero at most steps)
            losses["flow"] = token_cosine_loss(pred, targets["flow"]).mean(1).mean()
        return losses

@torch.no_grad()
def prior_targets(heads, teacher, video, num_latents):
    """The frozen side of the losses for a batch of clean clips (B, F, 3, H, W) in [-1, 1] (what the VAE
    encodes): dict(dino=(B, f, n, m*g, m*g, Dt), flow=(B, f, S, 3) or (B, f, S, Dt))."""
    g, m, B = heads.grid, heads.m, len(video)
    idx = latent_frame_index(video.shape[1], num_latents)
    out = {}
    if heads.dino_taps:
        out["dino"] = teacher(video[:, idx].flatten(0, 1), m * g).unflatten(0, (B, num_latents))
    if heads.flow == "hs":
        fl = F.adaptive_avg_pool2d(latent_flow(video, num_latents).flatten(0, 1), g)  # (B*f, 2, g, g)
        fl = rearrange(fl, "(b f) c h w -> b f (h w) c", f=num_latents)  # (B, f, S, 2)
        out["flow"] = torch.cat([fl, torch.ones_like(fl[..., :1])], -1)  # (B, f, S, 3): [5]'s (u, v, 1)
    elif heads.flow == "dino":  # MedSora: flow images through DINO; here its last block's tokens
        rgb = flow_to_rgb(latent_flow(video, num_latents).flatten(0, 1)) * 2 - 1  # (B*f, 3, H, W) in [-1, 1]
        tok = teacher(rgb, m * g, layers=[teacher.depth - 1])[:, 0]  # (B*f, m*g, m*g, Dt)
        tok = F.avg_pool2d(rearrange(tok, "k h w d -> k d h w"), m)  # (B*f, Dt, g, g)
        out["flow"] = rearrange(tok, "(b f) d h w -> b f (h w) d", f=num_latents)  # (B, f, S, Dt)
    return out

def build_priors(cfg, dit_cfg, device, stage, init=None):
    """From train.py's config: (heads, teacher), or (None, None) when no prior is on in this stage.
    init: a checkpoint whose 'priors' are loaded when they were built with the same arguments (resume)."""
    on = stage in [s.strip() for s in cfg.prior_stages.split(",")]
    use_dino = cfg.dino != "none" and cfg.dino_weight > 0
    if not on or not (use_dino or cfg.flow != "none"):
        return None, None
    if cfg.flow == "dino" and cfg.dino == "none":
        raise SystemExit("--flow=dino feeds flow images to the DINO teacher: set --dino=MODEL, or --flow=hs")
    if cfg.flow != "none" and dit_cfg.num_frames < 2:
        raise SystemExit(f"--flow={cfg.flow} needs at least 2 latent frames: use --num_frames=5 or more")
    teacher = load_dino(cfg.dino, device, cfg.dino_layers) if use_dino or cfg.flow == "dino" else None
    heads = PriorHeads(dit_cfg.hidden_size, dit_cfg.depth, dit_cfg.input_size // dit_cfg.patch_size,
                       dino_dim=teacher.dim if use_dino else 0, dino_layers=cfg.dino_layers,
                       dino_mode=cfg.dino_mode, dino_grid_mult=cfg.dino_grid_mult, flow=cfg.flow,
                       flow_dim=teacher.dim if cfg.flow == "dino" else 3).to(device)
    if init and init.get("prior_args") == heads.args:
        heads.load_state_dict(init["priors"])
    return heads, teacher

def describe(heads, teacher, cfg):
    """One log line: what is aligned with what."""
    parts = []
    if heads.dino_taps:
        G = heads.m * heads.grid
        parts.append(f"DINO {cfg.dino} ({cfg.dino_mode}, x{cfg.dino_weight}): teacher blocks "
                     f"{teacher.layers} at {G}x{G} tokens -> DiT blocks {heads.dino_taps}")
    if heads.flow_tap is not None:
        parts.append(f"flow ({cfg.flow}, x{cfg.flow_weight}) -> DiT block {heads.flow_tap}")
    return "; ".join(parts) + f"; {sum(p.numel() for p in heads.parameters()) / 1e6:.2f} M projector params"
