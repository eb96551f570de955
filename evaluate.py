"""
Measure a medvid checkpoint: prompt following on the synthetic benchmark, temporal quality, Frechet
distances, VAE fidelity. Prints a table and writes the same numbers as JSON.

  python evaluate.py --ckpt=out/tiny/instruct.pt          # tiny preset on CPU: about 6 minutes
  python evaluate.py --ckpt=out/tiny/vae.pt               # a VAE-only checkpoint: VAE fidelity only
  python evaluate.py --ckpt=... --data=real.csv --i3d=i3d_torchscript.pt --dino=facebook/dino-vits8

What is measured, and from which paper:
  prompt following  our analogue of Bora's (arXiv 2407.08944) on synthetic.py's benchmark: held-out caption
                    templates, a small video classifier for the modality, one pixel analyser per attribute
  temporal quality  VBench (Huang et al. 2024): temporal flickering (exact), dynamic degree (priors.py's
                    Horn-Schunck flow for RAFT: a proxy), motion smoothness (linear interpolation for AMT: a
                    proxy), subject consistency (DINO, only when --dino loads)
  Frechet distances FID/FVD (Heusel et al. 2017, Eq. 6; Unterthiner et al. 2018) on the benchmark classifier's
                    features ("*-proxy": not comparable to papers); I3D (StyleGAN-V, 16 frames, 224 px), DINO
  VAE fidelity      PSNR, SSIM (Wang et al. 2004, Eq. 13), the high-frequency error MedSora's frequency
                    compensation targets; on held-out synthetic clips and real ones (--real_clips)

Glossary: gen = generated clips, ref = rendered clips with the same attributes (the "real" side on the
synthetic benchmark), mu/sigma = feature mean/covariance, F frames, S pixels, uint8 clips are (F, S, S, 3).
"""
import glob
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
import diffusion
from dit import masked_mean
from priors import horn_schunck, load_dino
from sample import generate, load_models
from synthetic import ANALYSERS, ATTR_VALUES, CAPTIONS, HELDOUT, heldout_caption, train_caption

HERE = os.path.dirname(os.path.abspath(__file__))

@dataclass
class EvalConfig:
    ckpt: str = "out/tiny/instruct.pt"  # a DiT checkpoint (align/instruct) or a VAE-only one (vae.pt)
    what: str = "all"              # all | prompt | temporal | frechet | vae
    out: str = ""                  # JSON file; '' = eval_{checkpoint name}.json beside the checkpoint
    num_clips: int = 80            # generated clips, modalities in turn (Endora's FVD: 2048 of 16 frames)
    steps: int = 50                # DDIM steps
    cfg_scale: float = 4.0
    motion_cfg_scale: float = 0.0  # guidance of the part that changes over frames; 0 = cfg_scale (guided_eps)
    words: str = "heldout"         # heldout: prompts in words no training caption uses | train: training's
    eta: float = 0.0               # DDIM stochasticity: 0 deterministic, 1 = DDPM's variance
    weights: str = "ema"           # ema | model: the DiT's EMA copy or its raw training weights
    batch_size: int = 16           # clips generated (and featurised) at once
    seed: int = 0
    device: str = "auto"
    classifier: str = "out/eval_cache"  # folder of the benchmark classifier, trained on first use and cached
    classifier_clips: int = 1500   # rendered clips it trains on (+ 20% held out to report its accuracy)
    data: str = ""                 # CSV of real clips (train.py's format): FID/FVD of clips for its captions
    real_clips: str = os.path.join(HERE, "..", "shared", "data", "real_clips")  # a folder of real videos
    vae_clips: int = 40            # held-out synthetic clips for VAE fidelity
    vae_size: int = 64             # pixels of the real clips for VAE fidelity (any multiple of its factor)
    i3d: str = ""                  # path to StyleGAN-V's i3d_torchscript.pt: real FVD
    dino: str = ""                 # DINO/DINOv2 hub id or folder: FID on DINO features + subject consistency

# What each option takes, checked before any work (data.check_options)
RULES = dict(what=("all", "prompt", "temporal", "frechet", "vae"), eta=(0, math.inf),
             motion_cfg_scale=(0, math.inf), words=("heldout", "train"), weights=("ema", "model"),
             **dict.fromkeys("num_clips steps batch_size classifier_clips vae_clips vae_size".split(),
                             (1, math.inf)))

def benchmark_set(n, num_frames, size, seed_base, sensor_noise=True):
    """n rendered clips (modalities in turn, seeds far from training's) -> [(modality, frames, attrs)]."""
    mods = [data.MODALITIES[i % len(data.MODALITIES)] for i in range(n)]
    clips = [data.render_synthetic(m, seed_base + i, num_frames, size, sensor_noise)
             for i, m in enumerate(mods)]
    return [(m, frames, attrs) for m, (frames, _, attrs) in zip(mods, clips)]

def analyser_reads(items):
    """items: (modality, frames, target attrs) -> {modality/attr: {asked value: {read value: clips}}}: the
    confusion table. A row spread over every value: the words were ignored; two values swapped: confused;
    'other' (rates): a beat count that no caption asks for."""
    reads = {}
    for m, f, a in items:
        for k, fn in ANALYSERS[m].items():
            row, read = reads.setdefault(f"{m}/{k}", {}).setdefault(str(a[k]), {}), str(fn(f))
            row[read] = row.get(read, 0) + 1
    return reads

def reads_accuracy(reads):
    """analyser_reads' confusion tables -> {modality/attr: accuracy}, the share of clips on each diagonal."""
    acc = {}
    for k, rows in reads.items():
        hits = sum(row.get(asked, 0) for asked, row in rows.items())
        acc[k] = hits / sum(n for row in rows.values() for n in row.values())
    return acc

def analyser_accuracy(items):
    """items: (modality, frames, target attrs) -> {modality/attr: accuracy}."""
    return reads_accuracy(analyser_reads(items))

# ----------------------------------------------------------------------------------------------
# The benchmark classifier: modality + every attribute, from frames and frame differences

HEADS = [(m, k) for m in data.MODALITIES for k in ATTR_VALUES[m]]

class BenchClassifier(nn.Module):
    """(B, F, 3, H, W) in [-1, 1] -> logits. A 2D CNN on frames (appearance) and one on frame differences
    (motion), averaged over time. Frame features (64-d) make the FID-proxy, clip features (128-d) FVD's."""
    SIZE = 32  # clips are resized to 32 x 32 first

    def __init__(self, width=32):
        super().__init__()
        def down(cin, cout):  # halves the pixels
            return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        def cnn():  # 32 -> 16 -> 8 -> 4 pixels: small enough to train in about a minute on a laptop CPU
            return nn.Sequential(*down(3, width), *down(width, 2 * width), *down(2 * width, 2 * width),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.appearance, self.motion = cnn(), cnn()
        self.modality = nn.Linear(4 * width, len(data.MODALITIES))
        self.attrs = nn.ModuleList([nn.Linear(4 * width, len(ATTR_VALUES[m][k])) for m, k in HEADS])

    def features(self, x):
        B, Fr = x.shape[:2]
        x = F.interpolate(x.flatten(0, 1).float(), size=(self.SIZE, self.SIZE), mode="area")  # (B*F, 3, S, S)
        x = x.unflatten(0, (B, Fr))  # (B, F, 3, 32, 32)
        frame = self.appearance(x.flatten(0, 1)).unflatten(0, (B, Fr))  # (B, F, 64)
        diff = (x[:, 1:] - x[:, :-1]) * 4 if Fr > 1 else torch.zeros_like(x)  # (B, F-1, 3, 32, 32), amplified
        motion = self.motion(diff.flatten(0, 1)).unflatten(0, (B, max(Fr - 1, 1)))  # (B, F-1, 64)
        return frame, torch.cat([frame.mean(1), motion.mean(1)], -1)  # (B, F, 64), (B, 128)

    def forward(self, x):
        _, clip = self.features(x)
        return self.modality(clip), [h(clip) for h in self.attrs]

def _batch(items, device):
    x = torch.stack([data.to_tensor(f) for _, f, _ in items]).to(device)  # (B, F, 3, H, W) in [-1, 1]
    y = torch.tensor([data.MODALITIES.index(m) for m, _, _ in items], device=device)  # (B,)
    ya = [[ATTR_VALUES[m][k].index(a[k]) if m == mm else -1 for mm, k in HEADS] for m, _, a in items]
    ya = torch.tensor(ya, device=device)  # (B, heads): each head's class, -1 for another modality's heads
    return x, y, ya

@torch.no_grad()
def classifier_accuracy(clf, items, device, batch_size=64):
    clf.eval()
    mod, att = [], []
    for i in range(0, len(items), batch_size):
        x, y, ya = _batch(items[i:i + batch_size], device)
        lm, la = clf(x)
        mod.append((lm.argmax(-1) == y).float())
        att += [(l.argmax(-1) == ya[:, j]).float()[ya[:, j] >= 0] for j, l in enumerate(la)]
    return torch.cat(mod).mean().item(), torch.cat(att).mean().item()

def get_classifier(cfg, num_frames, size, device):
    """-> (benchmark classifier, held-out accuracy); trained once per frames, size, clips and seed, cached."""
    key = hashlib.sha1(f"v3 {num_frames} {size} {cfg.classifier_clips} {cfg.seed}".encode()).hexdigest()[:10]
    path = os.path.join(cfg.classifier, f"classifier_{key}.pt")
    if os.path.isfile(path):
        ck = data.load_checkpoint(path, "python evaluate.py (it retrains the classifier without a file)")
        clf = BenchClassifier().to(device)
        clf.load_state_dict(ck["model"])
        return clf.eval(), ck["accuracy"]
    # important! seed first, or the weights (and the cache) depend on what the models loaded before drew
    torch.manual_seed(cfg.seed)
    clf = BenchClassifier().to(device)
    train_set = benchmark_set(cfg.classifier_clips, num_frames, size, 3 * 10 ** 8)
    test_set = benchmark_set(cfg.classifier_clips // 5, num_frames, size, 4 * 10 ** 8)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    rng, bs, epochs = np.random.default_rng(cfg.seed), 32, 6
    for _ in tqdm(range(epochs), desc="benchmark classifier", leave=False):
        clf.train()
        for idx in np.array_split(rng.permutation(len(train_set)), max(1, len(train_set) // bs)):
            x, y, ya = _batch([train_set[i] for i in idx], device)
            lm, la = clf(x)
            loss = F.cross_entropy(lm, y) + sum(F.cross_entropy(l, ya[:, j], ignore_index=-1)
                                                 for j, l in enumerate(la) if (ya[:, j] >= 0).any())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    acc = dict(zip(("modality", "attributes"), classifier_accuracy(clf, test_set, device)))
    data.save_checkpoint({"model": clf.state_dict(), "accuracy": acc}, path)
    return clf.eval(), acc

# ----------------------------------------------------------------------------------------------
# Frechet distance (Heusel et al. 2017, Eq. 6) and the feature extractors

def frechet_distance(mu1, s1, mu2, s2):
    """||mu1 - mu2||^2 + Tr(s1 + s2 - 2 (s1^1/2 s2 s1^1/2)^1/2). The trace term uses the symmetric form, whose
    eigenvalues are those of s1 s2 but real and non-negative, so no complex sqrtm (scipy) is needed."""
    lam, V = torch.linalg.eigh(s1.double())
    r1 = (V * lam.clamp(min=0).sqrt()) @ V.T  # s1^1/2 (tiny negative eigenvalues -> 0)
    cross = torch.linalg.eigvalsh(r1 @ s2.double() @ r1).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).double().square().sum() + s1.trace() + s2.trace() - 2 * cross)

def fd_of(a, b):
    """Frechet distance between the Gaussians (mean, covariance) fitted to feature sets a and b (N, D)."""
    a, b = (torch.as_tensor(x, dtype=torch.float64) for x in (a, b))
    return frechet_distance(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))  # (D,), (D, D) each

@torch.no_grad()
def classifier_features(clf, clips, device, batch_size=64):
    """uint8 clips -> frame features (N*F, 64) for the FID-proxy, clip features (N, 128) for the FVD-proxy."""
    frames, clip = [], []
    for i in range(0, len(clips), batch_size):
        fr, cl = clf.features(torch.stack([data.to_tensor(c) for c in clips[i:i + batch_size]]).to(device))
        frames.append(fr.flatten(0, 1).cpu()), clip.append(cl.cpu())  # (B*F, 64), (B, 128)
    return torch.cat(frames), torch.cat(clip)

@torch.no_grad()
def i3d_features(detector, clips, device, batch_size=8):
    """StyleGAN-V's FVD convention: 16 frames, 224 x 224, values in [-1, 1], (B, 3, T, H, W), 400-d logits."""
    out = []
    for i in range(0, len(clips), batch_size):
        x = torch.stack([data.to_tensor(c) for c in clips[i:i + batch_size]]).to(device)  # (B, F, 3, H, W)
        idx = torch.arange(16).clamp(max=x.shape[1] - 1)  # first 16 frames; a shorter clip repeats its last
        x = F.interpolate(x[:, idx].flatten(0, 1), size=(224, 224), mode="bilinear", align_corners=False)
        x = x.unflatten(0, (-1, 16)).transpose(1, 2)  # (B, 3, 16, 224, 224)
        out.append(detector(x, rescale=False, resize=False, return_features=True).float().cpu())  # (B, 400)
    return torch.cat(out)

@torch.no_grad()
def dino_cls_features(teacher, clips, device):
    """CLS token of the last layer per frame (VBench subject consistency) -> (N, F, D)."""
    R, out = 224 // teacher.patch * teacher.patch, []  # R: the largest multiple of the patch <= 224
    for c in clips:
        x = data.to_tensor(c).to(device)  # (F, 3, H, W)
        x = F.interpolate((x + 1) / 2, size=(R, R), mode="bilinear", antialias=True, align_corners=False)
        h = teacher.model(pixel_values=(x - teacher.mean) / teacher.std).last_hidden_state[:, 0]  # (F, D)
        out.append(h.float().cpu())
    return torch.stack(out)  # (N, F, D)

def subject_consistency(feats):
    """VBench: mean over t >= 2 of (max(0, cos(f_t-1, f_t)) + max(0, cos(f_1, f_t))) / 2, then over videos."""
    f = F.normalize(feats, dim=-1)  # (N, F, D)
    prev = (f[:, 1:] * f[:, :-1]).sum(-1).clamp(min=0)  # (N, F-1)
    first = (f[:, 1:] * f[:, :1]).sum(-1).clamp(min=0)  # (N, F-1)
    return float(((prev + first) / 2).mean())

# ----------------------------------------------------------------------------------------------
# Temporal quality (VBench formulas on uint8 frames)

def temporal_flickering(f):
    """(255 - mean |frame_t+1 - frame_t|) / 255: 1.0 for a static clip."""
    return float((255 - np.abs(np.diff(f.astype(np.float32), axis=0)).mean()) / 255)

def motion_smoothness_proxy(f):
    """Drop the odd frames, put each back as the average of its neighbours (linear interpolation standing in
    for VBench's AMT-S network), score (255 - MAE) / 255. A proxy: never compare with VBench numbers."""
    g = f.astype(np.float32)
    n = (len(g) - 1) // 2 * 2 + 1  # odd length so every dropped frame has two neighbours
    if n < 3:
        return 1.0
    return float((255 - np.abs((g[0:n - 2:2] + g[2:n:2]) / 2 - g[1:n - 1:2]).mean()) / 255)  # (n//2, S, S, 3)

def dynamic_degree(f, flow_fn):
    """VBench: per frame pair, the mean of the top 5% flow magnitudes; the clip is dynamic when at least
    round(4 F / 16) pairs exceed 6 min(H, W) / 256 pixels. Flow from priors.horn_schunck (RAFT's proxy)."""
    x = torch.from_numpy(f).float().mean(-1)[:, None] / 255  # (F, 1, S, S) grey in [0, 1]
    mag = flow_fn(x[:-1], x[1:]).norm(dim=1).flatten(1)  # (F-1, S*S)
    score = mag.topk(max(1, int(0.05 * mag.shape[1])), dim=1).values.mean(1)  # (F-1,) top 5%
    thres, need = 6.0 * min(f.shape[1:3]) / 256, round(4 * len(f) / 16)
    return bool((score > thres).sum() >= need)

def temporal_metrics(clips):
    return {"flicker": float(np.mean([temporal_flickering(c) for c in clips])),
            "smooth_proxy": float(np.mean([motion_smoothness_proxy(c) for c in clips])),
            "dynamic_proxy": float(np.mean([dynamic_degree(c, horn_schunck) for c in clips]))}

# ----------------------------------------------------------------------------------------------
# VAE fidelity

PSNR_CAP = 100.0  # dB: identical clips (MSE 0) report this instead of infinity

def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255 ** 2 / mse))

def ssim(a, b, sigma=1.5, size=11):
    """Mean SSIM (Wang et al. 2004, Eq. 13) over frames and RGB channels, 11 x 11 Gaussian window."""
    x, y = [torch.from_numpy(v.astype(np.float64)).permute(0, 3, 1, 2) for v in (a, b)]  # (F, 3, S, S)
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2) ** 2 / (2 * sigma ** 2))
    w = ((g[:, None] * g[None]) / g.sum() ** 2).expand(3, 1, size, size)  # (3, 1, 11, 11), each sums to 1
    blur = lambda t: F.conv2d(t, w, groups=3)  # (F, 3, S-10, S-10) local means
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float((((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2))).mean())

def high_band_energy(v):
    """Energy per pixel in the upper half of the spatial spectrum (radial frequency above half of Nyquist) of
    v (F, S, S, 3) in [0, 1] units; with norm='ortho' all of the spectrum sums to the mean square."""
    d = torch.from_numpy(np.asarray(v, dtype=np.float64)).permute(0, 3, 1, 2)  # (F, 3, S, S)
    E = torch.fft.fft2(d, norm="ortho").abs() ** 2  # (F, 3, S, S) energy per frequency
    fy, fx = torch.fft.fftfreq(d.shape[-2]), torch.fft.fftfreq(d.shape[-1])  # cycles/pixel, Nyquist = 0.5
    radius = torch.sqrt((fy[:, None] / 0.5) ** 2 + (fx[None] / 0.5) ** 2)  # (S, S), 1 = Nyquist on an axis
    return float((E * (radius > 0.5)).sum() / d.numel())

def high_freq_error(a, b):
    """Mean squared reconstruction error in the upper half of the spectrum, [0, 1]^2 units. Blind to smearing
    vs wrong detail: no high band scores the original's high-band energy, misplaced detail up to twice it."""
    return high_band_energy((a.astype(np.float64) - b.astype(np.float64)) / 255)

def high_freq_power_ratio(a, b):
    """High-band energy of reconstruction b over original a's: 1 as detailed, < 1 smeared, > 1 added noise."""
    return high_band_energy(b / 255.0) / max(high_band_energy(a / 255.0), 1e-12)

def real_clips(folder, num_frames=17, size=64):
    """The videos in folder: first num_frames frames (1+4k), short side resized, center crop."""
    clips = []
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        if not path.endswith((".md", ".txt")):
            f = data.read_video(path)[:num_frames]
            f = f[: 1 + (len(f) - 1) // 4 * 4]  # the causal VAE takes 1+4k frames
            clips.append((os.path.basename(path), data.resize_center_crop(f, size)))
    return clips

@dataclass
class BilinearCodec:
    """The reference a VAE has to beat: each frame area-downsampled by `factor` and bilinearly upsampled back
    (3 numbers per factor x factor pixels per frame, no temporal compression). Same interface as the VAE."""
    factor: int

    def encode_latents(self, x, sample=False):  # (B, F, 3, S, S) -> (B, F, 3, S/f, S/f)
        return F.avg_pool2d(x.flatten(0, 1), self.factor).unflatten(0, x.shape[:2])

    def decode_latents(self, z):  # (B, F, 3, S/f, S/f) -> (B, F, 3, S, S)
        up = F.interpolate(z.flatten(0, 1), scale_factor=self.factor, mode="bilinear", align_corners=False)
        return up.unflatten(0, z.shape[:2]).clamp(-1.0, 1.0)

@torch.no_grad()
def vae_fidelity(vae, clips, device):
    """uint8 clips -> mean PSNR, SSIM, high-freq MSE, high-band power ratio of round trips, per-clip PSNR."""
    rows = []
    for f in clips:
        x = data.to_tensor(f)[None].to(device)  # (1, F, 3, S, S)
        rec = data.to_uint8(vae.decode_latents(vae.encode_latents(x, sample=False)))[0]  # (F, S, S, 3)
        rows.append((psnr(f, rec), ssim(f, rec), high_freq_error(f, rec), high_freq_power_ratio(f, rec)))
    return {**dict(zip(("psnr", "ssim", "hf_mse", "hf_power"), map(float, np.mean(rows, 0)))),
            "per_clip_psnr": [r[0] for r in rows]}

def frame_motion(f, pool=1):
    """Mean |frame-to-frame difference| of uint8 frames (F, S, S, 3), after a pool x pool mean per frame."""
    g = f.astype(np.float32)
    if pool > 1:  # (F, S/pool, S/pool, 3): per-pixel sensor noise shrinks, moving structures stay
        g = g.reshape(len(g), g.shape[1] // pool, pool, g.shape[2] // pool, pool, 3).mean((2, 4))
    return float(np.abs(np.diff(g, axis=0)).mean())

@torch.no_grad()
def vae_ceiling(vae, items, device, pool, clean_motion=None):
    """What prompt following can reach through a codec (VAE or BilinearCodec) on round trips of rendered
    clips (modality, frames, attrs): analyser accuracy; motion kept (|frame diff| round trip / original) on
    pixels, on pool x pool means, of the noise-free scene (given clean_motion); per-modality latent share."""
    recs, kept, moved, energy = [], np.zeros(2), np.zeros(2), {}
    for m, f, a in items:
        z = vae.encode_latents(data.to_tensor(f)[None].to(device))  # (1, f, c, h, w), ~N(0, 1) per channel
        rec = data.to_uint8(vae.decode_latents(z))[0]  # (F, S, S, 3)
        recs.append((m, rec, a))
        kept += [frame_motion(rec), frame_motion(rec, pool)]
        moved += [frame_motion(f), frame_motion(f, pool)]
        dev = (z - z.mean(dim=1, keepdim=True)).pow(2).sum().item()
        energy[m] = energy.get(m, np.zeros(2)) + [dev, z.pow(2).sum().item()]
    ratio = kept / moved
    res = {"round_trip": analyser_accuracy(recs), "motion_ratio": float(ratio[0]), "motion_ratio_pooled":
           float(ratio[1]), "pool": pool, "latent_motion_share": {m: e[0] / e[1] for m, e in energy.items()}}
    if clean_motion is not None:
        res["motion_ratio_clean"] = float(kept[0] / clean_motion)
    return res

def x0_error(model, sched, x0, noise, ts, text, mask):
    """Mean over timesteps ts of the MSE of the x0 the model predicts from x_t = q_sample(x0, t, noise[k])."""
    err = 0.0
    for tk, eps in zip(ts, noise):
        t = torch.full((x0.shape[0],), tk, device=x0.device)
        x_t = diffusion.q_sample(sched, x0, t, eps)
        out = model(x_t, t, text, mask).float()  # eps or v
        err += (diffusion.to_x0_eps(sched, x_t, t, out, model.cfg.prediction)[0] - x0).pow(2).mean().item()
    return err / len(ts)

@torch.no_grad()
def word_use(model, vae, text_encoder, n, num_frames, size, device, ts=(150, 300, 500, 700)):
    """Does the denoiser read each attribute's words? The increase (%) of the DiT's x0-MSE at timesteps ts (n
    held-out clips per modality) when only its words are swapped for another value's (same clip, noise, t),
    in training and held-out words. 0: ignored; training > 0 but held-out ~0: not generalised."""
    sched, k, g = diffusion.Schedule(), model.cfg.motion_scale, torch.Generator().manual_seed(0)
    out = {"train_words": {}, "heldout_words": {}}
    for m in data.MODALITIES:
        clips = [data.render_synthetic(m, 10 ** 9 + i, num_frames, size) for i in range(n)]
        video = torch.stack([data.to_tensor(f) for f, _, _ in clips]).to(device)  # (n, F, 3, S, S)
        x0 = diffusion.scale_motion(vae.encode_latents(video), k)  # (n, f, c, h, w) in the DiT's space
        noise = torch.randn((len(ts), *x0.shape), generator=g).to(device)  # (K, n, f, c, h, w)
        # the same rng seed per clip: the same phrasing except the swapped words
        x0_mse = lambda captions: x0_error(model, sched, x0, noise, ts, *text_encoder(captions))  # noqa: E731
        for words, write in (("train_words", train_caption), ("heldout_words", heldout_caption)):
            caption = lambda i, a: write(m, a, np.random.default_rng([i, 7]))  # noqa: E731
            base = x0_mse([caption(i, a) for i, (_, _, a) in enumerate(clips)])
            for key, values in ATTR_VALUES[m].items():  # clip i takes the i-th of the other values
                other = lambda i, a: [v for v in values if v != a[key]][i % (len(values) - 1)]  # noqa: E731
                worse = x0_mse([caption(i, {**a, key: other(i, a)}) for i, (_, _, a) in enumerate(clips)])
                out[words][f"{m}/{key}"] = 100 * (worse - base) / base
    return out

@torch.no_grad()
def text_separation(text_encoder):
    """Does the text encoder carry each attribute into other words? -> ({attribute: share}, {attribute:
    margin}): the share of held-out phrases (HELDOUT) whose pooled state is strictly nearer (mean cosine) to
    their own value's training phrases (CAPTIONS) than to any other's, and the mean margin to the nearest."""
    def embed(phrases, v):  # the phrases of value v (cell counts in range) -> (n, Dtext)
        tokens, mask = text_encoder([p.format(count=4 if v == "few" else 12) for p in phrases])
        return F.normalize(masked_mean(tokens, mask), dim=-1)  # (n, L, Dtext) pooled over L
    share, margin = {}, {}
    for m in data.MODALITIES:
        for key, values in ATTR_VALUES[m].items():
            train = {v: embed(CAPTIONS[m][key][v], v) for v in values}
            gaps = []
            for v in values:
                for e in embed(HELDOUT[m][key][v], v):
                    sim = {u: (train[u] @ e).mean().item() for u in values}  # mean cosine to each value
                    gaps.append(sim[v] - max(s for u, s in sim.items() if u != v))
            share[f"{m}/{key}"] = float(np.mean([g > 0 for g in gaps]))  # a tie is not a separation
            margin[f"{m}/{key}"] = float(np.mean(gaps))
    return share, margin

def machine(device):
    try:
        git = ["git", "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(git, cwd=HERE, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    cpu = f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name() if device.startswith("cuda") else cpu
    return {"commit": commit or "unknown", "device": where, "torch": torch.__version__}

def evaluate(cfg):
    device, t0 = data.pick_device(cfg.device), time.time()
    ckpt, vae, model, te = load_models(cfg.ckpt, device, cfg.weights)  # a VAE checkpoint has no DiT
    if cfg.vae_size % vae.cfg.spatial_factor:
        raise SystemExit(f"--vae_size={cfg.vae_size}: use a multiple of {vae.cfg.spatial_factor} (this VAE's "
                         f"factor)")
    Fr, S = ckpt["config"]["num_frames"], ckpt["config"]["size"]
    res = {"ckpt": cfg.ckpt, "stage": ckpt.get("stage"), "step": ckpt.get("step"), **machine(device),
           **{k: getattr(cfg, k) for k in ("num_clips", "steps", "cfg_scale", "words", "motion_cfg_scale")}}
    both = lambda fn, gen, ref: {"generated": fn(gen), "reference": fn(ref)}  # noqa: E731
    if model is not None and cfg.what in ("all", "prompt", "temporal", "frechet"):
        if cfg.data:  # real-data mode: the CSV's captions, compared with its clips
            try:
                ds = data.VideoCSVDataset(cfg.data, Fr, S, seed=cfg.seed)
            except ValueError as e:  # a missing or malformed CSV: one line
                raise SystemExit(str(e))
            rows = [ds[i] for i in range(min(cfg.num_clips, len(ds)))]
            ref_items, prompts = None, [r["text"] for r in rows]
            ref = [data.to_uint8(r["video"][None])[0] for r in rows]  # uint8 (F, S, S, 3) each
        else:  # the benchmark: each prompt describes a held-out rendered clip, in held-out words by default
            ref_items = benchmark_set(cfg.num_clips, Fr, S, 10 ** 9)
            rng = np.random.default_rng(cfg.seed)
            write = heldout_caption if cfg.words == "heldout" else train_caption
            prompts, ref = [write(m, a, rng) for m, _, a in ref_items], [f for _, f, _ in ref_items]
        gen = []  # uint8 (F, S, S, 3) each
        for i in tqdm(range(0, len(prompts), cfg.batch_size), desc="generating", leave=False):
            gen += list(generate(model, vae, te, prompts[i:i + cfg.batch_size], Fr, S, cfg.steps,
                                 cfg.cfg_scale, cfg.seed + i, cfg.eta, cfg.motion_cfg_scale))
        clf, res["classifier_heldout"] = get_classifier(cfg, Fr, S, device)
        if ref_items is not None and cfg.what in ("all", "prompt"):
            gen_items = [(m, g, a) for (m, _, a), g in zip(ref_items, gen)]
            res["modality_acc"] = both(lambda x: classifier_accuracy(clf, x, device)[0], gen_items, ref_items)
            res["attribute_reads"] = reads = analyser_reads(gen_items)  # the generated clips' confusions
            res["attribute_acc"] = {"generated": reads_accuracy(reads),
                                    "reference": analyser_accuracy(ref_items)}
            res["examples"], res["word_use"] = prompts[:5], word_use(model, vae, te, 32, Fr, S, device)
            res["text_separation"], res["text_margin"] = text_separation(te)
        if cfg.what in ("all", "temporal"):
            res["temporal"] = both(temporal_metrics, gen, ref)
        if cfg.what in ("all", "frechet"):
            (gf, gc), (rf, rc) = classifier_features(clf, gen, device), classifier_features(clf, ref, device)
            res["fid_proxy"], res["fvd_proxy"] = fd_of(gf, rf), fd_of(gc, rc)
            if ref_items is not None:  # the floor: two independent sets of rendered clips of the same size
                other = [f for _, f, _ in benchmark_set(cfg.num_clips, Fr, S, 5 * 10 ** 8)]
                f2, c2 = classifier_features(clf, other, device)
                res["fid_proxy_floor"], res["fvd_proxy_floor"] = fd_of(f2, rf), fd_of(c2, rc)
            if cfg.i3d:
                try:
                    detector = torch.jit.load(cfg.i3d, map_location=device).eval()
                except Exception as e:
                    raise SystemExit(f"cannot load I3D TorchScript {cfg.i3d!r} ({type(e).__name__}); give "
                                     f"StyleGAN-V's i3d_torchscript.pt or leave --i3d empty")
                res["fvd_i3d"] = fd_of(*(i3d_features(detector, clips, device) for clips in (gen, ref)))
            if cfg.dino:
                teacher = load_dino(cfg.dino, device)
                dg, dr = (dino_cls_features(teacher, clips, device) for clips in (gen, ref))  # (N, F, D) each
                res["fid_dino"] = fd_of(dg.flatten(0, 1), dr.flatten(0, 1))
                res["subject_consistency"] = both(subject_consistency, dg, dr)
    if cfg.what in ("all", "vae"):
        items = benchmark_set(cfg.num_clips, Fr, S, 10 ** 9)  # the clips the benchmark prompts describe
        bilinear, pool = BilinearCodec(vae.cfg.spatial_factor), vae.cfg.spatial_factor
        noiseless = benchmark_set(cfg.num_clips, Fr, S, 10 ** 9, sensor_noise=False)  # the same scenes
        clean = sum(frame_motion(f) for _, f, _ in noiseless)
        res["vae_ceiling"] = {**vae_ceiling(vae, items, device, pool, clean),
                              "rendered": analyser_accuracy(items),
                              "bilinear": vae_ceiling(bilinear, items, device, pool, clean),
                              "noise_free": clean / sum(frame_motion(f) for _, f, _ in items)}  # clean/noisy
        syn = [f for _, f, _ in benchmark_set(cfg.vae_clips, Fr, S, 6 * 10 ** 8)]
        res["vae_synthetic"] = {"size": S, **vae_fidelity(vae, syn, device),
                                "bilinear": vae_fidelity(bilinear, syn, device)}
        if os.path.isdir(cfg.real_clips):
            names, reals = zip(*real_clips(cfg.real_clips, 17, cfg.vae_size))
            res["vae_real"] = {"size": cfg.vae_size, "clips": list(names), **vae_fidelity(vae, reals, device),
                               "bilinear": vae_fidelity(bilinear, reals, device)}
    res["seconds"] = round(time.time() - t0, 1)
    return res

def print_table(res):
    line = lambda name, gen, ref="", note="": print(f"  {name:<34} {gen:>12} {ref:>12}   {note}")
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    mean = lambda accs: fmt(float(np.mean(list(accs.values()))))
    pair = lambda d: (fmt(d["generated"]), fmt(d["reference"]))
    print(f"medvid evaluation of {res['ckpt']} ({res['stage']} step {res['step']}), commit {res['commit']}, "
          f"{res['device']}, {res['seconds']} s")
    line("metric", "generated", "reference", "note")
    if "classifier_heldout" in res:
        c = res["classifier_heldout"]
        warn = "" if c["modality"] >= 0.98 else "  << BELOW 0.98: do not trust modality accuracy"
        line("benchmark classifier (held-out)", fmt(c["modality"]), "",
             f"attribute heads {c['attributes']:.3f}; needs >= 0.98{warn}")
    if "modality_acc" in res:  # evaluate sets it with attribute_acc, word_use, text_separation, text_margin
        line("modality accuracy", *pair(res["modality_acc"]), "chance 0.2")
        g, r = res["attribute_acc"]["generated"], res["attribute_acc"]["reference"]
        tw, hw = res["word_use"]["train_words"], res["word_use"]["heldout_words"]
        sep, gap = res["text_separation"], res["text_margin"]
        for k in g:
            m, a = k.split("/")
            line(f"  {k}", fmt(g[k]), fmt(r[k]), f"chance {1 / len(ATTR_VALUES[m][a]):.2f}; words read "
                 f"{tw[k]:+.1f}% / {hw[k]:+.1f}%; text sep. {sep[k]:.2f} (margin {gap[k]:+.3f})")
            if "attribute_reads" in res:  # asked -> read counts of the generated clips
                print(" " * 6 + "read as: " + "; ".join(f"{asked} -> " + " ".join(
                    f"{v} {n}" for v, n in sorted(row.items(), key=lambda vn: -vn[1]))
                    for asked, row in res["attribute_reads"][k].items()))
        line("attribute accuracy (mean)", mean(g), mean(r), "words read: x0-MSE increase when that "
             "attribute's words are swapped, training / held-out words (evaluate.word_use)")
        line("text separation (mean)", mean(sep), "", "held-out phrases nearest their own value's "
             "training phrases in the text encoder (evaluate.text_separation)")
    notes = {"flicker": "VBench, exact", "smooth_proxy": "linear interp., proxy",
             "dynamic_proxy": "Horn-Schunck flow, proxy"}
    for k, v in res.get("temporal", {}).get("generated", {}).items():
        line(k, fmt(v), fmt(res["temporal"]["reference"][k]), notes[k])
    for k in [k for k in ("fid_proxy", "fvd_proxy", "fvd_i3d", "fid_dino") if k in res]:
        floor = res.get(f"{k}_floor")
        note = f"floor (rendered vs rendered) {floor:.3f}" if floor is not None else ""
        note += "; classifier features, not comparable to papers" if "proxy" in k else ""
        line(k, fmt(res[k]), "", note)
    if "subject_consistency" in res:
        line("subject consistency (DINO)", *pair(res["subject_consistency"]))
    if "vae_ceiling" in res:  # the ceiling of prompt following: what survives the VAE's round trip
        v = res["vae_ceiling"]
        line("VAE round trip: attribute accuracy", "round trip", "rendered", "analysers, held-out clips")
        for k, acc in v["round_trip"].items():
            line(f"  {k}", fmt(acc), fmt(v["rendered"][k]))
        line("  mean", mean(v["round_trip"]), mean(v["rendered"]))
        b, p = v["bilinear"], v["pool"]
        line("VAE motion ratio", fmt(v["motion_ratio"]), fmt(b["motion_ratio"]),
             "|frame diff| of round trips / of originals; reference: bilinear codec (keeps every frame)")
        line(f"  on {p}x{p} means", fmt(v["motion_ratio_pooled"]), fmt(b["motion_ratio_pooled"]),
             "the latent's resolution: less of the sensor noise no codec keeps")
        line("  of the noise-free scene", fmt(v["motion_ratio_clean"]), fmt(b["motion_ratio_clean"]),
             f"round trips / originals rendered without sensor noise; a codec that keeps the scene "
             f"exactly and drops the noise scores 1 here and {v['noise_free']:.3f} on the first row")
        share = v["latent_motion_share"]
        line("latent motion share", mean(share), "",
             " ".join(f"{m} {x:.3f}" for m, x in share.items()) + " (temporal deviation / total energy)")
    rows = (("PSNR dB", "psnr", ".2f", "reference: bilinear down/up by the VAE's factor, every frame kept"),
            ("SSIM", "ssim", ".3f", ""), ("high-freq MSE", "hf_mse", ".2e", "upper half of the spectrum"),
            ("high-band power", "hf_power", ".3f", "of the original's; 1 = as detailed"))
    for k in [k for k in ("vae_synthetic", "vae_real") if k in res]:
        v, b = res[k], res[k]["bilinear"]
        for i, (name, key, spec, note) in enumerate(rows):
            line(f"{k} {v['size']} px {name}" if i == 0 else f"  {name}", f"{v[key]:{spec}}",
                 f"{b[key]:{spec}}", note)

def main(argv=None):
    cfg = data.parse_args(EvalConfig, sys.argv[1:] if argv is None else argv)
    data.check_options(cfg, RULES)
    name = os.path.splitext(os.path.basename(cfg.ckpt))[0]
    out = cfg.out or os.path.join(os.path.dirname(cfg.ckpt) or ".", f"eval_{name}.json")
    if cfg.out:  # checked now, not after the evaluation
        data.writable_dir(os.path.dirname(cfg.out), "--out")
        if os.path.isdir(cfg.out):
            raise SystemExit(f"--out={cfg.out} is a folder: give a .json file name")
    print_table(res := evaluate(cfg))
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"wrote {out}")
    return res

if __name__ == "__main__":
    main()
