"""
medvid under hostile input, as executable checks: odd and broken files, wrong options of every script, a
diverging run, a failed write; each test counts what it checks and names what failed. CPU only.
"""
import glob
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import data
import evaluate
import sample
import train
from conftest import HERE, moving, write_csv

# ----------------------------------------------------------------------------------------------
# Hostile input: odd files, wrong options, a diverging run, a failed write. Each test counts what it checks
# and names what failed ("N of M ... handled")

def _odd_files(root):
    """At least 25 odd or broken videos in root, each as (name, expected, tolerance, CSV frame count):
    expected is the uint8 clip of 5 frames at 16 px the dataset must give, or None for a file it must skip."""
    v = moving(5, 16, 16)                                                        # (5, 16, 16, 3) uint8
    clip = lambda frames: data.resize_center_crop(frames, 16)[data.frame_indices(len(frames), 5, 1)]  # noqa
    wide, flat = moving(5, 8, 120, seed=1), np.zeros((5, 4, 4, 3), np.uint8)
    flat[:] = np.arange(5)[:, None, None, None] * 40 + 20                         # 4x4 px, one colour a frame
    flat[..., 1] = 200
    gray12 = (v[..., 0].astype(np.float64) / 255 * 4095).round().astype(np.uint16)  # 12-bit data in uint16
    files = {
        "plain.npy": (v, v), "UPPER.NPY": (v, v), "UPPER.MP4": (v, v), "ünïcødé 视频.npy": (v, v),
        "bits12.npy": (gray12, np.repeat(v[..., :1], 3, -1)), "bits16.npz": (v.astype(np.uint16) * 257, v),
        "float255.npy": (v.astype(np.float32), v), "float01.npz": (v / np.float32(255), v),
        "gray1.npy": (v[..., :1], np.repeat(v[..., :1], 3, -1)),
        "rgba.npy": (np.concatenate([v, v[..., :1]], -1), v),
        "mask.npy": (v[..., 0] > 127, np.repeat((v[..., :1] > 127) * np.uint8(255), 3, -1)),
        "video_and_masks.npz": (dict(video=v, masks=np.zeros(5)), v), "one_frame.npy": (v[:1], v[:1]),
        "short.npy": (v[:3], v[:3]), "wide.npy": (wide, wide), "tiny.mp4": (flat, flat),
        "rgba.gif": ("RGBA", v), "palette.gif": ("P", v), "counted_wrong.npy": (v, v),
        "frames16/": (gray12, np.repeat(v[..., :1], 3, -1)),
        # refused, by name
        "empty.mp4": (b"", None), "text.mp4": (b"not a video\n" * 50, None), "text.npy": (b"hello", None),
        "image.npy": ("PNG", None), "nan.npy": (np.where(v > 200, np.nan, v / 255.0), None),
        "inf.npz": (np.full((5, 16, 16), np.inf, np.float32), None), "gray2d.npy": (v[0, ..., 0], None),
        "channels_first.npy": (v.transpose(0, 3, 1, 2).copy(), None),
        "masks_and_labels.npz": (dict(masks=v, labels=v), None),
        "negative.npy": (v.astype(np.int16) - 100, None), "float_hu.npy": (v * np.float32(8), None),
        "cut.mp4": ("CUT", None), "cut.npy": ("CUTNPY", None), "missing.mp4": (None, None),
        "empty_folder/": ([], None), "mixed_sizes/": ([moving(1, 16, 16)[0], moving(1, 20, 16)[0]] * 3, None)}
    out = []
    for name, (content, want) in files.items():
        p = os.path.join(root, name.rstrip("/"))
        if name.endswith("/"):
            os.makedirs(p)
            for t, frame in enumerate(content):
                data.iio.imwrite(os.path.join(p, f"{t:03d}.png"), frame)
        elif isinstance(content, bytes):
            open(p, "wb").write(content)
        elif content is None:
            pass
        elif isinstance(content, str) and content in ("RGBA", "P"):           # gifs: RGBA, palette
            frames = [Image.fromarray(f).convert("RGBA") if content == "RGBA" else
                      Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in v]
            frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0,
                           **({"transparency": 0} if content == "P" else {}))
        elif isinstance(content, str) and content == "PNG":
            Image.fromarray(v[0]).save(p, format="PNG")
        elif isinstance(content, str):                                         # a file cut short
            full = p + (".full.mp4" if content == "CUT" else ".full.npy")
            data.save_video(full, moving(30, 16, 16)) if content == "CUT" else np.save(full, v)
            blob = open(full, "rb").read()
            os.remove(full)
            open(p, "wb").write(blob[:len(blob) // 3])
        elif isinstance(content, dict):
            np.savez_compressed(p, **content)
        elif name.lower().endswith(".mp4"):
            data.save_video(p + ".mp4", content)
            os.replace(p + ".mp4", p)
        elif name.endswith(".npz"):
            np.savez_compressed(p, frames=content)
        else:
            np.save(p + ".npy", content)
            os.replace(p + ".npy", p)
        lossy = name.lower().endswith((".mp4", ".gif"))
        out.append((name.rstrip("/"), None if want is None else clip(want), 12 if lossy else 1,
                    40 if name == "counted_wrong.npy" else ""))
    return out

def test_odd_and_broken_files_give_the_right_pixels_or_are_skipped_by_name(tmp_path):
    files = _odd_files(tmp_path)
    assert len(files) >= 25 and sum(want is None for _, want, _, _ in files) >= 12
    csv_path = write_csv(tmp_path / "odd.csv", [(n, n, "cell", k) for n, _, _, k in files],
                         header=("path", "text", "modality", "num_frames"))
    ds = data.VideoCSVDataset(csv_path, num_frames=5, size=16)
    failed, items = [], {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, (name, _, _, _) in enumerate(files):
            try:
                items[name] = ds[i]
            except Exception as e:  # noqa: BLE001  what a bad file must never do
                failed.append(f"{name}: raised {type(e).__name__}: {str(e)[:80]}")
    msgs = [str(w.message) for w in caught if w.category is UserWarning]
    for name, want, tol, _ in files:
        named = [m for m in msgs if f"{tmp_path / name}:" in m]
        if name not in items:
            continue
        if want is None and (items[name]["text"] == name or len(named) != 1 or "\n" in named[0]):
            failed.append(f"{name}: not skipped by name (gave {items[name]['text']!r}; {named})")
        elif want is not None:
            got = data.to_uint8(items[name]["video"][None])[0].astype(np.int16)  # (5, 16, 16, 3)
            err = np.abs(got - want).mean() if items[name]["text"] == name else None
            if err is None or err > tol or named:
                failed.append(f"{name}: wrong pixels or skipped (error {err}; {named})")
                continue
            whole = data.read_video(os.path.join(tmp_path, name))  # the whole-file reader agrees
            ref = data.resize_center_crop(whole, 16)[data.frame_indices(len(whole), 5, 1)]
            if np.abs(ref.astype(np.int16) - want).mean() > tol:
                failed.append(f"{name}: read_video gives other pixels")
    handled = len(files) - len({f.split(":")[0] for f in failed})
    assert not failed, f"{handled} of {len(files)} bad files handled; " + " | ".join(failed)
    # the reasons say what is wrong
    for name, why in (("nan.npy", "NaN or infinite values"), ("masks_and_labels.npz", "['masks', 'labels']"),
                      ("negative.npy", "int16 values from -83"),
                      ("mixed_sizes", "give frames of one size")):
        assert any(f"{tmp_path / name}: " in m and why in m for m in msgs), (name, why)

def _stops_with_one_line(main, argv, option):
    """None when main(argv) stops before its work with one line naming `option`, else what it did instead."""
    try:
        main(argv)
    except SystemExit as e:
        msg = e.code if isinstance(e.code, str) else ""
        return None if msg.strip() and "\n" not in msg.strip() and option in msg else f"exit {e.code!r}"
    except Exception as e:  # noqa: BLE001  a traceback
        return f"{type(e).__name__}: {str(e)[:60]}"
    return "ran to the end"

def test_bad_options_of_every_script_stop_with_one_line_naming_the_option(tiny_run, tmp_path):
    root, args, instruct = tiny_run
    bert = next(a for a in args if a.startswith("--text_encoder="))
    a_file, vae_pt = str(tmp_path / "a_file"), str(root / "out" / "vae.pt")
    open(a_file, "w").write("x")
    no_ema = {k: v for k, v in torch.load(instruct, weights_only=True).items() if k != "ema"}
    torch.save(no_ema, tmp_path / "no_ema.pt")
    real = tmp_path / "real"
    os.makedirs(real)
    np.save(real / "clip.npy", moving(20, 32, 32))
    run = ["--size=16", "--num_frames=5", "--batch_size=2", "--vae_batch_size=2", "--num_clips=8",
           "--num_workers=0", "--warmup_steps=1", "--vae_steps=1", "--align_steps=1", "--instruct_steps=1",
           "--preview_steps=1", "--val_clips=0", f"--out_dir={tmp_path / 'out'}"]
    vae, dit = run + ["--stage=vae"], run + ["--stage=align", f"--init_from={vae_pt}", bert]
    cuda = "--device=cuda" if not torch.cuda.is_available() else f"--device=cuda:{torch.cuda.device_count()}"
    train_cases = [
        (vae, "--vae_steps=0"), (dit, "--align_steps=-1"), (dit, "--batch_size=0"),
        (vae, "--vae_batch_size=0"), (vae, "--grad_accum=0"), (vae, "--ckpt_every=0"), (vae, "--log_every=0"),
        (vae, "--frame_interval=0"),
        (vae, "--max_interval=0"), (vae, "--size=18"), (dit, "--size=20"), (vae, "--size=0"),
        (vae, "--num_clips=0"), (dit, "--mixer=transformer"), (vae, "--dtype=float64"), (vae, "--device=tpu"),
        (vae, cuda), (dit, "--lr=-0.001"), (vae, "--vae_lr=-1"), (vae, f"--out_dir={a_file}"),
        (vae, f"--out_dir={a_file}/sub"), (vae, "--num_workers=-1"), (vae, "--warmup_steps=-1"),
        (dit, "--prediction=x0"), (vae, "--short_clips=cut"), (dit, "--ema_decay=1.5"),
        (dit, "--p_uncond=2.0"), (vae, "--max_run_steps=-1"), (vae, "--weight_decay=-1"),
        (dit, "--dino_mode=cos"), (dit, "--flow=raft"),
        (dit, "--preview_steps=0"), (vae, "--min_lr_ratio=-1"), (vae, "--motion_threshold=-1"),
        (dit, "--noise_corr=1.5"), (vae, "--vae_texture=2.0"), (dit, "--snr_gamma=-1"),
        # refused before this test was written
        (vae, "--stage=vea"), (vae, "--compile=maybe"), (vae, "--num_frames=8"), (vae, "--balance=equal"),
        (vae, "--vae_preset=huge"), (vae, "--data=/nonexistent.csv"), (vae, "--batch_size=four"),
        (dit, f"--init_from={tmp_path}/none.pt"), (vae, "--nope=1"),
        (run + ["--stage=instruct", f"--init_from={root / 'out' / 'align.pt'}", bert], "--size=32")]
    smp = [f"--ckpt={instruct}", f"--out_dir={tmp_path / 'samples'}", "--steps=2", "a prompt"]
    sample_cases = [
        (smp, "--steps=0"), (smp, "--steps=-5"), (smp, "--fps=0"), (smp, "--weights=best"),
        (smp, f"--out_dir={a_file}"), (smp, f"--ckpt={tmp_path / 'no_ema.pt'}"), (smp, "--device=tpu"),
        (smp, cuda), (smp, "--num_frames=-3"), (smp, "--eta=-1.0"),
        (smp, f"--ckpt={tmp_path}/none.pt"), (smp, "--num_frames=6"), (smp, f"--ckpt={vae_pt}"),
        (smp, f"--ckpt={a_file}"), (smp, "--prompt=FILE:/nonexistent.txt")]
    ev = [f"--ckpt={instruct}", "--what=vae", "--num_clips=2", "--vae_clips=2", f"--real_clips={real}",
          "--vae_size=32", f"--classifier={tmp_path / 'clf'}", "--classifier_clips=10", "--device=cpu",
          f"--out={tmp_path / 'eval.json'}"]
    evaluate_cases = [
        (ev, "--steps=0"), (ev, "--num_clips=0"), (ev, "--batch_size=0"), (ev, "--vae_clips=0"),
        (ev, "--vae_size=30"), (ev, f"--out={a_file}/x.json"), (ev, f"--out={tmp_path}"),
        (ev, f"--ckpt={tmp_path / 'no_ema.pt'}"), (ev, "--device=tpu"), (ev, cuda), (ev, "--eta=-1.0"),
        (ev, "--classifier_clips=0"), (ev + ["--what=prompt"], "--data=/nonexistent.csv"),
        (ev, "--what=everything"), (ev, "--words=paraphrase"), (ev, f"--ckpt={tmp_path}/none.pt"),
        (ev, "--weights=best")]
    failed, n = [], 0
    for main, cases in ((train.main, train_cases), (sample.main, sample_cases),
                        (evaluate.main, evaluate_cases)):
        for base, bad in cases:
            n += 1
            key = bad.split("=")[0] if not bad.startswith(("--ckpt", "--init_from", "--data")) else ""
            what = _stops_with_one_line(main, base + [bad], key)
            if what:
                failed.append(f"{main.__module__} {bad.replace(str(tmp_path), 'TMP')}: {what}")
    assert not failed, f"{n - len(failed)} of {n} bad inputs clean; " + " | ".join(failed)
    assert not os.path.exists(tmp_path / "out" / "vae.pt")                      # no run went ahead
    # as a command: exit status 1, the one line on stderr, no traceback
    run = subprocess.run([sys.executable, "train.py", "--grad_accum=0"], capture_output=True, text=True,
                         cwd=HERE, timeout=120)
    assert (run.returncode, run.stderr.strip()) == (1, "--grad_accum=0: use a value >= 1")

VAE_RUN = ["--stage=vae", "--size=16", "--num_frames=5", "--vae_batch_size=2", "--num_clips=8",
           "--num_workers=0", "--warmup_steps=1", "--log_every=1"]

def test_a_diverging_run_stops_naming_step_stage_and_checkpoint_and_keeps_it(tmp_path):
    run = VAE_RUN + [f"--out_dir={tmp_path}"]
    path = train.main(run + ["--vae_steps=2"])
    before = open(path, "rb").read()
    # lr 1e6: the loss is nan from step 4 (seeded)
    with pytest.raises(SystemExit) as e:
        train.main(run + ["--vae_steps=6", "--resume=True", "--vae_lr=1e6"])
    msg = str(e.value)
    assert "\n" not in msg and "[vae]" in msg and "step 4" in msg and f"{path} is kept" in msg, msg
    assert "--vae_lr" in msg and "--vae_dtype=float32" in msg, msg  # the VAE stage's own options
    assert open(path, "rb").read() == before                                   # untouched
    assert all(r["loss"] < 10 for r in train.read_metrics(str(tmp_path)))      # no nan step was logged
    ckpt = data.load_checkpoint(path)
    assert ckpt["step"] == 2 and all(torch.isfinite(t).all() for t in ckpt["vae"].values())

def test_a_failed_checkpoint_write_is_one_line_keeps_the_old_file_and_leaves_no_temp_file(tmp_path,
                                                                                          monkeypatch):
    run = VAE_RUN + [f"--out_dir={tmp_path}", "--vae_steps=1"]
    path = train.main(run)
    before = open(path, "rb").read()
    (tmp_path / "vae.pt.tmp999999").write_bytes(b"")                           # a write killed earlier
    real_save = torch.save

    def disk_full(obj, f, **kw):  # writes part of the file, then fails as a full disk does
        open(f, "wb").write(b"PK\x03\x04 partial")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit) as e:
        train.main(run + ["--vae_steps=2", "--resume=True"])
    monkeypatch.setattr(torch, "save", real_save)
    msg = str(e.value)
    assert "\n" not in msg and f"cannot write checkpoint {path}" in msg and "kept" in msg, msg
    assert open(path, "rb").read() == before
    assert not glob.glob(str(tmp_path / "*.tmp*")), os.listdir(tmp_path)   # neither the new nor the stale

def test_unreadable_and_short_files_are_counted_once_across_workers_and_at_a_runs_end(tmp_path, capsys):
    np.save(tmp_path / "short.npy", moving(3))
    np.save(tmp_path / "ok.npy", moving(9))
    bad = [f"bad{k}.mp4" for k in range(5)]
    for b in bad:
        (tmp_path / b).write_bytes(b"not a video")
    csv_path = write_csv(tmp_path / "c.csv", [(b, b, "cell") for b in bad] + [("short.npy", "s", "cell"),
                                                                            ("ok.npy", "ok", "cell")])
    ds = data.VideoCSVDataset(csv_path, num_frames=5, size=16)
    cfg = train.TrainConfig(data=csv_path, num_frames=5, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream = train.batches(ds, cfg, batch_size=1, start_step=0, rank=0, world=1)
        texts = [next(stream)["text"][0] for _ in range(8)]                 # one epoch of 7, then one more
    assert set(texts) == {"s", "ok"} and texts.count("s") >= 2             # the short file, drawn many times
    out = capsys.readouterr().out
    assert "epoch 0: 5 unreadable file(s) skipped" in out and "1 video(s) shorter than 5 frames padded" in out
    # a run shorter than one epoch prints the same line at its end
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train.main(VAE_RUN + [f"--data={csv_path}", "--vae_steps=1", "--num_workers=2",
                              f"--out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "epoch 0: " in out and "unreadable file(s) skipped" in out

def test_sample_takes_every_bare_prompt_and_same_slug_prompts_keep_their_own_files(tiny_run, tmp_path,
                                                                                     capsys):
    _, _, path = tiny_run
    sample.main(["heart, fast", "Heart fast", "cells", f"--ckpt={path}", f"--out_dir={tmp_path}",
                 "--steps=2"])
    printed = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == sorted(f"{s}.{e}" for s in ("heart-fast", "heart-fast-2", "cells")
                                                  for e in ("mp4", "gif", "png"))
    assert "'heart, fast': " in printed and "'Heart fast': " in printed and "'cells': " in printed

def test_evaluate_makes_a_missing_out_folder_before_it_starts(tiny_run, tmp_path):
    _, _, path = tiny_run
    out = tmp_path / "new" / "folder" / "e.json"
    evaluate.main([f"--ckpt={path}", "--what=vae", "--num_clips=2", "--vae_clips=2", "--real_clips=/none",
                   f"--classifier={tmp_path}", "--device=cpu", f"--out={out}"])
    assert json.load(open(out))["vae_synthetic"]["size"] == 16

def test_make_csv_lists_only_files_whose_first_frame_decodes(tmp_path, capsys):
    root = tmp_path / "corpus"
    os.makedirs(root / "cell" / "frames")
    np.save(root / "cell" / "good.npy", moving(5))
    np.save(root / "cell" / "nan.npy", np.full((5, 8, 8), np.nan, np.float32))
    (root / "cell" / "frames" / "000.png").write_bytes(b"not a png")           # listed, but cannot decode
    (root / "cell" / "frames" / "001.png").write_bytes(b"not a png")
    out, rows = data.make_csv(str(root))
    printed = capsys.readouterr().out
    assert [os.path.basename(r[0]) for r in rows] == ["good.npy"]
    assert "nan.npy: NaN or infinite values" in printed
    assert f"{root / 'cell' / 'frames'}: " in printed and printed.count("leaving it out") == 2
