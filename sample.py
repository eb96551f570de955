"""
Prompt in, video out: DDIM sampling with classifier-free guidance from a trained medvid checkpoint.

  python sample.py "an echocardiogram of a heart beating fast"
  python sample.py --prompt=FILE:prompts.txt --ckpt=out/tiny/instruct.pt --steps=100 --cfg_scale=6 --seed=1

For each prompt it writes <slug>.mp4, <slug>.gif and <slug>.png (a strip of the frames) to --out_dir and
prints their paths. It uses the EMA weights (DiT practice) and runs on CPU or CUDA.
"""
import os
import re
import sys
from dataclasses import dataclass

import torch

import data
import diffusion


@dataclass
class SampleConfig:
    prompt: str = ""               # the prompt, or FILE:path with one prompt per line
    ckpt: str = "out/tiny/instruct.pt"
    out_dir: str = "out/samples"
    steps: int = 50                # DDIM steps (of the 1000 training steps)
    cfg_scale: float = 4.0         # classifier-free guidance scale; 1 = off
    eta: float = 0.0               # DDIM eta: 0 deterministic, 1 = DDPM-like noise
    seed: int = 0
    num_frames: int = 0            # 0 = the training clip length; otherwise 1+4k, at most the trained length
    fps: int = 8
    weights: str = "ema"           # ema | model
    device: str = "auto"


def to_uint8(video):
    """(B, F, 3, H, W) in [-1, 1] -> uint8 numpy (B, F, H, W, 3)."""
    v = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, F, 3, H, W)
    return v.permute(0, 1, 3, 4, 2).cpu().numpy()  # (B, F, H, W, 3)


@torch.no_grad()
def generate(model, vae, text_encoder, prompts, num_frames, size, steps=50, cfg_scale=4.0, seed=0, eta=0.0):
    """prompts (list of B str) -> uint8 videos (B, F, H, W, 3). Text -> DDIM + CFG in latent space -> VAE decode."""
    device = next(model.parameters()).device
    model.eval()  # important! no dropout / training-only behaviour while sampling
    text, mask = text_encoder(prompts)  # (B, L, Dtext), (B, L)
    f, c, h, w = vae.latent_shape(num_frames, size)  # e.g. 17 frames at 32 px -> (5, 4, 8, 8)
    g = torch.Generator(device=device).manual_seed(seed)
    z = diffusion.sample(model, (len(prompts), f, c, h, w), text, mask, diffusion.Schedule(), steps=steps,
                         cfg_scale=cfg_scale, eta=eta, generator=g)  # (B, f, c, h, w)
    return to_uint8(vae.decode_latents(z.float()))  # (B, F, H, W, 3)


def slugify(text, max_len=60):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].rstrip("-") or "sample"


def main(argv=None):
    from train import dit_from_checkpoint, load_checkpoint, parse_args, vae_from_checkpoint
    from dit import load_text_encoder
    argv = sys.argv[1:] if argv is None else argv
    # a bare first argument is the prompt: python sample.py "an endoscopy video"
    argv = [f"--prompt={a}" if not a.startswith("--") else a for a in argv]
    cfg = parse_args(SampleConfig, argv)
    if cfg.prompt.startswith("FILE:"):
        path = cfg.prompt[5:]
        if not os.path.isfile(path):
            raise SystemExit(f"prompt file {path} not found: give one prompt per line in a text file")
        prompts = [l.strip() for l in open(path, encoding="utf-8") if l.strip()]
    else:
        prompts = [cfg.prompt.strip()] if cfg.prompt.strip() else []
    if not prompts:
        raise SystemExit('empty prompt: python sample.py "an echocardiogram of a heart beating fast" (or --prompt=FILE:prompts.txt)')
    ckpt = load_checkpoint(cfg.ckpt, "python train.py")
    if "model_args" not in ckpt:
        raise SystemExit(f"{cfg.ckpt} is a {ckpt.get('stage', '?')}-stage checkpoint without a DiT: "
                         f"train one with `python train.py --stage=align` then `--stage=instruct`")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = dit_from_checkpoint(ckpt, cfg.weights).to(device)
    vae = vae_from_checkpoint(ckpt).to(device)
    text_encoder = load_text_encoder(ckpt.get("text_encoder", "minilm"), device, model.cfg.max_text_len)
    train_frames = ckpt["config"]["num_frames"]
    num_frames = cfg.num_frames or train_frames
    if num_frames > train_frames or (num_frames - 1) % 4:
        raise SystemExit(f"--num_frames={num_frames}: use 1+4k frames, at most {train_frames} (the trained length)")
    videos = generate(model, vae, text_encoder, prompts, num_frames, ckpt["config"]["size"], cfg.steps, cfg.cfg_scale, cfg.seed, cfg.eta)
    os.makedirs(cfg.out_dir, exist_ok=True)
    for prompt, video in zip(prompts, videos):
        base = os.path.join(cfg.out_dir, slugify(prompt))
        paths = [data.save_video(base + ext, video, fps=cfg.fps) for ext in (".mp4", ".gif", ".png")]
        print(f"{prompt!r}: " + " ".join(paths))


if __name__ == "__main__":
    main()
