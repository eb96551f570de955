"""
Speed and memory of medvid's hot paths: a DiT training step, a VAE training step, a sampling call, and the
Mamba scan. Medians over several runs after warm-up; peak memory; clips/s; on CUDA also MFU.

  python bench.py                              # tiny preset on this machine's device
  python bench.py --preset=small --device=cuda --batch_size=8
  python bench.py --what=scan                  # fast chunked scan vs the sequential loop (mamba.py)
  python bench.py --what=dit --mixer=hybrid    # the DiT step with MedSora-style mixers

Numbers here are for the README and notes; tests never assert timings.
"""
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch

import diffusion
from dit import DIT_PRESETS, DiT, DiTConfig
from train import PRESETS, TrainConfig, configure_optimizer, parse_args
from vae import VAE_PRESETS, CausalVideoVAE, VAEConfig

# bf16 dense peak of the GPU in FLOP/s, from the vendors' data sheets (SXM parts, without sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


@dataclass
class BenchConfig:
    preset: str = "tiny"
    what: str = "all"          # all | dit | vae | sample | scan
    device: str = "auto"
    batch_size: int = 0        # 0 = the preset's training batch
    dtype: str = "auto"        # auto: bfloat16 on CUDA, float32 on CPU
    repeats: int = 10
    warmup: int = 3
    sample_steps: int = 50
    compile: bool = False
    mixer: str = "attn"        # attn | mamba | hybrid (dit.py)


def dit_flops_per_clip(cfg: DiTConfig, text_len=16):
    """Forward FLOPs of one clip (2 per multiply-add). Per block, per token: 2 * (4 D^2 attention projections
    + 2 * mlp_ratio D^2 MLP) and for spatial blocks 2 * 2 D^2 (q, out of cross-attn) + the kv of the text;
    attention scores and values add 4 * S * D per token for spatial (S tokens/frame), 4 * F * D for temporal,
    4 * text_len * D for cross-attention. Embeddings and adaLN are small and left out (as PaLM App. B does)."""
    D, S, Fr = cfg.hidden_size, (cfg.input_size // cfg.patch_size) ** 2, cfg.num_frames
    tokens = S * Fr
    per_token_dense = 2 * (4 + 2 * cfg.mlp_ratio) * D * D
    spatial = tokens * (per_token_dense + 2 * 2 * D * D + 4 * S * D + 4 * text_len * D) + Fr * text_len * 2 * 2 * D * D
    temporal = tokens * (per_token_dense + 4 * Fr * D)
    return cfg.depth // 2 * (spatial + temporal)


def timed(fn, repeats, warmup, device):
    """Median wall time of fn over `repeats` calls after `warmup` untimed ones (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mb(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux reports KiB)


def main(argv=None):
    cfg = parse_args(BenchConfig, sys.argv[1:] if argv is None else argv)
    run = parse_args(TrainConfig, [f"--preset={cfg.preset}"], PRESETS)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    ctx = torch.autocast(device.split(":")[0], dtype=getattr(torch, dtype)) if dtype != "float32" else torch.autocast("cpu", enabled=False)
    B = cfg.batch_size or run.batch_size
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    print(f"device {gpu}, {torch.get_num_threads()} threads, dtype {dtype}, preset {cfg.preset}: "
          f"{run.num_frames} frames at {run.size} px, DiT batch {B}")
    vae = CausalVideoVAE(VAEConfig(**VAE_PRESETS[cfg.preset if cfg.preset in VAE_PRESETS else "base"])).to(device)
    f, c, h, w = vae.latent_shape(run.num_frames, run.size)
    model = DiT(DiTConfig(**DIT_PRESETS[cfg.preset], input_size=h, num_frames=f, in_channels=c, mixer=cfg.mixer)).to(device)
    sched = diffusion.Schedule()
    text, mask = torch.randn(B, 16, model.cfg.text_dim, device=device), torch.ones(B, 16, dtype=torch.bool, device=device)
    rows = []

    if cfg.what in ("all", "dit"):
        opt, _, _ = configure_optimizer(model.parameters(), 1e-4, 0.0, device.split(":")[0])
        step_model = torch.compile(model) if cfg.compile else model
        x0 = torch.randn(B, f, c, h, w, device=device)

        def dit_step():
            with ctx:
                loss = diffusion.loss(step_model, x0, text, mask, sched)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        s = timed(dit_step, cfg.repeats, cfg.warmup, device)
        flops = 3 * dit_flops_per_clip(model.cfg) * B  # forward + backward ~ 3x forward
        mfu = f", MFU {flops / s / peak * 100:.1f}% of {peak / 1e12:.0f} TFLOP/s" if peak else ""
        rate = f"{flops / s / 1e12:.3f} TFLOP/s{mfu}" if cfg.mixer == "attn" else "(FLOP count: attention mixer only)"
        rows.append(f"DiT train step ({cfg.mixer}) {s * 1e3:8.1f} ms  {B / s:7.1f} clips/s  {rate}  "
                    f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, {f}x{h}x{w} latents)")

    if cfg.what in ("all", "vae"):
        vopt = torch.optim.AdamW(vae.parameters(), 1e-4)
        Bv = cfg.batch_size or run.vae_batch_size
        video = torch.rand(Bv, run.num_frames, 3, run.size, run.size, device=device) * 2 - 1

        def vae_step():
            with ctx:
                loss, _ = vae.loss(video)
            loss.backward()
            vopt.step()
            vopt.zero_grad(set_to_none=True)
        s = timed(vae_step, cfg.repeats, cfg.warmup, device)
        rows.append(f"VAE train step   {s * 1e3:8.1f} ms  {Bv / s:7.1f} clips/s  batch {Bv}  "
                    f"({sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M params)")

    if cfg.what in ("all", "sample"):
        model.eval()

        def sample_call():
            with ctx:
                z = diffusion.sample(model, (1, f, c, h, w), text[:1], mask[:1], sched, steps=cfg.sample_steps, cfg_scale=4.0)
                vae.decode_latents(z.float())
        s = timed(sample_call, max(3, cfg.repeats // 3), 1, device)  # sampling is slow: fewer repeats
        rows.append(f"sample 1 clip    {s * 1e3:8.1f} ms  ({cfg.sample_steps} DDIM steps with CFG, + VAE decode)")

    if cfg.what == "scan":
        import mamba
        for L, fast, loop, speedup in mamba.bench_scan():
            rows.append(f"scan L={L:5d}  fast {fast:8.1f} ms  loop {loop if loop is None else f'{loop:8.1f}'} ms  "
                        f"speedup {speedup if speedup is None else f'{speedup:.1f}x'}")
    for r in rows:
        print(r)
    print(f"peak memory {peak_memory_mb(device):.0f} MB ({'CUDA allocated' if device.startswith('cuda') else 'process RSS'})")


if __name__ == "__main__":
    main()
