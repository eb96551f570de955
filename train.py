"""
Train medvid: the causal video VAE, then the text-conditioned video DiT in Bora's two stages.

  python train.py                                   # tiny preset on CPU: vae -> align -> instruct (~19 min)
  python train.py --stage=vae --preset=small --data=videos.csv
  torchrun --standalone --nproc_per_node=8 train.py --stage=align --preset=base --data=videos.csv
  torchrun --nnodes=2 --node_rank=0 --rdzv_endpoint=HOST:29500 --nproc_per_node=8 train.py --stage=instruct

Stages (Bora arXiv 2407.08944 Sec. 4.2; Ophora, Li et al. 2025: progressive tuning):
  vae      the causal 3D VAE on video frames (L1 + KL), then its latent statistics are measured
  align    the DiT on captions "This is a {modality} video." with the temporal blocks frozen
  instruct everything trainable, full captions, initialised from the align checkpoint
Each stage writes out_dir/{stage}.pt, the next one's default start; --init_from=PATH starts any stage from any
checkpoint (progressive tuning). The stage is decided once, by setup_vae or setup_dit; the loop is shared.
Every logged step is a JSON line in out_dir/metrics.jsonl; each stage's end redraws out_dir/loss.png from it
(python train.py --plot=out_dir only redraws). python train.py --help lists every option below.
"""
import copy
import glob
import json
import math
import os
import re
import sys
import time
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, replace
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, ImageDraw, ImageFont
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

import data
import diffusion
import priors
from dit import DIT_PRESETS, DiT, DiTConfig, load_text_encoder
from sample import generate
from synthetic import mix_textures
from vae import VAE_PRESETS, CausalVideoVAE, VAEConfig

@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out/tiny"      # checkpoints out_dir/{vae,align,instruct}.pt and previews/
    stage: str = "all"             # all | vae | align | instruct
    init_from: str = ""            # checkpoint to start from; '' = the previous stage's file in out_dir
    resume: bool = False           # continue out_dir/{stage}.pt at its saved step, optimizer and EMA
    max_run_steps: int = 0         # stop after N steps and checkpoint (time-limited jobs); 0 = no limit
    preset: str = "tiny"           # tiny | small | base | paper: sizes of the models and the run below
    # data
    data: str = ""                 # CSV of videos, path,text[,modality,...] (python data.py --make_csv DIR);
                                   # '' = the synthetic benchmark
    num_clips: int = 100_000       # synthetic clips per epoch (seeds 0..num_clips-1)
    num_frames: int = 17           # frames per clip, 1+4k: 17 -> 9 latents (tiny VAE), 5 (x4 in time)
    size: int = 32                 # training resolution (short-side resize + center crop, Bora App. A)
    frame_interval: int = 1        # take every k-th frame of a real video (Endora/Latte use 3)
    num_workers: int = 1           # DataLoader worker processes (decoding or rendering beside the math)
    balance: str = "auto"          # CSV balancing (Bora 4.2): auto (weight in align) | none | weight | cap
    motion_threshold: float = 0.0  # Bora App. A's K: widen until mean |frame diff| > K; 0 = frame_interval
    max_interval: int = 8          # the widest interval the motion threshold may choose
    short_clips: str = "pad"       # videos shorter than num_frames: pad (repeat frames) | skip; both counted
    hflip: str = ""                # non-lateral modalities flipped left-right at random, e.g. endoscopy,cell
    # model
    text_encoder: str = "minilm"   # minilm (offline) | hub id or folder, e.g. google/t5-v1_1-xxl (Bora)
    vae_preset: str = ""           # '' = same name as preset when the VAE has it, else base
    vae_args: str = ""             # VAEConfig fields over the preset (new VAE): freq_comp=False,kl_weight=0
    mixer: str = "attn"            # DiT token mixers: attn | mamba | hybrid (MedSora); for a new DiT only
    temporal_text: bool = False    # the DiT's temporal blocks cross-attend to the caption too; for a new DiT
    temporal_rope: bool = False    # rotary frame positions in temporal attention (RoFormer); for a new DiT
    patch_size: int = 2            # DiT patch p, (H/p)^2 tokens a frame (DiT Sec. 3.1); for a new DiT
    dit_args: str = ""             # DiTConfig fields over the preset (new DiT): hidden_size=192,num_heads=6
    # optimisation (per stage)
    batch_size: int = 16           # per process, DiT stages
    vae_batch_size: int = 8        # per process, VAE stage (a conv3d step costs more per clip)
    grad_accum: int = 1            # micro-batches per optimizer step
    vae_steps: int = 500
    align_steps: int = 300
    instruct_steps: int = 800
    lr: float = 1e-3               # DiT peak lr; each preset sets its own (tiny 2.7e-3; Latte: 1e-4 at XL)
    vae_lr: float = 1e-3
    vae_texture: float = 0.0       # VAE stage: share of clips made 1/f textures; 0.5 helps on real clips
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1      # cosine decay to lr * min_lr_ratio at the end of the stage
    weight_decay: float = 0.01     # on matrices only
    grad_clip: float = 1.0
    ema_decay: float = 0.999       # short runs: 0.999 with warm-up, not DiT's 0.9999
    p_uncond: float = 0.1          # caption drop-out for classifier-free guidance
    # the diffusion objective beside Endora Eq. 1's eps-prediction (diffusion.py); for a new DiT only
    prediction: str = "eps"        # eps (DDPM) | v (Salimans & Ho 2022); saved with the DiT for sample.py
    snr_gamma: float = 0.0         # Min-SNR-gamma loss weights (Hang et al. 2023: gamma = 5); 0 = off
    snr_floor: float = 0.0         # v only: x0-weight >= this near pure noise (1: Salimans & Ho's max(SNR,1))
    t_importance: bool = False     # draw t in proportion to its loss weight (Kingma & Gao 2023): same loss
    noise_corr: float = 0.0        # noise correlation between frames (PYoCo mixed noise, Ge et al. 2023)
    motion_scale: float = 1.0      # diffuse latents with their motion x k (diffusion.scale_motion); 1 = off
    motion_weight: float = 1.0     # loss weight of the error's part that changes over frames; 1 = plain MSE
    val_clips: int = 16            # held-out clips of the fixed-t validation loss, logged as val; 0 = off
    # training priors (priors.py): Endora's DINO prior and MedSora's flow alignment; off by default
    dino: str = "none"             # none | ViT/DINOv2 hub id or folder (Endora's prior): facebook/dino-vits8
    dino_mode: str = "corr"        # corr: Endora Eq. 2 (Pearson of channel means) | token: REPA cosine
    dino_weight: float = 0.5       # Endora's alpha; 0 keeps the teacher for --flow=dino only
    dino_layers: str = "2,5,8,11"  # teacher blocks, 0-based in a 12-block ViT (scaled to the teacher's depth)
    dino_grid_mult: int = 2        # teacher token grid = m x the DiT's; projector = m x m conv, stride m
    flow: str = "none"             # none | hs: Horn-Schunck (u, v, 1) per token | dino: DINO of flow images
    flow_weight: float = 0.1       # MedSora's weight of the flow alignment loss
    prior_stages: str = "align,instruct"  # stages (comma-separated) that train with the priors on
    # logging / previews
    log_every: int = 50
    ckpt_every: int = 500
    preview_steps: int = 50        # DDIM steps for the end-of-stage preview videos
    cfg_scale: float = 4.0
    plot: str = ""                 # a run's out_dir: draw its loss.png from its metrics.jsonl and exit
    # system
    device: str = "auto"           # auto | cpu | cuda
    dtype: str = "auto"            # auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    frozen_dtype: str = "float32"  # float32 | bfloat16: DiT stages' frozen encoders (CPU: ~2x faster)
    vae_dtype: str = "auto"        # the VAE stage's autocast, over --dtype (tiny: bfloat16); auto: --dtype
    compile: str = "auto"          # auto (torch.compile on CUDA only) | true | false
    seed: int = 0

# Run-size presets: only keys the command line does not set are taken from here.
PRESETS = {
    "tiny":  dict(size=32, num_frames=17, batch_size=16, vae_steps=2000, vae_lr=2e-3, align_steps=400,
                  instruct_steps=3000, prediction="v", snr_gamma=5.0, snr_floor=1.0, motion_scale=4.0,
                  motion_weight=4.0, lr=2.7e-3, frozen_dtype="bfloat16", vae_dtype="bfloat16",
                  temporal_rope=True),
    # why: RESULTS.md, Motion (v, Min-SNR + floor, motion scale/weight, steps, lr, rotary) and Speed (bf16)
    "small": dict(size=128, num_frames=17, batch_size=8, num_workers=4, log_every=100, vae_steps=20_000,
                  align_steps=50_000, instruct_steps=100_000, lr=1e-4, vae_lr=2e-4, ema_decay=0.9999),
    "base":  dict(size=256, num_frames=17, batch_size=4, num_workers=6, log_every=100, vae_steps=50_000,
                  align_steps=100_000, instruct_steps=200_000, lr=1e-4, vae_lr=1e-4, ema_decay=0.9999),
    "paper": dict(size=256, num_frames=33, batch_size=2, num_workers=8, log_every=100, vae_steps=100_000,
                  align_steps=150_000, instruct_steps=300_000, lr=1e-4, vae_lr=1e-4, ema_decay=0.9999),
}

# What each option takes, checked before any work (data.check_options): words, or (low, high) number bounds
RULES = dict(stage=("all", "vae", "align", "instruct"), compile=("auto", "true", "false"),
             balance=("auto", "none", "weight", "cap"), short_clips=("pad", "skip"),
             mixer=("attn", "mamba", "hybrid"), prediction=("eps", "v"), dino_mode=("corr", "token"),
             flow=("none", "hs", "dino"), **dict.fromkeys(("dtype", "vae_dtype"),
                                                          ("auto", "float32", "bfloat16", "float16")),
             frozen_dtype=("float32", "bfloat16"),
             **dict.fromkeys("num_clips size frame_interval max_interval batch_size vae_batch_size "
                             "grad_accum vae_steps align_steps instruct_steps log_every ckpt_every "
                             "patch_size preview_steps dino_grid_mult".split(), (1, math.inf)),
             **dict.fromkeys("max_run_steps num_workers motion_threshold lr vae_lr warmup_steps weight_decay "
                             "snr_gamma snr_floor dino_weight flow_weight motion_weight".split(),
                             (0, math.inf)),
             **dict.fromkeys("vae_texture min_lr_ratio ema_decay p_uncond".split(), (0, 1)),
             noise_corr=(0, 0.999), motion_scale=(0.01, 100))
# Options only some stages read: a run without those stages says that it ignores them
READ_BY = {**dict.fromkeys("vae_lr vae_batch_size vae_steps vae_preset vae_args vae_texture "
                           "vae_dtype".split(), "vae"),
           "align_steps": "align", "instruct_steps": "instruct",
           **dict.fromkeys("lr text_encoder dit_args mixer temporal_text temporal_rope patch_size prediction "
                           "snr_gamma noise_corr snr_floor t_importance motion_scale motion_weight p_uncond "
                           "ema_decay val_clips preview_steps cfg_scale dino dino_mode dino_weight "
                           "dino_layers dino_grid_mult flow flow_weight prior_stages".split(),
                           "align instruct")}

def config_overrides(cls, overrides, option, example):
    """--vae_args / --dit_args `key=value,key=value` -> {key: value}, each value typed as the field of cls it
    sets; a comma starts a new pair only before `key=`, so channel_mult=(1,) works."""
    given = {}
    for pair in filter(None, re.split(r",(?=\s*\w+=)", overrides)):
        key, eq, text = pair.partition("=")
        if not eq:
            raise SystemExit(f"{option}={overrides}: give key=value pairs, e.g. {option}={example}")
        given[key] = data.typed_value(cls, key, text)
    return given

def vae_config(name, overrides=""):
    """VAE_PRESETS[name] with the --vae_args overrides."""
    if name not in VAE_PRESETS:
        raise SystemExit(f"unknown --vae_preset={name}: choose one of {', '.join(VAE_PRESETS)}")
    given = config_overrides(VAEConfig, overrides, "--vae_args", "freq_comp=False")
    return VAEConfig(**{**VAE_PRESETS[name], **given})

# ----------------------------------------------------------------------------------------------
# Small pieces of the loop

def configure_optimizer(params, lr, weight_decay, device_type):
    """AdamW, weight decay on matrices only, fused on CUDA -> (optimizer, #decayed params, #non-decayed)."""
    params = [p for p in params if p.requires_grad]
    decay, no_decay = [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=(device_type == "cuda") or None)
    return optimizer, sum(p.numel() for p in decay), sum(p.numel() for p in no_decay)

def get_lr(step, max_steps, peak, warmup, min_ratio):
    """Linear warm-up, then cosine decay to peak * min_ratio (nanoGPT)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

@torch.no_grad()
def update_ema(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, for trainable parameters (frozen ones are equal anyway)."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        if p.requires_grad:
            pe.lerp_(p.detach().to(pe.dtype), 1 - decay)

def batches(dataset, cfg, batch_size, start_step, rank, world, balance="none", seen=None):
    """An endless stream of batches, fixed by (seed, step): each epoch's data.epoch_order (seeded, or Bora's
    modality balancing: balance = weight | cap) is split across ranks, so a resume at step s sees the batches
    the first run would have. batch["key"]: (B,) each of (index, epoch, position), seeding frame windows.
    seen (a dict, filled here): the epoch and the distinct unreadable and short files met, for count_files."""
    per_rank = batch_size * cfg.grad_accum
    modalities = dataset.modalities if balance != "none" else None
    order = lambda epoch: data.epoch_order(len(dataset), cfg.seed, epoch, modalities, balance)  # noqa: E731
    steps_per_epoch = len(order(0)) // (per_rank * world)
    if steps_per_epoch == 0:
        raise SystemExit(f"an epoch has {len(order(0))} clips, fewer than one global batch "
                         f"({per_rank * world}): lower --batch_size")
    epoch, k = divmod(start_step, steps_per_epoch)
    seen = {} if seen is None else seen
    while True:
        seen.update(epoch=epoch, bad=set(), short=set())
        keys = [(i, epoch, pos) for pos, i in enumerate(order(epoch))]
        mine = keys[rank::world][k * per_rank: steps_per_epoch * per_rank]  # this rank's shard from step k
        loader = DataLoader(dataset, batch_size=batch_size, sampler=mine, num_workers=cfg.num_workers,
                            drop_last=True, persistent_workers=False, pin_memory=torch.cuda.is_available())
        for batch in loader:
            if "skipped" in batch:  # the file names each item met, one a line (VideoCSVDataset)
                for name, key in (("bad", "skipped"), ("short", "short")):
                    seen[name].update(p for lines in batch.pop(key) for p in lines.split("\n") if p)
            yield batch
        count_files(cfg, seen, rank)  # every rank reaches this at the same step
        epoch, k = epoch + 1, 0

def count_files(cfg, seen, rank):
    """CSV data: rank 0 counts the distinct unreadable and short files in all ranks' `seen` (all call it)."""
    if not cfg.data:
        return
    if dist.is_initialized():
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, (seen["bad"], seen["short"]))
        seen = dict(seen, bad=set().union(*(b for b, _ in every)), short=set().union(*(s for _, s in every)))
    if rank == 0:
        tqdm.write(f"epoch {seen['epoch']}: {len(seen['bad'])} unreadable file(s) skipped (named in the "
                   f"warnings), {len(seen['short'])} video(s) shorter than {cfg.num_frames} frames "
                   f"{'padded' if cfg.short_clips == 'pad' else 'skipped'}")

def make_dataset(cfg, stage, seed_offset=0, num_clips=None):
    """The stage's dataset; num_clips (statistics, previews, validation): that many, spread over a CSV."""
    align = stage == "align"  # Bora Sec. 4.2: stage-1 captions are "This is a {modality} video."
    if not cfg.data:
        return data.SyntheticVideoDataset(num_clips or cfg.num_clips, cfg.num_frames, cfg.size,
                                          seed_offset=seed_offset, align=align)
    try:
        ds = data.VideoCSVDataset(cfg.data, cfg.num_frames, cfg.size, cfg.frame_interval, align=align,
                                  seed=cfg.seed, motion_threshold=cfg.motion_threshold,
                                  max_interval=cfg.max_interval, short_clips=cfg.short_clips, hflip=cfg.hflip)
    except ValueError as e:  # a missing or malformed CSV, a bad option: one line, not a traceback
        raise SystemExit(str(e))
    if num_clips:
        rows = np.unique(np.linspace(0, len(ds) - 1, min(num_clips, len(ds))).round().astype(int))
        return torch.utils.data.Subset(ds, rows.tolist())
    return ds

def balancing(cfg, stage):
    """--balance for batches (Bora Sec. 4.2; auto: weight in align, else none); synthetic clips: none."""
    if not cfg.data:
        return "none"
    return cfg.balance if cfg.balance != "auto" else ("weight" if stage == "align" else "none")

def preview_prompts(cfg, stage):
    """One prompt per modality: from the CSV's rows (the first caption of each modality, up to 8; no video is
    decoded), or for the synthetic benchmark from clips no run trains on (seeds past the training range)."""
    if cfg.data:
        first = {}
        for r in data.read_csv(cfg.data):
            first.setdefault(r["modality"], r)  # each modality's first row, in CSV order
        texts = [data.align_caption(m) if stage == "align" else r["text"] for m, r in list(first.items())[:8]]
        return list(dict.fromkeys(texts))
    if stage == "align":
        return [data.align_caption(m) for m in data.MODALITIES]
    return [data.render_synthetic(m, 10**8 + i, cfg.num_frames, cfg.size)[1]
            for i, m in enumerate(data.MODALITIES)]

def save_previews(cfg, stage, clips):
    """uint8 clips (N, F, H, W', 3) -> out_dir/previews/{stage}.gif and .png, one row per clip."""
    out = os.path.join(cfg.out_dir, "previews")
    grid = np.concatenate(list(clips), axis=1)  # (F, N*H, W', 3)
    data.save_video(os.path.join(out, f"{stage}.gif"), grid, fps=8)
    data.save_video(os.path.join(out, f"{stage}.png"), grid[:: max(1, len(grid) // 9)])
    tqdm.write(f"[{stage}] previews: {out}/{stage}.gif, {out}/{stage}.png")

# ----------------------------------------------------------------------------------------------
# The two kinds of stage. Each setup returns what the loop needs, as a namespace:
#   model       the raw module that trains (saved, EMA-updated); the loop compiles and DDP-wraps it
#   heads, ema  the priors' projector heads (trained, DDP-wrapped, never compiled), model's EMA copy; or None
#   params, lr, batch_size: all the optimizer sees (it drops frozen ones), the peak lr, the per-process batch
#   loss(model, heads, batch) -> (loss to backpropagate, {name: value to log}), with the wrapped modules
#   validate() -> the fixed-t validation loss, or None; checkpoint() -> the stage's own checkpoint fields
#   finish(dataset), preview(): after the last step (all ranks), previews (rank 0); about: the priors or ''

def setup_vae(cfg, init, device):
    """The VAE stage: a new causal VAE (or init's), trained on L1 + KL (+ FFL) of its reconstructions."""
    name = cfg.vae_preset or (cfg.preset if cfg.preset in VAE_PRESETS else "base")
    vae_args = init["vae_args"] if init and "vae_args" in init else asdict(vae_config(name, cfg.vae_args))
    vae = CausalVideoVAE(VAEConfig(**vae_args)).to(device)
    check_size(cfg, vae, cfg.patch_size if cfg.stage == "all" else 1)  # a DiT comes next in "all"
    if init and "vae" in init:
        vae.load_state_dict(init["vae"])

    def loss(model, heads, batch):
        video = batch["video"].to(device, non_blocking=True)  # (B, F, 3, H, W) in [-1, 1]
        if cfg.vae_texture > 0:  # global RNG, reseeded every step: resumes stay bit-identical
            video = mix_textures(video, cfg.vae_texture)
        total, _ = vae.loss(video, out=model(video))  # forward through DDP so gradients sync
        return total, dict(loss=total)

    def finish(dataset):  # the latent statistics that normalise the DiT's latents
        vae.eval()
        stats = make_dataset(cfg, "vae", seed_offset=10**7, num_clips=min(len(dataset), 256))
        vae.measure_latent_stats(b["video"].to(device) for b in DataLoader(stats, batch_size=cfg.batch_size))

    return SimpleNamespace(model=vae, heads=None, ema=None, params=list(vae.parameters()), lr=cfg.vae_lr,
                           batch_size=cfg.vae_batch_size, loss=loss, finish=finish, about="", validate=None,
                           checkpoint=lambda: dict(vae=vae.state_dict(), vae_args=asdict(vae.cfg)),
                           preview=lambda: preview_vae(cfg, vae, device))

def check_size(cfg, vae, patch):
    """Stop at a --size that does not cut into whole latents of this VAE (and whole patches of the DiT's)."""
    if cfg.size % (vae.cfg.spatial_factor * patch):
        raise SystemExit(f"--size={cfg.size}: use a multiple of {vae.cfg.spatial_factor * patch} (the VAE's "
                         f"factor {vae.cfg.spatial_factor} x the DiT's patch {patch})")

def setup_dit(cfg, stage, init, device):
    """A DiT stage: the DiT (new, or init's) learns to denoise latents of the frozen VAE given the frozen text
    encoder's caption tokens; align freezes its temporal blocks (Bora Sec. 4.2). Priors add their losses."""
    if init is None or "vae" not in init:
        raise SystemExit(f"stage {stage} needs a trained VAE: run `python train.py --stage=vae "
                         f"--out_dir={cfg.out_dir}` or pass --init_from=CKPT")
    vae = CausalVideoVAE.from_checkpoint(init).to(device)
    text_encoder = load_text_encoder(cfg.text_encoder, device)
    if "model_args" in init:  # the align checkpoint (for instruct), or this stage's own (resume)
        model = DiT.from_checkpoint(init, "model").to(device)
        m, v = model.cfg, vae.cfg
        trained = dict(prediction=m.prediction, noise_corr=m.noise_corr, motion_scale=m.motion_scale,
                       size=m.input_size * v.spatial_factor,
                       num_frames=1 + (m.num_frames - 1) * v.temporal_factor)  # in pixels and frames
        for k, mine in trained.items():  # what the DiT learned cannot change between stages
            given = getattr(cfg, k)
            if mine != given:
                raise SystemExit(f"--{k}={given} but the DiT in {cfg.init_from or 'the init checkpoint'} was "
                                 f"trained with {k}={mine}: pass --{k}={mine}")
    else:
        check_size(cfg, vae, cfg.patch_size)
        f, c, h, w = vae.latent_shape(cfg.num_frames, cfg.size)
        fields = dict(DIT_PRESETS[cfg.preset], input_size=h, num_frames=f, in_channels=c,
                      patch_size=cfg.patch_size, text_dim=text_encoder.dim, mixer=cfg.mixer,
                      prediction=cfg.prediction, noise_corr=cfg.noise_corr, temporal_text=cfg.temporal_text,
                      temporal_rope=cfg.temporal_rope, motion_scale=cfg.motion_scale)
        fields.update(config_overrides(DiTConfig, cfg.dit_args, "--dit_args", "hidden_size=192,num_heads=6"))
        try:
            model = DiT(DiTConfig(**fields)).to(device)
        except (AssertionError, ValueError) as e:  # DiTConfig's own checks, e.g. an odd depth
            raise SystemExit(f"--dit_args={cfg.dit_args}: {e}")
    ema = copy.deepcopy(model).requires_grad_(False)
    if "ema" in init:
        ema.load_state_dict(init["ema"])
    if stage == "align":  # Bora Sec. 4.2: temporal attention frozen while aligning text and appearance
        for p in model.temporal_parameters():
            p.requires_grad_(False)
    sched = diffusion.Schedule()
    objective = dict(prediction=model.cfg.prediction, noise_corr=model.cfg.noise_corr,  # beside Endora Eq. 1
                     snr_gamma=cfg.snr_gamma, snr_floor=cfg.snr_floor, motion_weight=cfg.motion_weight,
                     t_importance=cfg.t_importance)
    heads, teacher = priors.build_priors(cfg, model.cfg, device, stage, init)
    frozen = (torch.autocast("cuda" if "cuda" in device else "cpu", dtype=torch.bfloat16)  # the DiT's inputs
              if cfg.frozen_dtype == "bfloat16" else nullcontext())

    def loss(dit, heads_net, batch):
        video = batch["video"].to(device, non_blocking=True)  # (B, F, 3, H, W) in [-1, 1]
        with torch.no_grad(), frozen:  # both return float32, whatever they ran in
            x0 = vae.encode_latents(video, sample=True)  # (B, f, c, h, w), scaled latents
            x0 = diffusion.scale_motion(x0, model.cfg.motion_scale)  # the DiT's latent space
            text, mask = text_encoder(batch["text"])  # (B, L, Dtext), (B, L)
        if heads is None:
            mse = diffusion.loss(dit, x0, text, mask, sched, cfg.p_uncond, **objective)
            return mse, dict(loss=mse)
        # the priors read tapped block features of the same forward pass
        mse, parts = diffusion.loss(dit, x0, text, mask, sched, cfg.p_uncond, return_parts=True,
                                    taps=heads.taps, **objective)
        targets = priors.prior_targets(heads, teacher, video, x0.shape[1])  # the frozen side, no grad
        prior = heads_net(parts["feats"], targets)  # dict(dino=, flow=) unweighted losses
        # Endora Sec. 2.3: L_DDPM + alpha (1 - Corr); MedSora: + lambda L_flow
        total = mse + cfg.dino_weight * prior.get("dino", 0.0) + cfg.flow_weight * prior.get("flow", 0.0)
        return total, dict(loss=mse, **prior)

    def checkpoint():
        fields = dict(model=model.state_dict(), ema=ema.state_dict(), model_args=asdict(model.cfg),
                      vae=vae.state_dict(), vae_args=asdict(vae.cfg), text_encoder=cfg.text_encoder)
        if heads is not None:  # to resume the projectors; sample.py reads only model/ema
            fields.update(priors=heads.state_dict(), prior_args=heads.args)
        return fields

    params = list(model.parameters()) + (list(heads.parameters()) if heads is not None else [])
    return SimpleNamespace(model=model, heads=heads, ema=ema, params=params, lr=cfg.lr, loss=loss,
                           batch_size=cfg.batch_size, checkpoint=checkpoint, finish=lambda dataset: None,
                           validate=validation(cfg, stage, ema, vae, text_encoder, sched, device),
                           about=priors.describe(heads, teacher, cfg) if heads is not None else "",
                           preview=lambda: preview_dit(cfg, stage, ema, vae, text_encoder))

def validation(cfg, stage, model, vae, text_encoder, sched, device, num_t=10):
    """A function giving the fixed-t validation loss of `model` (the EMA, which sample.py uses), or None when
    --val_clips=0. Clips (synthetic: seeds no stage trains on; CSV: spread rows, no held-out split), their
    mean latents, captions, t and noise are fixed once (Open-Sora 1.2): only the model moves the number."""
    if cfg.val_clips <= 0:
        return None
    ds = make_dataset(cfg, stage, seed_offset=2 * 10**8, num_clips=cfg.val_clips)
    items = [ds[i] for i in range(min(cfg.val_clips, len(ds)))]
    video = torch.stack([it["video"] for it in items]).to(device)  # (N, F, 3, H, W)
    with torch.no_grad():
        x0 = vae.encode_latents(video)  # (N, f, c, h, w), mean latents: no sampling noise in the number
        x0 = diffusion.scale_motion(x0, model.cfg.motion_scale)  # the DiT's latent space
        text, mask = text_encoder([it["text"] for it in items])  # (N, L, Dtext), (N, L)
    # the midpoints of num_t equal bins of t (50, 150, ..., 950): t = 0, where eps is unpredictable, is out
    ts = ((torch.arange(num_t) + 0.5) * sched.num_steps / num_t).long().to(device)  # (num_t,)
    g = torch.Generator().manual_seed(12345)
    noise = diffusion.video_noise((num_t * len(items), *x0.shape[1:]), model.cfg.noise_corr, g)
    noise = noise.view(num_t, *x0.shape).to(device)  # (num_t, N, f, c, h, w)

    def validate():
        model.eval()  # the EMA, never trained directly (generate() leaves it in eval mode too)
        val, _ = diffusion.validation_loss(model, x0, text, mask, sched, noise, ts, model.cfg.prediction)
        return val.item()
    return validate

@torch.no_grad()
def preview_vae(cfg, vae, device):
    """End of the VAE stage: five held-out clips beside their reconstructions, and their PSNR."""
    vae.eval()
    ds = make_dataset(cfg, "vae", seed_offset=10**8, num_clips=5)
    video = torch.stack([ds[i]["video"] for i in range(min(5, len(ds)))]).to(device)  # (5, F, 3, H, W)
    recon = vae.decode_latents(vae.encode_latents(video))  # (5, F, 3, H, W)
    psnr = -10 * torch.log10(((recon - video) / 2).pow(2).mean()).item()
    tqdm.write(f"[vae] preview reconstruction PSNR {psnr:.2f} dB (left: input, right: reconstruction)")
    pairs = np.concatenate([data.to_uint8(video), data.to_uint8(recon)], axis=3)  # (5, F, H, 2W, 3)
    save_previews(cfg, "vae", pairs)

def preview_dit(cfg, stage, model, vae, text_encoder):
    """End of a DiT stage: one clip per preview prompt, sampled as sample.py does, from the EMA weights."""
    prompts = preview_prompts(cfg, stage)
    tqdm.write("\n".join(f"[{stage}] preview prompt: {p}" for p in prompts))
    save_previews(cfg, stage, generate(model, vae, text_encoder, prompts, cfg.num_frames, cfg.size,
                                       cfg.preview_steps, cfg.cfg_scale))  # (N, F, H, W, 3)

# ----------------------------------------------------------------------------------------------
# The record of a run: out_dir/metrics.jsonl, one JSON line per logged step, and its picture loss.png

def read_metrics(out_dir):
    """The rows of out_dir/metrics.jsonl, in order; a line cut short by a killed run is left out."""
    path, rows = os.path.join(out_dir, "metrics.jsonl"), []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                with suppress(json.JSONDecodeError):
                    rows.append(json.loads(line))
    return rows

def start_metrics(out_dir, stage, start_step):
    """Drop the stage's lines past start_step from the metrics file, atomically (temp file, then rename):
    a run stopped after logging past its last checkpoint logs those steps again when resumed, never twice."""
    rows = [r for r in read_metrics(out_dir) if r["stage"] != stage or r["step"] <= start_step]
    path = os.path.join(out_dir, "metrics.jsonl")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)

def nice_step(span, n=5):
    """The smallest 1, 2 or 5 x 10^k that cuts span into at most n intervals: the gap between axis ticks."""
    unit = 10 ** math.floor(math.log10(span / n))
    return next(m * unit for m in (1, 2, 5, 10) if span / (m * unit) <= n)

def log_ticks(lo, hi):
    """Tick values between 10**lo and 10**hi: decades if at least three, else 1-2-5, else evenly spaced."""
    for mults in ((1,), (1, 2, 5)):
        ticks = [m * 10.0 ** k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in mults
                 if lo <= math.log10(m) + k <= hi]
        if len(ticks) >= 3:
            return ticks
    step = nice_step(10 ** hi - 10 ** lo)
    return [k * step for k in range(math.ceil(10 ** lo / step), math.floor(10 ** hi / step) + 1)]

def plot_losses(out_dir):
    """out_dir/metrics.jsonl -> out_dir/loss.png (Pillow only), one panel per stage: the training and (when
    logged) validation loss against step, log-scale y. The path, or None when there is nothing to draw."""
    rows = read_metrics(out_dir)
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    if not stages:
        return None
    W, H, L, T, R, B = 420, 300, 64, 34, 16, 44  # panel size; margins left, top, right, bottom
    img = Image.new("RGB", (W * len(stages), H), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default(size=13)
    colours = {"loss": "#1f77b4", "val": "#e6550d"}
    for i, stage in enumerate(stages):
        curves = {k: [(r["step"], r[k]) for r in rows if r["stage"] == stage and 0 < r.get(k, 0) < math.inf]
                  for k in colours}
        points = curves["loss"] + curves["val"]
        if not points:
            continue
        x_max = max(x for x, _ in points)
        lo, hi = (math.log10(f(y for _, y in points)) for f in (min, max))
        mid, half = (lo + hi) / 2, max(0.15, (hi - lo) * 0.55)  # at least a factor 2 of y, 5% margins
        lo, hi, x0, x1 = mid - half, mid + half, i * W + L, (i + 1) * W - R

        def to_px(x, y):  # (step, loss) -> pixel (x, y), log-scale y
            return x0 + x / x_max * (x1 - x0), T + (hi - math.log10(y)) / (hi - lo) * (H - T - B)
        for y in log_ticks(lo, hi):
            py = to_px(0, y)[1]
            draw.line([x0, py, x1, py], fill="#e4e4e4")
            draw.text((x0 - 5, py), f"{y:g}", "black", font, anchor="rm")
        for x in range(0, x_max + 1, max(1, int(nice_step(x_max)))):
            px = to_px(x, 10 ** lo)[0]
            draw.line([px, H - B, px, H - B + 4], fill="black")
            draw.text((px, H - B + 6), str(x), "black", font, anchor="mt")
        draw.rectangle([x0, T, x1, H - B], outline="black")
        draw.text(((x0 + x1) / 2, H - 6), "step", "black", font, anchor="md")
        draw.text((x0, T - 8), f"{stage} (log y)", "black", font, anchor="ls")
        for k, colour in colours.items():
            xy = [to_px(x, y) for x, y in curves[k]]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            if k == "val" or len(xy) < 30:  # a dot on each point, where they are few
                for px, py in xy:
                    draw.ellipse([px - 2.5, py - 2.5, px + 2.5, py + 2.5], fill=colour)
        right = x1  # the legend, right-aligned above the panel
        for k, name in (("val", "val loss"), ("loss", "train loss")):
            if curves[k]:
                draw.text((right, T - 8), name, colours[k], font, anchor="rs")
                right -= draw.textlength(name, font) + 14
    path = os.path.join(out_dir, "loss.png")
    img.save(path)
    return path

# ----------------------------------------------------------------------------------------------
# One stage, top to bottom

def starting_point(cfg, stage):
    """(resume, init): this stage's own checkpoint when resuming (else None), and the checkpoint the models
    start from (the resumed one, --init_from, or the previous stage's file in out_dir; None for a new VAE)."""
    if cfg.resume:
        path, hint = os.path.join(cfg.out_dir, f"{stage}.pt"), f"python train.py --stage={stage}"
        ckpt = data.load_checkpoint(path, hint)
        return ckpt, ckpt
    maker = "align" if stage == "instruct" else "vae"  # the stage that writes the file this one starts from
    path = cfg.init_from or (os.path.join(cfg.out_dir, f"{maker}.pt") if stage != "vae" else "")
    hint = f"python train.py --stage={maker} --out_dir={cfg.out_dir}"
    return None, (data.load_checkpoint(path, hint) if path else None)

def write_checkpoint(path, cfg, stage, step, optimizer, fields):
    """One dict {stage, step, config, optimizer, + the stage's fields}, written atomically; never with a
    non-finite weight (then the run stops, and the file already at path stays)."""
    states = [v for v in fields.values() if isinstance(v, dict)]  # the state dicts of the models
    if not all(t.isfinite().all() for sd in states for t in sd.values() if torch.is_tensor(t)):
        raise diverged(stage, step, path, "non-finite weights")
    data.save_checkpoint(dict(stage=stage, step=step, config=asdict(cfg), optimizer=optimizer.state_dict(),
                              **fields), path)

def diverged(stage, step, path, what="a non-finite loss or gradient norm"):
    """The one-line stop of a diverging run, naming the step, the stage and the checkpoint it keeps. Under
    fp16 the loop checks the loss only: its GradScaler skips the steps with inf gradients itself."""
    kept = f"the last good checkpoint {path} is kept" if os.path.isfile(path) else f"{path} was not written"
    lr, dtype = ("--vae_lr", "--vae_dtype") if stage == "vae" else ("--lr", "--dtype")
    return SystemExit(f"[{stage}] {what} at step {step}: stopped; {kept}. Lower {lr} (or raise "
                      f"--warmup_steps, or use {dtype}=float32)")

def cpu_has_fast_bf16():
    """oneDNN's own test of native bf16 (AVX-512 or AMX on x86); elsewhere, e.g. AVX2 only, it is emulated."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else False

def bf16_fallback(cfg, device):
    """bf16 on a CPU without native bf16 runs 20-25x slower than float32 (RESULTS.md, "Speed": a VAE step
    15.0 s against 0.60 s on an AVX2-only AMD EPYC), so there every bf16 option falls back to float32."""
    if "cuda" in device or cpu_has_fast_bf16():
        return cfg
    slow = {k: "float32" for k in ("dtype", "vae_dtype", "frozen_dtype") if getattr(cfg, k) == "bfloat16"}
    if slow and int(os.environ.get("RANK", 0)) == 0:
        print("note: this CPU has no native bfloat16 (emulated, it is ~20x slower): "
              f"{', '.join('--' + k for k in slow)} run in float32")
    return replace(cfg, **slow)

def stage_dtype(cfg, stage, device_type):
    """A stage's autocast dtype: --vae_dtype for the VAE stage when set, else --dtype (auto: bf16 on CUDA)."""
    want = cfg.vae_dtype if stage == "vae" and cfg.vae_dtype != "auto" else cfg.dtype
    return want if want != "auto" else ("bfloat16" if device_type == "cuda" else "float32")

def train_stage(cfg, stage, env):
    """Run one stage from start (or resume point) to its last step; return the checkpoint path."""
    rank, world, device, master = env["rank"], env["world"], env["device"], env["rank"] == 0
    device_type = "cuda" if "cuda" in device else "cpu"
    dtype = stage_dtype(cfg, stage, device_type)
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=getattr(torch, dtype))
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))  # only fp16 needs loss scaling
    max_steps, ckpt_path = getattr(cfg, f"{stage}_steps"), os.path.join(cfg.out_dir, f"{stage}.pt")
    torch.manual_seed(cfg.seed + rank)

    # -- models (the stage is decided here, once), data, optimizer
    resume, init = starting_point(cfg, stage)
    s = setup_vae(cfg, init, device) if stage == "vae" else setup_dit(cfg, stage, init, device)
    dataset, start_step, seen = make_dataset(cfg, stage), resume["step"] if resume else 0, {}
    stream = batches(dataset, cfg, s.batch_size, start_step, rank, world, balancing(cfg, stage), seen)
    optimizer, n_decay, n_no_decay = configure_optimizer(s.params, s.lr, cfg.weight_decay, device_type)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
    if master:
        n_all = sum(p.numel() for p in s.model.parameters())
        n_frozen = sum(p.numel() for p in s.model.parameters() if not p.requires_grad)
        tqdm.write(f"[{stage}] {n_all / 1e6:.2f} M params, {(n_decay + n_no_decay) / 1e6:.2f} M trained "
                   f"({n_decay} decayed, {n_no_decay} not), {n_frozen / 1e6:.2f} M frozen; "
                   f"{len(dataset)} clips; {max_steps} steps from {start_step}")
        if s.about:
            tqdm.write(f"[{stage}] priors: {s.about}")
        start_metrics(cfg.out_dir, stage, start_step)  # a resumed stage appends from its checkpoint's step
    # important! the loop runs the compiled / DDP-wrapped modules; checkpoints and the EMA read the raw ones
    compiled = cfg.compile == "true" or (cfg.compile == "auto" and device_type == "cuda")  # CPU: no gain
    model, heads = torch.compile(s.model) if compiled else s.model, s.heads
    if env["ddp"]:
        ids = [env["local_rank"]] if device_type == "cuda" else None
        model = DDP(model, device_ids=ids)
        heads = DDP(heads, device_ids=ids) if heads is not None else None  # projectors average gradients too
    nets = [n for n in (model, heads) if n is not None]

    # -- the loop
    model.train()
    end = min(max_steps, start_step + cfg.max_run_steps) if cfg.max_run_steps else max_steps
    bar = tqdm(range(start_step, end), initial=start_step, total=max_steps, desc=stage, disable=not master,
               dynamic_ncols=True)
    t0, sums, n_steps = time.time(), {}, 0  # sums: name -> sum over micro-steps of a logged loss
    for step in bar:
        lr = get_lr(step, max_steps, s.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr
        for micro in range(cfg.grad_accum):
            batch = next(stream)
            # reseed from (seed, step, micro-step, rank) after fetching the batch (making a DataLoader
            # iterator draws from the global RNG): t and noise depend only on the step, so a resume is exact
            torch.manual_seed(cfg.seed + 1_000_003 * step + 1009 * micro + rank)
            if env["ddp"]:  # all-reduce gradients only on the last micro-step (nanoGPT)
                for net in nets:
                    net.require_backward_grad_sync = micro == cfg.grad_accum - 1
            with ctx:
                loss, logged = s.loss(model, heads, batch)
            scaler.scale(loss / cfg.grad_accum).backward()
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(s.params, cfg.grad_clip)
        if not torch.isfinite(sums["loss"] + (0 if scaler.is_enabled() else grad_norm)):  # fp16: see diverged
            raise diverged(stage, step + 1, ckpt_path)  # before a nan or inf reaches the weights
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if s.ema is not None:
            update_ema(s.ema, s.model, min(cfg.ema_decay, (1 + step) / (10 + step)))  # EMA warm-up
        n_steps += 1
        last = step + 1 == end
        if (step + 1) % cfg.log_every == 0 or last:
            total = torch.stack(list(sums.values()))  # (K,) this rank's sums
            if env["ddp"]:
                dist.all_reduce(total)  # the logged losses are means over all ranks
            means = dict(zip(sums, (total / (n_steps * cfg.grad_accum * world)).tolist()))
            if master and s.validate is not None:
                means["val"] = s.validate()  # fixed clips, t and noise: comparable across steps and runs
            dt = (time.time() - t0) / n_steps
            if master:
                bar.set_postfix(loss=f"{means['loss']:.4f}")
                row = dict(stage=stage, step=step + 1, **means, lr=lr, grad_norm=grad_norm.item(),
                           ms_per_step=dt * 1000, clips_per_s=s.batch_size * cfg.grad_accum * world / dt)
                with open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                losses = " | ".join(f"{k} {v:.4f}" for k, v in means.items())  # loss, then the priors apart
                tqdm.write(f"[{stage}] step {step + 1} | {losses} | lr {lr:.2e} | "
                           f"grad-norm {row['grad_norm']:.3f} | {row['ms_per_step']:.0f} ms/step | "
                           f"{row['clips_per_s']:.1f} clips/s")
            t0, sums, n_steps = time.time(), {}, 0
        if master and ((step + 1) % cfg.ckpt_every == 0 and not last):
            write_checkpoint(ckpt_path, cfg, stage, step + 1, optimizer, s.checkpoint())
    bar.close()
    count_files(cfg, seen, rank)  # the epoch the run ends in

    # -- finish: the VAE measures its latent statistics; rank 0 writes the checkpoint and the previews
    done = end == max_steps  # else a time-limited run (max_run_steps): save here for --resume=True
    if done:
        s.finish(dataset)
    if master:
        write_checkpoint(ckpt_path, cfg, stage, end, optimizer, s.checkpoint())
        if done:
            s.preview()
            tqdm.write(f"[{stage}] wrote {ckpt_path} and the loss curves {plot_losses(cfg.out_dir)}")
        else:
            tqdm.write(f"[{stage}] stopped at step {end} of {max_steps}: continue with --resume=True "
                       f"--stage={stage}")
    if env["ddp"]:
        dist.barrier()
    return ckpt_path if done else None

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = data.parse_args(TrainConfig, argv, PRESETS)
    if cfg.plot:  # only draw a run's loss curves
        path = plot_losses(cfg.plot)
        if path is None:
            raise SystemExit(f"no metrics in {cfg.plot}/metrics.jsonl: nothing to draw")
        print(f"wrote {path}")
        return path
    cfg = replace(cfg, compile=cfg.compile.lower())
    data.check_options(cfg, RULES)
    if (cfg.num_frames - 1) % 4:
        raise SystemExit(f"--num_frames={cfg.num_frames}: the causal VAE needs 1+4k frames, e.g. 17 or 33")
    if 0 < cfg.snr_gamma < cfg.snr_floor:
        raise SystemExit(f"--snr_floor={cfg.snr_floor} is above --snr_gamma={cfg.snr_gamma}: the floor must "
                         f"be at most the cap (e.g. --snr_floor=1 with Min-SNR-5)")
    if cfg.snr_floor > 0 and cfg.prediction == "eps":  # eps-MSE x floor / SNR: x 2.5e4 at t = T-1
        raise SystemExit(f"--snr_floor={cfg.snr_floor} needs --prediction=v: on an eps target it weighs the "
                         f"noisiest steps by 1/SNR (up to 2.5e4); add --snr_floor=0 to train with eps")
    stages = ["vae", "align", "instruct"] if cfg.stage == "all" else [cfg.stage]
    device = data.pick_device(cfg.device)
    cfg = bf16_fallback(cfg, device)
    if int(os.environ.get("RANK", 0)) == 0:  # the writer: probe out_dir, remove killed writes' temp files
        for stale in glob.glob(os.path.join(data.writable_dir(cfg.out_dir, "--out_dir"), "*.tmp[0-9]*")):
            os.remove(stale)
        keys = [a[2:].split("=")[0] for a in argv]
        ignored = [f"--{k}" for k in keys if k in READ_BY and not set(READ_BY[k].split()) & set(stages)]
        if ignored:
            print(f"note: --stage={cfg.stage} does not read {', '.join(ignored)}: ignored")
    # -- DDP setup, nanoGPT-style: the same file runs under plain python and under torchrun
    ddp = int(os.environ.get("RANK", -1)) != -1
    env = dict(ddp=ddp, rank=0, world=1, local_rank=0, device=device)
    if ddp:
        use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        local_rank = int(os.environ["LOCAL_RANK"])
        env.update(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                   device=f"cuda:{local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(env["device"])
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for fp32 matmuls on Ampere+ (no effect on CPU)
    torch.backends.cudnn.allow_tf32 = True
    t_start, path = time.time(), None
    for i, stage in enumerate(stages):
        stage_cfg = replace(cfg, init_from=path) if i > 0 else cfg  # chained: the previous stage's checkpoint
        if cfg.stage == "all" and cfg.resume:  # a whole chain: skip finished stages, resume the current one
            mine = os.path.join(cfg.out_dir, f"{stage}.pt")
            saved = data.load_checkpoint(mine)["step"] if os.path.isfile(mine) else None
            if saved is not None and saved >= getattr(cfg, f"{stage}_steps"):
                path = mine
                continue
            stage_cfg = replace(stage_cfg, resume=saved is not None)
        path = train_stage(stage_cfg, stage, env)
        if path is None:  # stopped early by max_run_steps
            break
    if env["rank"] == 0 and path:
        hint = "" if stages[-1] == "vae" else f"\nsample with: python sample.py \"your prompt\" --ckpt={path}"
        print(f"done in {(time.time() - t_start) / 60:.1f} min; checkpoint: {path}{hint}")
    if ddp:
        dist.destroy_process_group()
    return path

if __name__ == "__main__":
    main()
