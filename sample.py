"""
Prompt in, video out: DDIM sampling with classifier-free guidance from a trained medvid checkpoint.

  python sample.py "an echocardiogram of a heart beating fast" "cells drifting on a gray field"
  python sample.py --prompt=FILE:prompts.txt --ckpt=out/tiny/instruct.pt --steps=100 --cfg_scale=6 --seed=1

For each prompt (every bare argument is one) it writes <slug>.mp4, .gif and .png (a strip of the frames) to
--out_dir (-2, -3, ... after a slug already taken), with the EMA weights (DiT practice), on CPU or CUDA.
"""
import math
import os
import re
import sys
from dataclasses import dataclass

import torch

import data
import diffusion
from dit import DiT, load_text_encoder
from vae import CausalVideoVAE

@dataclass
class SampleConfig:
    prompt: str = ""               # the prompt, or FILE:path with one prompt per line
    ckpt: str = "out/tiny/instruct.pt"
    out_dir: str = "out/samples"
    steps: int = 50                # DDIM steps (of the 1000 training steps)
    cfg_scale: float = 4.0         # classifier-free guidance scale; 1 = off
    motion_cfg_scale: float = 0.0  # the guidance scale of the part that changes over frames; 0 = cfg_scale
    eta: float = 0.0               # DDIM eta: 0 deterministic, 1 = DDPM-like noise
    seed: int = 0
    num_frames: int = 0            # 0 = the training clip length; otherwise 1+4k, at most the trained length
    fps: int = 8
    weights: str = "ema"           # ema | model
    device: str = "auto"

# What each option takes, checked before any work (data.check_options)
RULES = dict(weights=("ema", "model"), steps=(1, math.inf), fps=(1, math.inf),
             num_frames=(0, math.inf), eta=(0, math.inf), motion_cfg_scale=(0, math.inf))

def load_models(path, device, weights="ema"):
    """A checkpoint -> (ckpt, vae, dit, text_encoder) on `device`; no DiT (None, None) in a VAE-stage one."""
    ckpt = data.load_checkpoint(path, "python train.py")
    need = ("config", "vae", "vae_args") + (("model_args", weights) if "model_args" in ckpt else ())
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise SystemExit(f"checkpoint {path} has no {', '.join(missing)}: give a checkpoint train.py wrote")
    vae = CausalVideoVAE.from_checkpoint(ckpt).to(device)
    if "model_args" not in ckpt:
        return ckpt, vae, None, None
    model = DiT.from_checkpoint(ckpt, weights).to(device).eval()
    text_encoder = load_text_encoder(ckpt.get("text_encoder", "minilm"), device, model.cfg.max_text_len)
    return ckpt, vae, model, text_encoder

@torch.no_grad()
def generate(model, vae, text_encoder, prompts, num_frames, size, steps=50, cfg_scale=4.0, seed=0, eta=0.0,
             motion_cfg_scale=0.0):
    """prompts (list of B str) -> uint8 videos (B, F, H, W, 3): text -> DDIM + CFG in latent space -> VAE.
    motion_cfg_scale > 0 guides the motion with its own scale (diffusion.guided_eps); 0: cfg_scale."""
    device = next(model.parameters()).device
    model.eval()  # important! no dropout / training-only behaviour while sampling
    text, mask = text_encoder(prompts)  # (B, L, Dtext), (B, L)
    f, c, h, w = vae.latent_shape(num_frames, size)  # e.g. 17 frames at 32 px -> (5, 4, 8, 8)
    g = torch.Generator(device=device).manual_seed(seed)
    z = diffusion.sample(model, (len(prompts), f, c, h, w), text, mask, diffusion.Schedule(), steps=steps,
                         cfg_scale=cfg_scale, eta=eta, generator=g, prediction=model.cfg.prediction,
                         noise_corr=model.cfg.noise_corr, motion_cfg_scale=motion_cfg_scale or None)
    z = diffusion.scale_motion(z.float(), 1 / model.cfg.motion_scale)  # (B, f, c, h, w): the VAE's latents
    return data.to_uint8(vae.decode_latents(z))  # (B, F, H, W, 3)

def slugify(text, max_len=60):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].rstrip("-") or "sample"

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = data.parse_args(SampleConfig, [a for a in argv if a.startswith("-")])
    data.check_options(cfg, RULES)
    prompts = [a for a in argv if not a.startswith("-")] + [cfg.prompt]  # bare arguments are prompts, all
    if cfg.prompt.startswith("FILE:"):
        if not os.path.isfile(cfg.prompt[5:]):
            raise SystemExit(f"--prompt={cfg.prompt}: no such file; give one prompt per line in a text file")
        prompts = prompts[:-1] + list(open(cfg.prompt[5:], encoding="utf-8"))
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise SystemExit('empty prompt: python sample.py "an echocardiogram of a heart beating fast" '
                         '(or --prompt=FILE:prompts.txt)')
    data.writable_dir(cfg.out_dir, "--out_dir")
    ckpt, vae, model, text_encoder = load_models(cfg.ckpt, data.pick_device(cfg.device), cfg.weights)
    if model is None:
        raise SystemExit(f"{cfg.ckpt} is a {ckpt.get('stage', '?')}-stage checkpoint without a DiT: "
                         f"train one with `python train.py --stage=align` then `--stage=instruct`")
    train_frames = ckpt["config"]["num_frames"]
    num_frames = cfg.num_frames or train_frames
    if num_frames > train_frames or (num_frames - 1) % 4:
        raise SystemExit(f"--num_frames={num_frames}: use 1+4k frames, at most {train_frames} "
                         f"(the trained length)")
    videos = generate(model, vae, text_encoder, prompts, num_frames, ckpt["config"]["size"], cfg.steps,
                      cfg.cfg_scale, cfg.seed, cfg.eta, cfg.motion_cfg_scale)
    names = []
    for prompt, video in zip(prompts, videos):
        slug = slugify(prompt)  # a slug an earlier prompt took gets -2, -3, ...
        names.append(next(n for n in [slug] + [f"{slug}-{k}" for k in range(2, len(names) + 2)]
                          if n not in names))
        base = os.path.join(cfg.out_dir, names[-1])
        paths = [data.save_video(base + ext, video, fps=cfg.fps) for ext in (".mp4", ".gif", ".png")]
        print(f"{prompt!r}: " + " ".join(paths))

if __name__ == "__main__":
    main()
