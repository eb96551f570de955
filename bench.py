"""
Speed and memory of medvid's hot paths: a DiT training step, a VAE training step, a sampling call, and the
Mamba scan. Medians over several runs after warm-up; peak memory; clips/s; on CUDA also MFU.

  python bench.py                              # tiny preset on this machine's device
  python bench.py --preset=small --device=cuda --batch_size=8
  python bench.py --what=scan                  # fast chunked scan vs the sequential loop (mamba.py)
  python bench.py --what=dit --mixer=hybrid    # the DiT step with MedSora-style mixers
  python bench.py --what=vaemem                # peak memory of encoding 33x256x256 with the base VAE
  python bench.py --what=frozen                # a DiT step's frozen encoders, float32 vs bfloat16

The measured tables are in RESULTS.md; tests never assert timings.
"""
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F

import data
import diffusion
from dit import DIT_PRESETS, DiT, DiTConfig, load_text_encoder
from mamba import ssm_scan, ssm_scan_ref
from train import PRESETS, TrainConfig, configure_optimizer
from vae import VAE_PRESETS, CausalVideoVAE, VAEConfig

# bf16 dense peak of the GPU in FLOP/s, from the vendors' data sheets (SXM parts, without sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}

@dataclass
class BenchConfig:
    preset: str = "tiny"
    what: str = "all"          # all | dit | vae | frozen | sample | scan | mixers | data | longvideo | vaemem
    data: str = ""             # --what=data: a CSV of real videos; '' = eight 720p test videos made in /tmp
    device: str = "auto"
    batch_size: int = 0        # 0 = the preset's training batch
    dtype: str = "auto"        # auto: bfloat16 on CUDA, float32 on CPU
    repeats: int = 10
    warmup: int = 3
    sample_steps: int = 50
    compile: bool = False
    mixer: str = "attn"        # attn | mamba | hybrid (dit.py)
    grid: int = 0              # DiT latent height = width; 0 = from the preset's VAE and size
    frames: int = 0            # DiT latent frames; 0 = from the preset's VAE and num_frames
    grids: str = "16,32,64"    # --what=mixers: latent grids to sweep (16 = 128 px, 32 = 256 px, x8 VAE)
    vae: str = "base"          # --what=vaemem: VAE preset
    clip: str = "33x256"       # --what=vaemem: frames x pixels of the clip encoded
    chunks: str = "0,8,4"      # --what=vaemem: chunk_frames to compare (0 = one pass)
    # one measurement in a fresh process, started by --what=longvideo (_sample) or --what=vaemem (_vaemem)
    video: str = ""            # _sample: the video file
    sampling: str = "interval"  # _sample: interval (a fixed interval of 3) | motion (Bora's threshold search)
    vae_op: str = "encode"     # _vaemem: encode | decode
    chunk: int = 0             # _vaemem: chunk_frames (encode) or chunk_latents (decode); 0 = one pass

def dit_flops_per_clip(cfg: DiTConfig, text_len=16):
    """Forward FLOPs of one clip (2 per multiply-add; embeddings, adaLN left out: PaLM App. B). Per block and
    token: 2 (4 + 2 mlp_ratio) D^2 (attention projections, MLP), in spatial blocks + 4 D^2 (cross-attn q, out)
    + the text's kv; scores and values add 4 S D (spatial, S tokens/frame), 4 F D (temporal), 4 text_len D."""
    D, S, Fr = cfg.hidden_size, (cfg.input_size // cfg.patch_size) ** 2, cfg.num_frames
    dense = 2 * (4 + 2 * cfg.mlp_ratio) * D * D  # per token
    spatial = S * Fr * (dense + 2 * 2 * D * D + 4 * S * D + 4 * text_len * D) + Fr * text_len * 2 * 2 * D * D
    temporal = S * Fr * (dense + 4 * Fr * D)  # (the last term of spatial: the caption's keys and values)
    return cfg.depth // 2 * (spatial + temporal)

def timed(fn, repeats, warmup, device):
    """Median wall time of fn over `repeats` calls after `warmup` untimed ones (CUDA synchronised)."""
    sync, times = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None), []
    for _ in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[warmup:]))

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux reports KiB)

def peak_memory(device):
    if device.startswith("cuda"):
        return f"peak memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB (CUDA allocated)"
    return f"peak memory {rss_mb():.0f} MB (process RSS)"

def fresh(*args, **kw):
    """Run this script with --key=value args in a fresh process: its peak memory is then the run's own."""
    return subprocess.run([sys.executable, __file__, *args], **kw)

def time_train_step(loss_fn, params, ctx, cfg, device):
    """Median time of one optimizer step on loss_fn() (AdamW as train.py configures it)."""
    opt = configure_optimizer(params, 1e-4, 0.0, device.split(":")[0])[0]
    def step():
        with ctx:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return timed(step, cfg.repeats, cfg.warmup, device)

# ----------------------------------------------------------------------------------------------
# The models: DiT and VAE training steps, sampling one clip

def bench_models(cfg):
    run = data.parse_args(TrainConfig, [f"--preset={cfg.preset}"], PRESETS)
    device = data.pick_device(cfg.device)
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    device_type, B = device.split(":")[0], cfg.batch_size or run.batch_size
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=getattr(torch, dtype))
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    print(f"device {gpu}, {torch.get_num_threads()} threads, dtype {dtype}, preset {cfg.preset}: "
          f"{run.num_frames} frames at {run.size} px, DiT batch {B}")
    if cfg.what == "scan":
        return print("\n".join(bench_scan(device)), peak_memory(device), sep="\n")
    vcfg = VAEConfig(**VAE_PRESETS[cfg.preset if cfg.preset in VAE_PRESETS else "base"])
    with torch.device("meta"):  # shapes only; the real VAE is built below when it is benchmarked
        f, c, h, w = CausalVideoVAE(vcfg).latent_shape(run.num_frames, run.size)
    vae = CausalVideoVAE(vcfg).to(device) if cfg.what in ("all", "vae", "frozen", "sample") else None
    f, h, w = cfg.frames or f, cfg.grid or h, cfg.grid or w
    dit_cfg = DiTConfig(**DIT_PRESETS[cfg.preset], input_size=h, num_frames=f, in_channels=c, mixer=cfg.mixer)
    model, sched = DiT(dit_cfg).to(device), diffusion.Schedule()
    text = torch.randn(B, 16, model.cfg.text_dim, device=device)  # (B, L, Dtext)
    mask = torch.ones(B, 16, dtype=torch.bool, device=device)  # (B, L)
    if cfg.what in ("all", "dit"):
        step_model = torch.compile(model) if cfg.compile else model
        x0 = torch.randn(B, f, c, h, w, device=device)  # (B, f, c, h, w)
        s = time_train_step(lambda: diffusion.loss(step_model, x0, text, mask, sched), model.parameters(),
                            ctx, cfg, device)
        flops = 3 * dit_flops_per_clip(model.cfg) * B  # forward + backward ~ 3x forward
        mfu = f", MFU {flops / s / peak * 100:.1f}% of {peak / 1e12:.0f} TFLOP/s" if peak else ""
        rate = f"{flops / s / 1e12:.3f} TFLOP/s{mfu}" if cfg.mixer == "attn" else "(FLOPs: attention only)"
        print(f"DiT train step ({cfg.mixer}) {s * 1e3:8.1f} ms  {B / s:7.1f} clips/s  {rate}  "
              f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, {f}x{h}x{w} latents)")
    if cfg.what in ("all", "vae"):
        Bv = cfg.batch_size or run.vae_batch_size
        video = torch.rand(Bv, run.num_frames, 3, run.size, run.size, device=device) * 2 - 1
        s = time_train_step(lambda: vae.loss(video)[0], vae.parameters(), ctx, cfg, device)
        print(f"VAE train step   {s * 1e3:8.1f} ms  {Bv / s:7.1f} clips/s  batch {Bv}  "
              f"({sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M params)")
    if cfg.what in ("all", "frozen"):  # the rest of a DiT step: encoding its batch (--frozen_dtype)
        te = load_text_encoder(run.text_encoder, device)
        clips = data.SyntheticVideoDataset(B, run.num_frames, run.size)
        captions = [clips[i]["text"] for i in range(B)]
        video = torch.stack([clips[i]["video"] for i in range(B)]).to(device)  # (B, F, 3, H, W)
        for frozen in ("float32", "bfloat16"):
            fctx = torch.autocast(device_type, dtype=torch.bfloat16) if frozen != "float32" else nullcontext()
            def encode(part):
                te.cache.clear()  # every caption new, as in a synthetic run
                with torch.no_grad(), fctx:
                    vae.encode_latents(video, sample=True) if part == "vae" else te(captions)
            s_vae = timed(lambda: encode("vae"), cfg.repeats, cfg.warmup, device)
            s_text = timed(lambda: encode("text"), cfg.repeats, cfg.warmup, device)
            print(f"frozen, {frozen:8s} {(s_vae + s_text) * 1e3:6.1f} ms  (VAE encode {s_vae * 1e3:.1f} ms, "
                  f"text encoder {s_text * 1e3:.1f} ms; batch {B}, {run.text_encoder})")
    if cfg.what in ("all", "sample"):
        model.eval()
        def sample_call():
            with ctx:
                z = diffusion.sample(model, (1, f, c, h, w), text[:1], mask[:1], sched,
                                     steps=cfg.sample_steps, cfg_scale=4.0)  # (1, f, c, h, w)
                vae.decode_latents(z.float())
        s = timed(sample_call, max(3, cfg.repeats // 3), 1, device)  # sampling is slow: fewer repeats
        print(f"sample 1 clip    {s * 1e3:8.1f} ms  ({cfg.sample_steps} DDIM steps, CFG, VAE decode)")
    print(peak_memory(device))

# ----------------------------------------------------------------------------------------------
# The Mamba scan against its sequential loop and against attention; the mixers inside the DiT

def bench_scan(device, batch=2, heads=4, headdim=32, d_state=16, chunk=64, max_loop_s=20.0, repeats=3):
    """One line per L: forward+backward time of ssm_scan, ssm_scan_ref and causal SDPA of the same shape."""
    def ms(fn, L):  # median ms of fn(inputs).square().sum().backward() over `repeats`, after one warm-up
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, L, heads, headdim, generator=g).to(device).requires_grad_()
        dt = (0.1 * torch.rand(batch, L, heads, generator=g)).to(device).requires_grad_()
        A = (-torch.rand(heads, generator=g) * 15 - 1).to(device).requires_grad_()
        B = torch.randn(batch, L, d_state, generator=g).to(device).requires_grad_()
        C = torch.randn(batch, L, d_state, generator=g).to(device).requires_grad_()
        return timed(lambda: fn(x, dt, A, B, C).square().sum().backward(), repeats, 1, device) * 1e3
    def attention(x, *_):  # q = k = v = x, as (b, H, L, P)
        xt = x.transpose(1, 2)
        return F.scaled_dot_product_attention(xt, xt, xt, is_causal=True)
    rows, loop_ms_per_step = [], None
    for L in (64, 256, 1024, 4096) + ((16384, 65536) if device.startswith("cuda") else ()):
        fast, attn = ms(lambda *a: ssm_scan(*a, chunk_size=chunk), L), ms(attention, L)
        # the loop is linear in L: I extrapolate from the last size and skip it if it would be too slow
        loop = "skipped", "-"
        if loop_ms_per_step is None or loop_ms_per_step * L * (repeats + 1) / 1e3 <= max_loop_s:
            slow = ms(ssm_scan_ref, L)
            loop, loop_ms_per_step = (f"{slow:8.1f} ms", f"{slow / fast:.1f}x"), slow / L
        rows.append(f"scan L={L:5d}  fast {fast:8.1f} ms  loop {loop[0]}  speedup {loop[1]}  "
                    f"causal SDPA {attn:8.1f} ms")
    return rows

def bench_mixers(cfg):
    """MedSora's question: where does Mamba beat attention? One fresh process per (grid, mixer), so each peak
    memory is that configuration's own, for a DiT train step at the same width, depth and batch."""
    frames = cfg.frames or 16
    print(f"DiT train step, preset {cfg.preset}, {frames} latent frames, batch {cfg.batch_size or 'preset'}; "
          f"tokens/frame = (grid/2)^2")
    print(f"{'grid':>5} {'tokens/frame':>13} {'mixer':>7} {'ms/step':>9} {'peak MB':>9}")
    shared = [f"--{k}={getattr(cfg, k)}" for k in "preset device batch_size repeats warmup dtype".split()]
    for grid in [int(g) for g in cfg.grids.split(",")]:
        for mixer in ("attn", "mamba", "hybrid"):
            r = fresh("--what=dit", f"--mixer={mixer}", f"--grid={grid}", f"--frames={frames}", *shared,
                      capture_output=True, text=True)
            step = next((l for l in r.stdout.splitlines() if l.startswith("DiT train step")), None)
            mem = next((l for l in r.stdout.splitlines() if l.startswith("peak memory")), None)
            if r.returncode != 0 or step is None:
                err = (r.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{grid:>5} {(grid // 2) ** 2:>13} {mixer:>7} {'failed':>9}  ({err[:80]})")
                continue
            ms, mb = float(step.split(")")[1].split()[0]), float(mem.split()[2])
            print(f"{grid:>5} {(grid // 2) ** 2:>13} {mixer:>7} {ms:>9.1f} {mb:>9.0f}", flush=True)

# ----------------------------------------------------------------------------------------------
# VAE memory: chunked causal encode/decode keeps the activations of one chunk only

def vae_memory(cfg):
    frames, size = map(int, cfg.clip.split("x"))
    vcfg = VAEConfig(**VAE_PRESETS[cfg.vae])
    n = sum(p.numel() for p in CausalVideoVAE(vcfg).parameters())
    print(f"VAE {cfg.vae} ({n / 1e6:.1f} M params), one {frames}x{size}x{size} clip, fp32, "
          f"{torch.get_num_threads()} threads; chunk = frames per chunk (encode), latents per chunk (decode)")
    print(f"{'':>7} {'chunk':>9} {'peak MB':>9} {'above':>9} {'s':>7}   ('above' = peak RSS minus RSS with "
          f"model + clip loaded)")
    for mode in ("encode", "decode"):
        for chunk in [int(c) for c in cfg.chunks.split(",")]:
            chunk = chunk if mode == "encode" else chunk // vcfg.temporal_factor
            r = fresh("--what=_vaemem", f"--vae={cfg.vae}", f"--clip={cfg.clip}", f"--chunk={chunk}",
                      f"--vae_op={mode}", capture_output=True, text=True)
            failed = f"{mode:>7} {chunk:>9} failed: {r.stderr.strip()[-200:]}"
            print(r.stdout.strip() if r.returncode == 0 else failed, flush=True)

def vae_memory_once(cfg):
    """Run in a fresh process: encode (or decode) one clip, print the peak RSS above the model and input."""
    torch.manual_seed(0)
    frames, size = map(int, cfg.clip.split("x"))
    vae = CausalVideoVAE(VAEConfig(**VAE_PRESETS[cfg.vae])).eval()
    x = torch.rand(1, frames, 3, size, size) * 2 - 1  # (1, F, 3, S, S)
    z = torch.randn(1, *vae.latent_shape(frames, size))  # (1, f, c, h, w)
    before, t0 = rss_mb(), time.perf_counter()  # before: model + clip + imports
    with torch.no_grad():
        out = vae.encode(x, cfg.chunk)[0] if cfg.vae_op == "encode" else vae.decode(z, cfg.chunk)
    dt, peak = time.perf_counter() - t0, rss_mb()
    print(f"{cfg.vae_op:>7} {cfg.chunk or 'one pass':>9} {peak:9.0f} {peak - before:9.0f} {dt:7.1f}   -> "
          f"{tuple(out.shape)}")

# ----------------------------------------------------------------------------------------------
# The data path: decoding throughput against the training step's appetite, and memory on a long video

def make_mp4(path, seconds, fps, size=(1280, 720), bitrate="400k"):
    """A moving test pattern (ffmpeg's testsrc2) encoded with H.264 at a low bitrate; returns path."""
    if not os.path.exists(path):
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
               f"testsrc2=size={size[0]}x{size[1]}:rate={fps}", "-t", str(seconds), "-c:v", "libx264",
               "-preset", "ultrafast", "-b:v", bitrate, "-pix_fmt", "yuv420p", path]
        subprocess.run(cmd, check=True)
    return path

def bench_data(cfg, size=256, num_frames=17, frame_interval=3, workers=(0, 1, 2, 4), batch_size=4, batches=6):
    """Clips/s from mp4 at `size` px through VideoCSVDataset and a DataLoader with N workers (random windows,
    as in training). Without a CSV, eight 20-second 720p/25 fps test videos are made in the temp folder."""
    if not (csv_path := cfg.data):
        folder = os.path.join(tempfile.gettempdir(), "medvid_bench_data")
        os.makedirs(folder, exist_ok=True)
        names = [os.path.basename(make_mp4(os.path.join(folder, f"v{k}.mp4"), 20, 25)) for k in range(8)]
        csv_path = os.path.join(folder, "videos.csv")
        with open(csv_path, "w") as f:
            f.write("path,text,modality,num_frames,fps\n")
            f.writelines(f"{n},a test pattern,endoscopy,500,25\n" for n in names)
    ds = data.VideoCSVDataset(csv_path, num_frames, size, frame_interval)
    for n in workers:
        keys = [(i % len(ds), 0, i) for i in range(batch_size * (batches + 1))]  # (index, epoch, position)
        it = iter(torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=keys, num_workers=n))
        next(it)  # worker start-up and the first batch: not timed
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        rate = batches * batch_size / (time.perf_counter() - t0)
        print(f"data loading  {n:2d} workers  {rate:7.1f} clips/s  ({num_frames} frames every "
              f"{frame_interval} at {size} px from 720p H.264, batch {batch_size})")

def _watch_ffmpeg(peaks, stop):
    """Poll this process's children; record each ffmpeg's own peak RSS (VmHWM, reset at exec). RUSAGE_CHILDREN
    would also count the forked copy of this Python process before exec, which is not ffmpeg's memory."""
    me = os.getpid()
    while not stop:
        for task in os.listdir(f"/proc/{me}/task"):
            try:
                for pid in open(f"/proc/{me}/task/{task}/children").read().split():
                    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
                    if status["Name"].strip().startswith("ffmpeg") and "VmHWM" in status:
                        peaks[pid] = max(peaks.get(pid, 0), int(status["VmHWM"].split()[0]) / 1024)
            except (OSError, KeyError, ValueError):
                pass  # a child that just exited
        time.sleep(0.005)

def long_video_memory(cfg):
    path = make_mp4(os.path.join(tempfile.gettempdir(), "medvid_10min_720p.mp4"), 600, 10)
    total, fps = data.video_info(path)
    print(f"{path}: {os.path.getsize(path) / 2**20:.1f} MB, {total} frames at {fps} fps, 1280x720; "
          f"read_video would hold {total * 1280 * 720 * 3 / 2**30:.1f} GiB of RGB frames")
    for mode in ("interval", "motion"):
        fresh("--what=_sample", f"--video={path}", f"--sampling={mode}", check=True)

def sample_once(cfg):
    """Run in a fresh process: sample one clip, print peak RSS of this process and of the ffmpeg it starts."""
    path, mode, peaks, stop = cfg.video, cfg.sampling, {}, []
    watcher = threading.Thread(target=_watch_ffmpeg, args=(peaks, stop), daemon=True)
    watcher.start()
    base, rng, t0 = rss_mb(), np.random.default_rng(0), time.perf_counter()
    if mode == "interval":  # a window near the end: the worst case for a reader that decodes from the start
        total, fps = data.video_info(path)
        clip, info = data.sample_clip(path, 17, 256, rng, interval=3, total=total, fps=fps)
    else:  # Bora's motion threshold with a wide search: keeps up to (17-1)*8+1 frames at 256 px
        clip, info = data.sample_clip(path, 17, 256, rng, motion_threshold=1e9, max_interval=8)
    dt = time.perf_counter() - t0
    stop.append(True)
    watcher.join()
    ffmpeg = max(peaks.values(), default=float("nan"))
    print(f"{mode:9s}: clip {clip.shape}, frames {info['indices'][0]}..{info['indices'][-1]} of "
          f"{info['total']} (interval {info['interval']}); python peak RSS {rss_mb():.0f} MB ({base:.0f} MB "
          f"after imports), ffmpeg peak RSS {ffmpeg:.0f} MB ({len(peaks)} ffmpeg runs seen); {dt:.1f} s")

# what=... -> the function that measures it; _sample and _vaemem are one measurement in a fresh process
BENCHES = {"mixers": bench_mixers, "vaemem": vae_memory, "_vaemem": vae_memory_once, "data": bench_data,
           "longvideo": long_video_memory, "_sample": sample_once}

def main(argv=None):
    cfg = data.parse_args(BenchConfig, sys.argv[1:] if argv is None else argv)
    return BENCHES.get(cfg.what, bench_models)(cfg)

if __name__ == "__main__":
    main()
