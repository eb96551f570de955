"""
Train medvid: the causal video VAE, then the text-conditioned video DiT in Bora's two stages.

  python train.py                                    # tiny preset on CPU: vae -> align -> instruct (~15 min, 2 cores)
  python train.py --stage=vae --preset=small --data=videos.csv
  torchrun --standalone --nproc_per_node=8 train.py --stage=align --preset=base --data=videos.csv
  torchrun --nnodes=2 --node_rank=0 --rdzv_endpoint=HOST:29500 --nproc_per_node=8 train.py --stage=instruct ...

Stages (Bora arXiv 2407.08944 Sec. 4.2; Ophora, Li et al. 2025: progressive tuning):
  vae      the causal 3D VAE on video frames (L1 + KL), then its latent statistics are measured
  align    the DiT on captions "This is a {modality} video." with the temporal blocks frozen
  instruct everything trainable, full captions, initialised from the align checkpoint
Each stage writes out_dir/{stage}.pt; the next stage's init_from defaults to the previous one, and any
stage can start from any checkpoint (--init_from=PATH), which is how progressive tuning is run.
"""
import ast
import copy
import inspect
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

import data
import diffusion
import priors
from dit import DIT_PRESETS, DiT, DiTConfig, load_text_encoder
from vae import VAE_PRESETS, CausalVideoVAE, VAEConfig, mix_textures


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out/tiny"      # checkpoints out_dir/{vae,align,instruct}.pt and previews/
    stage: str = "all"             # all | vae | align | instruct
    init_from: str = ""            # checkpoint to start from; '' = the previous stage's file in out_dir
    resume: bool = False           # continue out_dir/{stage}.pt at its saved step, optimizer and EMA
    max_run_steps: int = 0         # stop this run after N steps and checkpoint (time-limited jobs); 0 = no limit
    preset: str = "tiny"           # tiny | small | base | paper: sizes of the models and the run below
    # data
    data: str = ""                 # CSV `path,text,modality[,num_frames,fps]` or headerless `path,text` (python data.py --make_csv DIR); '' = synthetic
    num_clips: int = 100_000       # synthetic clips per epoch (seeds 0..num_clips-1)
    num_frames: int = 17           # video frames per clip, 1+4k (17 frames -> 5 latent frames)
    size: int = 32                 # training resolution (short-side resize + center crop, Bora App. A)
    frame_interval: int = 1        # take every k-th frame of a real video (Endora/Latte use 3)
    num_workers: int = 1           # DataLoader worker processes (decoding or rendering beside the math)
    balance: str = "auto"          # CSV modality balancing (Bora Sec. 4.2): auto (weight in align, else none) | none | weight | cap
    motion_threshold: float = 0.0  # Bora App. A's K: the interval grows from 1 until the clip's mean |frame diff| (0-255) exceeds K; 0 = frame_interval
    max_interval: int = 8          # the widest interval the motion threshold may choose
    short_clips: str = "pad"       # videos shorter than num_frames: pad (repeat frames) | skip; both are counted each epoch
    hflip: str = ""                # modalities flipped left-right at random, e.g. endoscopy,cell (never ultrasound, rt-mri, ophthalmic-surgery)
    # model
    text_encoder: str = "minilm"   # minilm (offline) | hub id or folder, e.g. google/t5-v1_1-xxl (Bora)
    vae_preset: str = ""           # '' = same name as preset when the VAE has it, else base
    vae_args: str = ""             # VAEConfig fields over the preset, for a new VAE: e.g. freq_comp=False,ffl_weight=0.1
    mixer: str = "attn"            # DiT token mixers: attn | mamba | hybrid (MedSora); for a new DiT only
    # optimisation (per stage)
    batch_size: int = 16           # per process, DiT stages
    vae_batch_size: int = 8        # per process, VAE stage (a conv3d step costs more per clip)
    grad_accum: int = 1            # micro-batches per optimizer step
    vae_steps: int = 500
    align_steps: int = 300
    instruct_steps: int = 800
    lr: float = 1e-3               # DiT peak lr: 1e-3 suits the 2.8 M tiny model (Endora/Latte use 1e-4 at XL size)
    vae_lr: float = 1e-3
    vae_texture: float = 0.0       # VAE stage: share of clips replaced by generic 1/f textures (vae.texture_video); 0.5
                                   # lifts real-clip PSNR a lot for a VAE trained on synthetic clips (issue 4 note)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1      # cosine decay to lr * min_lr_ratio at the end of the stage
    weight_decay: float = 0.01     # on matrices only
    grad_clip: float = 1.0
    ema_decay: float = 0.999       # short runs: 0.999 with warm-up, not DiT's 0.9999
    p_uncond: float = 0.1          # caption drop-out for classifier-free guidance
    # training priors (priors.py): Endora's DINO prior and MedSora's flow alignment; off by default
    dino: str = "none"             # none | ViT/DINOv2 hub id or folder for Endora's prior, e.g. facebook/dino-vits8
    dino_mode: str = "corr"        # corr: Endora Eq. 2 (channel-mean Pearson over tokens) | token: REPA per-token cosine
    dino_weight: float = 0.5       # Endora's alpha; 0 keeps the teacher for --flow=dino only
    dino_layers: str = "2,5,8,11"  # teacher blocks, 0-based for a 12-block ViT (scaled to the teacher's depth)
    dino_grid_mult: int = 2        # teacher token grid = m x the DiT's; projector = m x m conv, stride m (Endora: 2)
    flow: str = "none"             # none | hs: Horn-Schunck flow (u, v, 1) per token | dino: DINO tokens of the flow image
    flow_weight: float = 0.1       # MedSora's weight of the flow alignment loss
    flow_t_weight: bool = False    # MedSora's code: x 1/(t+1) per sample (mean weight ~0.0075)
    flow_margin: float = 0.0       # MedSora's code: hinge max(L - 0.01, 0); with t-weighting it zeroes most steps
    prior_stages: str = "align,instruct"  # stages (comma-separated) that train with the priors on
    prior_cache_gb: float = 1.0    # teacher outputs cached per clip in RAM (key: hash of the frames); 0 = off
    # logging / previews
    log_every: int = 50
    ckpt_every: int = 500
    preview_steps: int = 50        # DDIM steps for the end-of-stage preview videos
    cfg_scale: float = 4.0
    # system
    device: str = "auto"           # auto | cpu | cuda
    dtype: str = "auto"            # auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    compile: str = "auto"          # auto = torch.compile on CUDA only
    seed: int = 0


# Run-size presets: only keys the command line does not set are taken from here.
PRESETS = {
    "tiny":  dict(size=32, num_frames=17, batch_size=16),
    "small": dict(size=128, num_frames=17, batch_size=8, vae_steps=20_000, align_steps=50_000,
                  instruct_steps=100_000, lr=1e-4, vae_lr=2e-4, ema_decay=0.9999, num_workers=4, log_every=100),
    "base":  dict(size=256, num_frames=17, batch_size=4, vae_steps=50_000, align_steps=100_000,
                  instruct_steps=200_000, lr=1e-4, vae_lr=1e-4, ema_decay=0.9999, num_workers=6, log_every=100),
    "paper": dict(size=256, num_frames=33, batch_size=2, vae_steps=100_000, align_steps=150_000,
                  instruct_steps=300_000, lr=1e-4, vae_lr=1e-4, ema_decay=0.9999, num_workers=8, log_every=100),
}


def parse_args(cls, argv, presets=None):
    """nanoGPT-style --key=value overrides of a dataclass; values parsed with literal_eval and type-checked.
    Unknown keys and malformed arguments are one-line errors."""
    names = {f.name: f for f in fields(cls)}
    given = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"bad argument {arg!r}: options are --key=value, e.g. --stage=align")
        key, val = arg[2:].split("=", 1)
        if key not in names:
            raise SystemExit(f"unknown option --{key}; valid options: {', '.join(names)}")
        default = getattr(cls, key)
        if isinstance(default, str):
            given[key] = val
            continue
        try:
            val = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--{key}={val}: expected a {type(default).__name__}")
        if isinstance(default, float) and isinstance(val, int) and not isinstance(val, bool):
            val = float(val)
        if type(val) is not type(default):
            raise SystemExit(f"--{key}={val!r}: expected a {type(default).__name__}")
        given[key] = val
    if presets is not None:
        name = given.get("preset", getattr(cls, "preset", None))
        if name not in presets:
            raise SystemExit(f"unknown preset {name!r}: choose one of {', '.join(presets)}")
        given = {**presets[name], **given}
    return cls(**given)


def vae_config(name, overrides=""):
    """VAE_PRESETS[name] with `key=value,key=value` overrides (the --vae_args of an ablation), type-checked."""
    if name not in VAE_PRESETS:
        raise SystemExit(f"unknown --vae_preset={name}: choose one of {', '.join(VAE_PRESETS)}")
    args = [f"--{kv}" for kv in overrides.split(",") if kv]  # channel_mult (a tuple with commas): not settable here
    given = parse_args(VAEConfig, args)
    return VAEConfig(**{**VAE_PRESETS[name], **{k: getattr(given, k) for k in (a[2:].split("=", 1)[0] for a in args)}})


# ----------------------------------------------------------------------------------------------
# Checkpoints: one dict, written atomically, loaded with weights_only=True

def save_checkpoint(obj, path):
    """Write to a temp file in the same folder, then rename: a crash mid-write never corrupts `path`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic on POSIX and Windows


def load_checkpoint(path, hint="python train.py"):
    if not os.path.isfile(path):
        raise SystemExit(f"no checkpoint at {path}: make it with `{hint}` or pass the right path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"cannot read checkpoint {path} ({type(e).__name__}): the file is corrupt or not a medvid checkpoint")


def vae_from_checkpoint(ckpt):
    vae = CausalVideoVAE(VAEConfig(**ckpt["vae_args"]))
    vae.load_state_dict(ckpt["vae"])
    return vae.eval().requires_grad_(False)


def dit_from_checkpoint(ckpt, key="ema"):
    model = DiT(DiTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt[key])
    return model


# ----------------------------------------------------------------------------------------------
# Small pieces of the loop

def configure_optimizer(params, lr, weight_decay, device_type):
    """AdamW with weight decay on matrices only (biases, norms, embeddings' 1-d vectors get none), fused on CUDA."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
    fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=fused or None), sum(p.numel() for p in decay), sum(p.numel() for p in no_decay)


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


def batches(dataset, cfg, batch_size, start_step, rank, world):
    """An endless stream of batches in a fixed order given (seed, step): each epoch's order is data.epoch_order (a
    seeded permutation, or Bora's modality balancing for CSV data, dataset.balance), identical on every rank and
    split across ranks, so a resumed run at step s sees exactly the batches the first run would have. Each clip is
    asked for as (index, epoch, position), which seeds its random frame window independently of workers and resumes.
    At each epoch's end, for CSV data, rank 0 prints one line counting unreadable and short files over all ranks.
    Debug hook: env MEDVID_INDEX_LOG=PREFIX appends, per batch this rank yields, a line `epoch position:index ...`
    to PREFIX.rank{rank} (the DDP test reads it to check shards and resumes)."""
    per_rank = batch_size * cfg.grad_accum
    modalities, balance = getattr(dataset, "modalities", None), getattr(dataset, "balance", "none")
    order = lambda epoch: data.epoch_order(len(dataset), cfg.seed, epoch, modalities, balance)  # noqa: E731
    steps_per_epoch = len(order(0)) // (per_rank * world)
    if steps_per_epoch == 0:
        raise SystemExit(f"an epoch has {len(order(0))} clips, fewer than one global batch ({per_rank * world}): lower --batch_size")
    epoch, k = divmod(start_step, steps_per_epoch)
    log = os.environ.get("MEDVID_INDEX_LOG")
    while True:
        keys = [(i, epoch, pos) for pos, i in enumerate(order(epoch))]
        mine = keys[rank::world][k * per_rank: steps_per_epoch * per_rank]  # this rank's shard, from the resume point
        loader = DataLoader(dataset, batch_size=batch_size, sampler=mine, num_workers=cfg.num_workers,
                            drop_last=True, persistent_workers=False, pin_memory=torch.cuda.is_available())
        counts = torch.zeros(2, dtype=torch.long)  # unreadable files skipped, short clips padded or skipped
        for b, batch in enumerate(loader):
            if log:
                with open(f"{log}.rank{rank}", "a") as f:
                    f.write(f"{epoch} " + " ".join(f"{p}:{i}" for i, _, p in mine[b * batch_size:(b + 1) * batch_size]) + "\n")
            if "skipped" in batch:
                counts += torch.stack([batch.pop("skipped").sum(), batch.pop("short").sum()])
            yield batch
        if hasattr(dataset, "num_skipped"):  # every rank reaches this at the same step: a safe place to sum
            if dist.is_initialized():
                c = counts.to("cuda" if dist.get_backend() == "nccl" else "cpu")
                dist.all_reduce(c)
                counts = c.cpu()
            if rank == 0:
                tqdm.write(f"epoch {epoch}: {counts[0]} unreadable file(s) skipped (named in the warnings), {counts[1]} "
                           f"video(s) shorter than {cfg.num_frames} frames {'padded' if cfg.short_clips == 'pad' else 'skipped'}")
        epoch, k = epoch + 1, 0


def make_dataset(cfg, stage, seed_offset=0, num_clips=None):
    """The stage's dataset. CSV data: num_clips (the VAE's statistics and previews) takes that many rows spread over
    the CSV; dataset.balance is the modality balancing train.batches applies (auto: weight in align, else none)."""
    align = stage == "align"  # Bora Sec. 4.2: stage-1 captions are "This is a {modality} video."
    if not cfg.data:
        return data.SyntheticVideoDataset(num_clips or cfg.num_clips, cfg.num_frames, cfg.size, seed_offset=seed_offset, align=align)
    balance = cfg.balance if cfg.balance != "auto" else ("weight" if align else "none")  # Bora: balanced stage 1
    if balance not in ("none", "weight", "cap"):
        raise SystemExit(f"--balance={cfg.balance}: use auto, none, weight or cap")
    try:
        ds = data.VideoCSVDataset(cfg.data, cfg.num_frames, cfg.size, cfg.frame_interval, align=align, seed=cfg.seed,
                                  motion_threshold=cfg.motion_threshold, max_interval=cfg.max_interval,
                                  short_clips=cfg.short_clips, hflip=cfg.hflip)
    except ValueError as e:  # a missing or malformed CSV, a bad option: one line, not a traceback
        raise SystemExit(str(e))
    ds.balance = balance
    if num_clips:
        return torch.utils.data.Subset(ds, np.unique(np.linspace(0, len(ds) - 1, min(num_clips, len(ds))).round().astype(int)).tolist())
    return ds


def preview_prompts(cfg, stage):
    """One prompt per modality: from the CSV's rows (the first caption of each modality, up to 8; no video is
    decoded), or for the synthetic benchmark from clips the model never trained on (seeds past the training range)."""
    if cfg.data:
        first = {}
        for r in data.read_csv(cfg.data):
            first.setdefault(r["modality"], r)  # each modality's first row, in CSV order
        return list(dict.fromkeys(data.align_caption(m) if stage == "align" else r["text"] for m, r in list(first.items())[:8]))
    if stage == "align":
        return [data.align_caption(m) for m in data.MODALITIES]
    return [data.render_synthetic(m, 10**8 + i, cfg.num_frames, cfg.size)[1] for i, m in enumerate(data.MODALITIES)]


# ----------------------------------------------------------------------------------------------

def train_stage(cfg, stage, env):
    """Run one stage from start (or resume point) to its last step; return the checkpoint path."""
    rank, world, device, master = env["rank"], env["world"], env["device"], env["rank"] == 0
    device_type = "cuda" if "cuda" in device else "cpu"
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device_type == "cuda" else "float32")
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=getattr(torch, dtype))
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))  # only fp16 needs loss scaling
    max_steps = getattr(cfg, f"{stage}_steps")
    ckpt_path = os.path.join(cfg.out_dir, f"{stage}.pt")
    torch.manual_seed(cfg.seed + rank)

    # -- where we start from: resume this stage, or initialise from the previous stage
    prev = {"vae": "", "align": "vae.pt", "instruct": "align.pt"}[stage]
    init_path = cfg.init_from or (os.path.join(cfg.out_dir, prev) if prev else "")
    resume = load_checkpoint(ckpt_path, f"python train.py --stage={stage}") if cfg.resume else None
    init = resume or (load_checkpoint(init_path, f"python train.py --stage={'vae' if prev == 'vae.pt' else 'align'} "
                                                 f"--out_dir={cfg.out_dir}") if init_path else None)

    # -- data
    dataset = make_dataset(cfg, stage)
    start_step = resume["step"] if resume else 0
    batch_size = cfg.vae_batch_size if stage == "vae" else cfg.batch_size
    stream = batches(dataset, cfg, batch_size, start_step, rank, world)

    # -- models
    heads = teacher = cache = None  # the training priors (DiT stages only)
    if stage == "vae":
        vae_name = cfg.vae_preset or (cfg.preset if cfg.preset in VAE_PRESETS else "base")
        vae_args = init["vae_args"] if init and "vae_args" in init else asdict(vae_config(vae_name, cfg.vae_args))
        model = CausalVideoVAE(VAEConfig(**vae_args)).to(device)
        if init and "vae" in init:
            model.load_state_dict(init["vae"])
        ema = None
        lr_peak = cfg.vae_lr
    else:
        if init is None or "vae" not in init:
            raise SystemExit(f"stage {stage} needs a trained VAE: run `python train.py --stage=vae --out_dir={cfg.out_dir}` "
                             f"or pass --init_from=CKPT")
        vae = vae_from_checkpoint(init).to(device)
        text_encoder = load_text_encoder(cfg.text_encoder, device)
        f, c, h, w = vae.latent_shape(cfg.num_frames, cfg.size)
        model_args = init.get("model_args") or asdict(DiTConfig(**DIT_PRESETS[cfg.preset], input_size=h, num_frames=f,
                                                                in_channels=c, text_dim=text_encoder.dim, mixer=cfg.mixer))
        model = DiT(DiTConfig(**model_args)).to(device)
        if "model" in init:
            model.load_state_dict(init["model"])
        ema = copy.deepcopy(model).requires_grad_(False)
        if "ema" in init:
            ema.load_state_dict(init["ema"])
        if stage == "align":  # Bora Sec. 4.2: temporal attention frozen while aligning text and appearance
            for p in model.temporal_parameters():
                p.requires_grad_(False)
        sched = diffusion.Schedule()
        lr_peak = cfg.lr
        # projector heads + frozen teacher of the priors, or Nones; heads resume from init when built alike
        heads, teacher, cache = priors.build_priors(cfg, model.cfg, device, stage, init)
    raw_heads = heads  # like raw_model: saved unwrapped; never used or loaded by sample.py
    raw_model = model  # important! save and EMA-update the raw module, never the compiled/DDP wrapper
    params = list(model.parameters()) + (list(raw_heads.parameters()) if raw_heads is not None else [])
    optimizer, n_decay, n_no_decay = configure_optimizer(params, lr_peak, cfg.weight_decay, device_type)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    if master:
        tqdm.write(f"[{stage}] {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
                   f"{(n_decay + n_no_decay) / 1e6:.2f} M trained ({n_decay} decayed, {n_no_decay} not), "
                   f"{n_frozen / 1e6:.2f} M frozen; {len(dataset)} clips; {max_steps} steps from {start_step}")
        if raw_heads is not None:
            tqdm.write(f"[{stage}] priors: {priors.describe(raw_heads, teacher, cfg)}")
    if cfg.compile == "True" or (cfg.compile == "auto" and device_type == "cuda"):
        model = torch.compile(model)
    if env["ddp"]:
        model = DDP(model, device_ids=[env["local_rank"]] if device_type == "cuda" else None)
        if raw_heads is not None:  # the projectors' gradients must be averaged across ranks too
            heads = DDP(raw_heads, device_ids=[env["local_rank"]] if device_type == "cuda" else None)

    # -- the loop
    def checkpoint(step):
        obj = dict(stage=stage, step=step, config=asdict(cfg), optimizer=optimizer.state_dict())
        if stage == "vae":
            obj.update(vae=raw_model.state_dict(), vae_args=asdict(raw_model.cfg))
        else:
            obj.update(model=raw_model.state_dict(), ema=ema.state_dict(), model_args=asdict(raw_model.cfg),
                       vae=vae.state_dict(), vae_args=asdict(vae.cfg), text_encoder=cfg.text_encoder)
            if raw_heads is not None:  # to resume the projectors; sample.py reads only model/ema
                obj.update(priors=raw_heads.state_dict(), prior_args=raw_heads.args)
        save_checkpoint(obj, ckpt_path)

    model.train()
    end = min(max_steps, start_step + cfg.max_run_steps) if cfg.max_run_steps else max_steps
    bar = tqdm(range(start_step, end), initial=start_step, total=max_steps, desc=stage, disable=not master, dynamic_ncols=True)
    t0, loss_sum, n_sum = time.time(), torch.zeros(4, device=device), 0  # sums of loss, count, dino, flow
    for step in bar:
        lr = get_lr(step, max_steps, lr_peak, cfg.warmup_steps, cfg.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr
        for micro in range(cfg.grad_accum):
            batch = next(stream)
            # reseed from (seed, step, micro-step, rank) after fetching the batch (making a DataLoader iterator
            # draws from the global RNG): t and noise depend only on the step, so a resumed run is bit-identical
            torch.manual_seed(cfg.seed + 1_000_003 * step + 1009 * micro + rank)
            video = batch["video"].to(device, non_blocking=True)  # (B, F, 3, H, W) in [-1, 1]
            if stage == "vae" and cfg.vae_texture > 0:  # global RNG, reseeded just above: resumes stay bit-identical
                video = mix_textures(video, cfg.vae_texture)
            if env["ddp"]:  # all-reduce gradients only on the last micro-step (nanoGPT)
                model.require_backward_grad_sync = micro == cfg.grad_accum - 1
                if raw_heads is not None:
                    heads.require_backward_grad_sync = micro == cfg.grad_accum - 1
            prior = {}
            with ctx:
                if stage == "vae":
                    loss, _ = raw_model.loss(video, out=model(video))  # forward through DDP so gradients sync
                else:
                    with torch.no_grad():
                        x0 = vae.encode_latents(video, sample=True)  # (B, f, c, h, w), scaled latents
                        text, mask = text_encoder(batch["text"])  # (B, L, Dtext), (B, L)
                    if raw_heads is None:
                        loss = diffusion.loss(model, x0, text, mask, sched, cfg.p_uncond)
                    else:  # the priors read tapped block features of the same forward pass
                        loss, parts = diffusion.loss(model, x0, text, mask, sched, cfg.p_uncond, return_parts=True,
                                                     taps=raw_heads.taps)
                        targets = priors.prior_targets(raw_heads, teacher, video, x0.shape[1], cache)  # frozen side, no grad
                        prior = heads(parts["feats"], targets, parts["t"])  # dict(dino=, flow=) unweighted losses
            # Endora Sec. 2.3: L_DDPM + alpha (1 - Corr); MedSora: + lambda L_flow
            total = loss + cfg.dino_weight * prior.get("dino", 0.0) + cfg.flow_weight * prior.get("flow", 0.0)
            scaler.scale(total / cfg.grad_accum).backward()
            zero = torch.zeros((), device=device)
            loss_sum += torch.stack([loss.detach().float(), torch.ones((), device=device),
                                     prior.get("dino", zero).detach().float(), prior.get("flow", zero).detach().float()])
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)  # DiT (+ projector heads)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            update_ema(ema, raw_model, min(cfg.ema_decay, (1 + step) / (10 + step)))  # EMA warm-up
        n_sum += 1
        last = step + 1 == end
        if (step + 1) % cfg.log_every == 0 or last:
            if env["ddp"]:
                dist.all_reduce(loss_sum)  # the logged loss is the mean over all ranks
            dt = (time.time() - t0) / n_sum
            clips = batch_size * cfg.grad_accum * world / dt
            if master:
                bar.set_postfix(loss=f"{(loss_sum[0] / loss_sum[1]).item():.4f}")
                pri = "".join(f" | {k} {(loss_sum[2 + i] / loss_sum[1]).item():.4f}" for i, k in enumerate(("dino", "flow"))
                              if raw_heads is not None and k in raw_heads.names)  # the priors, logged apart
                tqdm.write(f"[{stage}] step {step + 1} | loss {(loss_sum[0] / loss_sum[1]).item():.4f}{pri} | lr {lr:.2e} | "
                           f"grad-norm {grad_norm.item():.3f} | {dt * 1000:.0f} ms/step | {clips:.1f} clips/s")
            t0, loss_sum, n_sum = time.time(), torch.zeros(4, device=device), 0
        if master and ((step + 1) % cfg.ckpt_every == 0 and not last):
            checkpoint(step + 1)
    bar.close()
    if end < max_steps:  # a time-limited run: save where we are; --resume=True continues from here
        if master:
            checkpoint(end)
            tqdm.write(f"[{stage}] stopped at step {end} of {max_steps}: continue with --resume=True --stage={stage}")
        if env["ddp"]:
            dist.barrier()
        return None

    # -- finish: the VAE measures its latent statistics; everyone writes the final checkpoint and previews
    if stage == "vae":
        raw_model.eval()
        stats_ds = make_dataset(cfg, "vae", seed_offset=10**7, num_clips=min(len(dataset), 256))
        raw_model.measure_latent_stats(b["video"].to(device) for b in DataLoader(stats_ds, batch_size=cfg.batch_size))
    if master:
        checkpoint(max_steps)
        write_previews(cfg, stage, raw_model if stage == "vae" else ema, None if stage == "vae" else (vae, text_encoder), device)
        tqdm.write(f"[{stage}] wrote {ckpt_path}")
    if env["ddp"]:
        dist.barrier()
    return ckpt_path


@torch.no_grad()
def write_previews(cfg, stage, model, extra, device):
    """End-of-stage look at the model: VAE reconstructions side by side, or one sample per prompt."""
    from sample import generate, to_uint8  # imported here: sample.py imports train.py for its CLI
    out = os.path.join(cfg.out_dir, "previews")
    model.eval()
    if stage == "vae":
        ds = make_dataset(cfg, "vae", seed_offset=10**8, num_clips=5)
        video = torch.stack([ds[i]["video"] for i in range(min(5, len(ds)))]).to(device)  # (5, F, 3, H, W)
        recon = model.decode_latents(model.encode_latents(video))  # (5, F, 3, H, W)
        frames = np.concatenate([to_uint8(video), to_uint8(recon)], axis=3)  # (5, F, H, 2W, 3): input | reconstruction
        psnr = -10 * torch.log10(((recon - video) / 2).pow(2).mean()).item()
        tqdm.write(f"[vae] preview reconstruction PSNR {psnr:.2f} dB (left: input, right: reconstruction)")
    else:
        vae, text_encoder = extra
        prompts = preview_prompts(cfg, stage)
        frames = generate(model, vae, text_encoder, prompts, cfg.num_frames, cfg.size, cfg.preview_steps, cfg.cfg_scale, seed=0)
        for p in prompts:
            tqdm.write(f"[{stage}] preview prompt: {p}")
    grid = np.concatenate(list(frames), axis=1)  # (F, rows*H, W', 3): one row per clip
    data.save_video(os.path.join(out, f"{stage}.gif"), grid, fps=8)
    data.save_video(os.path.join(out, f"{stage}.png"), grid[:: max(1, len(grid) // 9)])
    tqdm.write(f"[{stage}] previews: {out}/{stage}.gif, {out}/{stage}.png")


def main(argv=None):
    cfg = parse_args(TrainConfig, sys.argv[1:] if argv is None else argv, PRESETS)
    stages = ["vae", "align", "instruct"] if cfg.stage == "all" else [cfg.stage]
    if any(s not in ("vae", "align", "instruct") for s in stages):
        raise SystemExit(f"unknown --stage={cfg.stage}: use all, vae, align or instruct")
    if (cfg.num_frames - 1) % 4:
        raise SystemExit(f"--num_frames={cfg.num_frames}: the causal VAE needs 1+4k frames, e.g. 17 or 33")
    # -- DDP setup, nanoGPT-style: the same file runs under plain python and under torchrun
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        env = dict(ddp=True, rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ["LOCAL_RANK"]))
        env["device"] = f"cuda:{env['local_rank']}" if use_cuda else "cpu"
        if use_cuda:
            torch.cuda.set_device(env["device"])
    else:
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        env = dict(ddp=False, rank=0, world=1, local_rank=0, device=device)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for fp32 matmuls on Ampere+ (no effect on CPU)
    torch.backends.cudnn.allow_tf32 = True
    t_start, path = time.time(), None
    for i, stage in enumerate(stages):
        stage_cfg = cfg
        if i > 0:  # chained stages: each starts from the checkpoint the previous one just wrote
            stage_cfg = replace(cfg, init_from=path)
        if cfg.stage == "all" and cfg.resume:  # resuming the whole chain: skip finished stages, resume the current one
            mine = os.path.join(cfg.out_dir, f"{stage}.pt")
            saved = load_checkpoint(mine)["step"] if os.path.isfile(mine) else None
            if saved is not None and saved >= getattr(cfg, f"{stage}_steps"):
                path = mine
                continue
            stage_cfg = replace(stage_cfg, resume=saved is not None)
        path = train_stage(stage_cfg, stage, env)
        if path is None:  # stopped early by max_run_steps
            break
    if env["rank"] == 0 and path:
        print(f"done in {(time.time() - t_start) / 60:.1f} min; checkpoint: {path}"
              + ("" if stages[-1] == "vae" else f"\nsample with: python sample.py \"your prompt\" --ckpt={path}"))
    if ddp:
        dist.destroy_process_group()
    return path


if __name__ == "__main__":
    main()
