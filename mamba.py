"""
Selective state-space (Mamba) mixers in plain PyTorch, and the spiral scan orders and the causal temporal
scan that turn them into MedSora's video layers. No Triton, no CUDA kernels: it runs on a laptop CPU.

Suggest reading the following before/while reading the code:
    [1] Mamba (Gu & Dao, arXiv 2312.00752): Alg. 2 (selective SSM), Eq. 2 (recurrence), Eq. 4 (discretisation)
    [2] Mamba-2 / SSD (Dao & Gu, arXiv 2405.21060): Sec. 6 (chunked SSD) and Listing 1 (ssd_minimal)
    [3] MedSora (arXiv 2411.01647): bidirectional spiral spatial scan + causal temporal scan.
`python bench.py --what=scan` times the two scans; test_dit.py checks that they agree.

Glossary (code name: paper symbol):
    x:        (b, L, H, P) SSM input, x_t in [1] Eq. 2
    z:        (b, L, H*P) gate branch ("res" in mamba-minimal)
    B, C:     (b, L, N) input / output matrices B_t, C_t, shared by all heads (ngroups = 1)
    dt:       (b, L, H) step size Delta_t, one per head ([2] scalar-times-identity A)
    A_log, A: (H,) A = -exp(A_log) < 0, one scalar decay rate per head
    D:        (H,) skip connection y += D x ([1] Algorithm 2, the "D" term)
    h:        (b, H, P, N) hidden state h_t of each head
    N:        d_state, state size;  P: headdim;  H: nheads = d_inner / P;  L: sequence length
    b:        batch of sequences (frames B*F for spatial layers, positions B*h*w for temporal)
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

@dataclass
class MambaConfig:
    d_model: int = 256           # width D of the tokens that come in and go out
    d_state: int = 64            # N, state size per head (Mamba-1: 16, Mamba-2: 64-128, MedSora: 128)
    d_conv: int = 4              # kernel of the causal depthwise conv before the SSM
    expand: int = 2              # d_inner = expand * d_model
    headdim: int = 64            # P, channels per head (MedSora: 64)
    chunk_size: int = 64         # SSD chunk length T; work per chunk is T x T (MedSora: 256)
    dt_min: float = 1e-3         # dt at init ~ log-uniform in [dt_min, dt_max] (official Mamba init)
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # ... and at least this
    A_init_min: float = 1.0      # A at init ~ U(A_init_min, A_init_max) per head (Mamba-2 init)
    A_init_max: float = 16.0
    bias: bool = False           # bias in in_proj / out_proj (Mamba-2 and MedSora: none)
    out_init_std: float = 0.02   # std of out_proj: small but nonzero, the block's gate does the rest
    use_ref_scan: bool = False   # True: use the slow Python loop (tests, debugging)

    def __post_init__(self):
        self.d_inner = self.expand * self.d_model  # E*D in [1]
        if self.d_inner % self.headdim != 0:
            raise ValueError(f"MambaConfig: expand*d_model = {self.d_inner} is not divisible by "
                             f"headdim = {self.headdim}; pick a headdim that divides it")
        self.nheads = self.d_inner // self.headdim  # H

# ---- The two scans. Both compute, per head, with a (P, N) state h:
#     h_t = exp(dt_t * A) h_{t-1} + dt_t * x_t B_t^T      [1] Eq. 2a, A_bar = exp(dt A) by Eq. 4
#     y_t = h_t C_t                                       [1] Eq. 2b
# B_bar = dt * B (Euler, as Mamba-2 and mamba-minimal), not [1] Eq. 4's ZOH: simpler, O(dt^2) apart. Shapes:
# x (b, L, H, P), dt (b, L, H), A (H,), B and C (b, L, N), shared by heads -> y (b, L, H, P). Caller adds D.

def ssm_scan_ref(x, dt, A, B, C):
    """The obvious sequential recurrence, one time step per Python iteration. The reference."""
    b, L, H, P = x.shape
    h = x.new_zeros(b, H, P, B.shape[-1])  # (b, H, P, N) state starts at zero
    ys = []
    # I unbind once rather than index x[:, t]: each x[:, t] would backprop a full-size zero tensor, O(L^2)
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):
        decay = torch.exp(dt_t * A)  # (b, H)  A_bar_t = exp(Delta_t A), [1] Eq. 4
        dBx = (dt_t[..., None] * x_t)[..., None] * B_t[:, None, None, :]  # (b, H, P, N)  B_bar_t x_t
        h = decay[..., None, None] * h + dBx  # (b, H, P, N)  [1] Eq. 2a
        ys.append(torch.einsum('bhpn,bn->bhp', h, C_t))  # (b, H, P)  [1] Eq. 2b
    return torch.stack(ys, dim=1)  # (b, L, H, P)

def segsum(a):
    """out[..., i, j] = a[j+1] + ... + a[i] for i >= j (0 on the diagonal), -inf above it. A masked cumsum,
    not cumsum[i] - cumsum[j], which loses ~1e-4 to cancellation at |cumsum| ~ 1e3 (and exp(+cumsum)
    overflows). As a = dt*A <= 0, every entry is <= 0 and its exp() lies in [0, 1]."""
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)  # (..., T, T)  a[..., i, j] = a_i
    ones = torch.ones(T, T, dtype=torch.bool, device=a.device)
    a = a.masked_fill(~torch.tril(ones, diagonal=-1), 0.0)  # keep a_i only for i > j
    s = a.cumsum(dim=-2)  # (..., T, T)  sum over j < k <= i
    return s.masked_fill(~torch.tril(ones), -math.inf)  # (..., T, T)  -inf -> exp = 0 (causal)

def ssm_scan(x, dt, A, B, C, chunk_size=64):
    """The recurrence of `ssm_scan_ref` by the chunked SSD algorithm of [2] Sec. 6: in a chunk of T steps one
    masked T x T matmul ("attention-like" dual form), across chunks a recurrence; memory O(L*T), not L^2."""
    b, L, H, P = x.shape
    T = min(chunk_size, L)  # a short sequence is one chunk: no padding up to chunk_size
    pad = (-L) % T
    if pad:  # I pad the end to a multiple of T; the scan is causal, so padding can't touch y[:L]
        x = F.pad(x, (0, 0, 0, 0, 0, pad))  # (b, L', H, P)
        dt, B, C = (F.pad(v, (0, 0, 0, pad)) for v in (dt, B, C))  # (b, L', H), (b, L', N) x 2; dt = 0: inert
    X = rearrange(x * dt[..., None], 'b (c l) h p -> b c l h p', l=T)  # (b, c, T, H, P)  B_bar = dt B
    a = rearrange(dt * A, 'b (c l) h -> b h c l', l=T)  # (b, H, c, T)  log A_bar_t = dt_t A <= 0
    B, C = (rearrange(v, 'b (c l) n -> b c l n', l=T) for v in (B, C))  # (b, c, T, N) each
    a_cum = a.cumsum(dim=-1)  # (b, H, c, T)  log-decay from the chunk start, <= 0

    # 1. intra-chunk (diagonal blocks): y_i = sum_{j<=i} C_i.B_j exp(a_{j+1}+..+a_i) X_j, [2] Sec. 6
    S = segsum(a)  # (b, H, c, T, T)
    decay = torch.exp(S)  # (b, H, c, T, T)  the 1-semiseparable mask L of [2]
    CB = torch.einsum('bcln,bcsn->bcls', C, B)  # (b, c, T, T)  C_i . B_j, shared by the heads
    y_diag = torch.einsum('bhcls,bcshp->bclhp', decay * CB[:, None], X)  # (b, c, T, H, P)

    # 2. each chunk's end state from a zero start (low-rank blocks' right factor); S's last row: decay to end
    to_end = torch.exp(S[..., -1, :])  # (b, H, c, T)
    states = torch.einsum('bcsn,bhcs,bcshp->bchpn', B, to_end, X)  # (b, c, H, P, N)

    # 3. pass states across chunks: Eq. 2a, one step per chunk (a loop: clearer than [2]'s segsum, as fast)
    chunk_decay = torch.exp(a_cum[..., -1])  # (b, H, c)  total decay of each chunk
    h = torch.zeros_like(states[:, 0])  # (b, H, P, N)
    h_in = []
    for states_c, decay_c in zip(states.unbind(1), chunk_decay.unbind(2)):
        h_in.append(h)  # the state entering chunk c
        h = decay_c[..., None, None] * h + states_c  # (b, H, P, N)
    h_in = torch.stack(h_in, dim=1)  # (b, c, H, P, N)

    # 4. what the incoming state contributes inside each chunk (left factor of the low-rank blocks)
    y_off = torch.einsum('bcln,bchpn,bhcl->bclhp', C, h_in, torch.exp(a_cum))  # (b, c, T, H, P)
    return rearrange(y_diag + y_off, 'b c l h p -> b (c l) h p')[:, :L]  # (b, L, H, P): the padding cut off

# ---- The mixer: Mamba-2's block without the residual, what MedSora runs in each sub-layer

class MambaMixer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d_in, N, H = cfg.d_inner, cfg.d_state, cfg.nheads
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_in + 2 * N + H, bias=cfg.bias)  # z, x, B, C, dt (Mamba-2)
        conv_dim = d_in + 2 * N  # Mamba-2 convolves x, B, C (Mamba-1: x); depthwise, made causal by a cut
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, cfg.d_conv, groups=conv_dim, padding=cfg.d_conv - 1)
        # official dt init: dt ~ logU[dt_min, dt_max], floored, stored as softplus^-1(dt) to give dt back
        log_dt = torch.rand(H) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        dt = torch.exp(log_dt).clamp(min=cfg.dt_init_floor)  # (H,)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # (H,)  softplus^-1(dt)
        A = torch.empty(H).uniform_(cfg.A_init_min, cfg.A_init_max)  # (H,)
        self.A_log = nn.Parameter(torch.log(A))  # (H,) I store log so A = -exp(A_log) stays negative
        self.D = nn.Parameter(torch.ones(H))  # (H,)
        # A_log, D, dt_bias are 1-D, so the "decay iff dim >= 2" optimizer rule skips them, as it should
        self.norm = nn.RMSNorm(d_in, eps=1e-5)
        self.out_proj = nn.Linear(d_in, cfg.d_model, bias=cfg.bias)
        nn.init.normal_(self.out_proj.weight, std=cfg.out_init_std)

    def forward(self, u):
        """u: (b, L, d_model), a batch of sequences already in scan order -> (b, L, d_model).
        Official implementation: state-spaces/mamba, mamba_ssm/modules/mamba2_simple.py"""
        cfg, L = self.cfg, u.shape[1]
        d_in, N, H = cfg.d_inner, cfg.d_state, cfg.nheads
        # (b, L, d_in), (b, L, d_in+2N), (b, L, H)
        z, xBC, dt = self.in_proj(u).split([d_in, d_in + 2 * N, H], dim=-1)
        xBC = self.conv1d(xBC.transpose(1, 2))[..., :L]  # (b, d_in+2N, L)  keep the first L: causal
        xBC = F.silu(xBC.transpose(1, 2))  # (b, L, d_in+2N)
        x, B, C = xBC.split([d_in, N, N], dim=-1)  # (b, L, d_in), (b, L, N), (b, L, N)  Alg. 2 lines 3-4
        x = rearrange(x, 'b l (h p) -> b l h p', p=cfg.headdim)  # (b, L, H, P)
        # the scan is a long product of decays, so I run it in (at least) float32, even under autocast
        st = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=u.device.type, enabled=False):
            dt = F.softplus(dt.to(st) + self.dt_bias.to(st))  # (b, L, H)  Delta, Alg. 2 line 5
            A = -torch.exp(self.A_log.to(st))  # (H,)  Alg. 2 line 2
            xs, B, C = x.to(st), B.to(st), C.to(st)
            scan = ssm_scan_ref if cfg.use_ref_scan else lambda *a: ssm_scan(*a, cfg.chunk_size)
            y = scan(xs, dt, A, B, C)  # (b, L, H, P)  Alg. 2 lines 6-7
            y = y + xs * self.D.to(st)[:, None]  # (b, L, H, P)  the D skip
            y = rearrange(y, 'b l h p -> b l (h p)')  # (b, L, d_in)
            y = self.norm(y * F.silu(z.to(st)))  # (b, L, d_in)  gated RMSNorm: norm(y * silu(z)), Mamba-2
        return self.out_proj(y.to(x.dtype))  # (b, L, d_model)

# ---- Scan orders: a walk w (LongTensor of token indices); the mixer sees x[:, w], y[:, argsort(w)] undoes it

def spiral_order(h, w, clockwise=True):
    """A true spiral over an h x w grid (row-major token index r*w + c): from the top-left corner inward,
    every step to a 4-neighbour. Clockwise goes right along the top row first, counter-clockwise down the left
    column first (MedSora's two spirals). MedSora's CrossScan gathers with the rank map, not the walk, so its
    sequence jumps between non-adjacent cells; gathering with the walk keeps sequence neighbours adjacent."""
    # counter-clockwise = the clockwise spiral of the transposed grid, mapped back
    rc = _spiral_cells(h, w) if clockwise else [(r, c) for c, r in _spiral_cells(w, h)]
    return torch.tensor([r * w + c for r, c in rc], dtype=torch.long)  # (h*w,)

def _spiral_cells(h, w):
    top, bottom, left, right = 0, h - 1, 0, w - 1
    cells = []
    while top <= bottom and left <= right:  # peel one ring per iteration
        cells += [(top, c) for c in range(left, right + 1)]  # right along the top row
        cells += [(r, right) for r in range(top + 1, bottom + 1)]  # down the right column
        if top < bottom:
            cells += [(bottom, c) for c in range(right - 1, left - 1, -1)]  # left along the bottom
        if left < right:
            cells += [(r, left) for r in range(bottom - 1, top, -1)]  # up the left column
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return cells

def spiral_variants(h, w):
    """The 8 spirals: {clockwise, counter-clockwise} x 4 start corners, by flips (which keep neighbours)."""
    r, c = torch.arange(h * w) // w, torch.arange(h * w) % w  # (h*w,) row, column of each token
    hflip, vflip = r * w + (w - 1 - c), (h - 1 - r) * w + c  # (h*w,) token index after the flip
    walks = []
    for cw in (True, False):
        base = spiral_order(h, w, clockwise=cw)  # (h*w,)
        walks += [base, hflip[base], vflip[base], vflip[hflip[base]]]  # (h*w,) each
    return walks

# ---- The layers dit.py uses: pure mixers; its adaLN-Zero block does LayerNorm, modulation, residual, gate

class SpatialMamba(nn.Module):
    """Bidirectional spiral scan over the tokens of single frames (MedSora). (N, h*w, D) -> same."""
    def __init__(self, d_model, grid, layer_idx=0, **cfg):
        super().__init__()
        self.mixer = MambaMixer(MambaConfig(d_model=d_model, **cfg))
        walk = spiral_variants(*grid)[layer_idx % 8]  # (h*w,) layers cycle through the 8 spirals
        self.register_buffer('walk', walk, persistent=False)  # (h*w,)
        self.register_buffer('inv', torch.argsort(walk), persistent=False)  # (h*w,) inverse permutation

    def forward(self, x):
        n, L, _ = x.shape
        assert L == len(self.walk), f"SpatialMamba got {L} tokens per frame, its grid has {len(self.walk)}"
        xs = x[:, self.walk]  # (N, L, D) in spiral order
        # forward and reverse spiral through ONE mixer (shared weights, as MedSora), stacked: one scan
        ys = self.mixer(torch.cat([xs, xs.flip(1)], dim=0))  # (2N, L, D)
        y = 0.5 * (ys[:n] + ys[n:].flip(1))  # (N, L, D) average of the two directions, spiral order
        return y[:, self.inv]  # (N, L, D) back in raster order

class TemporalMamba(nn.Module):
    """Causal scan along time at each position: (N, F, D) -> same, N = B*h*w ('(B F) L D -> (B L) F D')."""
    def __init__(self, d_model, **cfg):
        super().__init__()
        self.mixer = MambaMixer(MambaConfig(d_model=d_model, **cfg))

    def forward(self, x):
        return self.mixer(x)  # (N, F, D)
