"""
medvid's plumbing, as executable checks: video formats and frame-exact streaming, CSV dialects and folder
trees, bad and short files, modality balancing and sharding, two real DDP processes, the model loaders, and
the one-line errors of the command lines. CPU only; the claims about the method are in test_all.py.

  python -m pytest -q test_plumbing.py
  python -m pytest -q test_plumbing.py -k csv
"""
import csv
import dataclasses
import glob
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import warnings

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

import bench
import data
import dit
import evaluate
import priors
import sample
import train
from vae import VAE_PRESETS, VAEConfig

HERE = os.path.dirname(os.path.abspath(__file__))
REAL = os.path.join(HERE, "..", "shared", "data", "real_clips")
needs_real = pytest.mark.skipif(not os.path.isdir(REAL), reason=f"no real clips at {REAL}")
torch.set_num_threads(min(2, torch.get_num_threads()))

# ----------------------------------------------------------------------------------------------
# Builders: small videos in every format, and CSV files

def moving(T, H=20, W=24, seed=0, speed=0.7):
    """uint8 (T, H, W, 3): smooth colour waves drifting `speed` radians per frame (a video that moves)."""
    rng = np.random.default_rng(seed)
    t, y, x = np.arange(T)[:, None, None], *np.mgrid[:H, :W]
    ph = rng.uniform(0, 6, 3)
    chans = [np.sin(x / 3 + speed * t + ph[c]) * np.cos(y / 4 - 0.3 * speed * t + ph[c]) for c in range(3)]
    return (127 + 110 * np.stack(chans, -1)).astype(np.uint8)                # (T, H, W, 3)

def write_csv(path, rows, header=("path", "text", "modality")):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(([header] if header else []) + [list(r) for r in rows])
    return str(path)

def _all_formats(tmp_path, video):
    paths = dict(npy=str(tmp_path / "v.npy"), npz=str(tmp_path / "v.npz"), npzc=str(tmp_path / "vc.npz"),
                 folder=str(tmp_path / "frames"), mp4=str(tmp_path / "v.mp4"), gif=str(tmp_path / "v.gif"))
    np.save(paths["npy"], video[..., 0])                                           # grayscale (T, H, W)
    np.savez(paths["npz"], other=np.zeros(3), images=video)                        # stored member, seekable
    # deflated, floats in [0, 1]
    np.savez_compressed(paths["npzc"], frames=video.astype(np.float32) / 255)
    os.makedirs(paths["folder"])
    for t, frame in enumerate(video):
        data.iio.imwrite(os.path.join(paths["folder"], f"f{t:04d}.png"), frame)
    data.save_video(paths["mp4"], video)
    data.save_video(paths["gif"], video)
    return paths

def whole_file_clip(path, num_frames, size, rng, interval=1, motion_threshold=0.0, max_interval=8):
    """The slow, obvious sample_clip: read the whole file, resize every frame, then make the same choice."""
    every = data.resize_center_crop(data.read_video(path), size)  # (T, size, size, 3)
    args = (num_frames, rng, interval, motion_threshold, max_interval)
    clip, idx, k = data._choose(lambda start, keep: every.__getitem__, len(every), *args)
    return clip, dict(indices=idx, interval=k)

def _npy_corpus(root, counts=(("endoscopy", 6), ("ultrasound", 3), ("cell", 2)), corrupt=True):
    rows = []
    for m, n in counts:
        os.makedirs(root / m, exist_ok=True)
        for k in range(n):
            np.save(root / m / f"{k}.npy", moving(8 + k, 20, 24, seed=len(rows)))
            rows.append((f"{m}/{k}.npy", f"{m} clip {k}", m, 8 + k))
    if corrupt:
        (root / "cell" / "bad.npy").write_bytes(b"\x93NUMPY garbage")
        rows.append(("cell/bad.npy", "bad", "cell", 8))
    return write_csv(root / "videos.csv", rows, header=("path", "text", "modality", "num_frames"))

# ----------------------------------------------------------------------------------------------
# Video formats: reading, writing, and streaming only the frames a clip needs

@needs_real
def test_read_real_clips_and_resize():
    paths = sorted(glob.glob(f"{REAL}/*.mp4") + glob.glob(f"{REAL}/*.npy"))
    assert len(paths) >= 5
    for p in paths:
        if "laparoscopy" in p:
            continue  # 250 frames of 720p take ~4 s to decode; the other clips cover the same code
        v = data.read_video(p)
        assert v.dtype == np.uint8 and v.ndim == 4 and v.shape[-1] == 3 and len(v) > 1, p
        r = data.resize_center_crop(v[:3], 32)
        assert r.shape == (3, 32, 32, 3) and r.dtype == np.uint8
    g = data.read_video(f"{REAL}/mri_speech_rtmri_midsagittal_vocaltract_uint8.npy")
    assert (g[..., 0] == g[..., 2]).all()                      # grayscale repeated to 3 channels
    wide = np.zeros((2, 40, 100, 3), np.uint8)
    wide[:, :, 30:70] = 255                                     # the central 40x40 square is white
    assert data.resize_center_crop(wide, 20).min() == 255
    with pytest.raises(ValueError, match="cannot read video"):
        data.read_video("/nonexistent/clip.mp4")

def test_save_video_round_trip(tmp_path):
    f = data.render_synthetic("ophthalmic-surgery", 0, 9, 33)[0]  # odd size: the mp4 writer pads it
    mp4 = data.read_video(data.save_video(tmp_path / "a" / "v.mp4", f))
    assert mp4.shape[0] == 9 and mp4.shape[1:3] == (34, 34)
    assert np.abs(mp4[:, :33, :33].astype(np.float32) - f).mean() < 10
    gif = data.read_video(data.save_video(tmp_path / "v.gif", f))
    assert gif.shape == f.shape and np.abs(gif.astype(np.float32) - f).mean() < 10
    png = data.read_video(data.save_video(tmp_path / "v.png", f))
    assert png.shape == (1, 33, 9 * 33, 3)
    with pytest.raises(ValueError):
        data.save_video(tmp_path / "v.avi2", f)

def test_frame_indices():
    assert list(data.frame_indices(100, 4, 3)) == [45, 48, 51, 54]   # centred
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = data.frame_indices(30, 5, 4, rng)
        assert idx[0] >= 0 and idx[-1] <= 29 and (np.diff(idx) == 4).all()
    assert list(data.frame_indices(10, 5, 4)) == [0, 2, 4, 7, 9]    # too short for interval 4: spread out
    assert list(data.frame_indices(3, 5, 1)) == [0, 0, 1, 2, 2]     # fewer frames than asked: repeat
    assert list(data.frame_indices(1, 3, 2)) == [0, 0, 0]
    with pytest.raises(ValueError):
        data.frame_indices(0, 3, 1)

def test_sample_clip_streaming_equals_the_whole_file_reference(tmp_path):
    paths = _all_formats(tmp_path, moving(40, 30, 44))
    for name, p in paths.items():
        assert data.video_info(p)[0] == 40, name
        ways = (dict(interval=3), dict(interval=9), dict(motion_threshold=25.0, max_interval=4))
        for seed, kw in enumerate(ways * 2):
            fast, info = data.sample_clip(p, 9, 16, np.random.default_rng(seed), **kw)
            ref, rinfo = whole_file_clip(p, 9, 16, np.random.default_rng(seed), **kw)
            assert fast.shape == (9, 16, 16, 3) and np.array_equal(fast, ref), (name, seed, kw)
            assert list(info["indices"]) == list(rinfo["indices"]) and info["interval"] == rinfo["interval"]
    # frame-exact ffmpeg seeking on real clips with odd frame rates (12.69, 19 fps)
    if os.path.isdir(REAL):
        for name in ("ultrasound_ocular_phantom_butterfly_itkpocus.mp4",
                     "ultrasound_ocular_clarius_itkpocus.mp4"):
            a, info = data.sample_clip(os.path.join(REAL, name), 5, 32, np.random.default_rng(1), interval=2)
            b, _ = whole_file_clip(os.path.join(REAL, name), 5, 32, np.random.default_rng(1), interval=2)
            # a seek, not the first frames
            assert info["indices"][0] > 0 and np.array_equal(a, b), name

def test_sample_clip_decodes_no_frame_outside_the_clip(tmp_path, monkeypatch):
    video = moving(60)
    os.makedirs(tmp_path / "f")
    for t, frame in enumerate(video):
        data.iio.imwrite(tmp_path / "f" / f"{t:03d}.png", frame)
    for t in range(30, 60):
        # never touched by a clip in 0..29
        (tmp_path / "f" / f"{t:03d}.png").write_bytes(b"garbage")
    read = []
    real_imread = data.iio.imread
    spy = lambda p, **kw: read.append(os.path.basename(p)) or real_imread(p, **kw)  # noqa: E731
    monkeypatch.setattr(data.iio, "imread", spy)
    # a window from frame 4
    seed = next(s for s in range(1000) if np.random.default_rng(s).integers(0, 48) == 4)
    clip, info = data.sample_clip(str(tmp_path / "f"), 5, 20, np.random.default_rng(seed), interval=3)
    assert list(info["indices"]) == [4, 7, 10, 13, 16] and read == [f"{t:03d}.png" for t in range(4, 17)]
    assert np.array_equal(clip, data.resize_center_crop(video[4:17:3], 20))
    # the whole-file reader does hit them
    with pytest.raises(ValueError, match=r"cannot read video .*/f: "):
        data.read_video(str(tmp_path / "f"))

def test_motion_threshold_widens_the_interval_until_the_clip_moves_more_than_k(tmp_path):
    F, kmax = 5, 6
    path = str(tmp_path / "slow.npy")
    # slow: motion grows with the interval
    np.save(path, moving(80, 16, 16, speed=0.05))
    def motions(start):
        return [data.clip_motion(np.load(path)[start:start + (F - 1) * k + 1:k]) for k in range(1, kmax + 1)]
    for seed in range(4):
        # the draw sample_clip makes
        start = int(np.random.default_rng(seed).integers(0, 80 - ((F - 1) * kmax + 1) + 1))
        m = motions(start)
        # monotone here, so K picks one k
        assert all(a < b for a, b in zip(m, m[1:]))
        for K in (m[0] - 1, (m[1] + m[2]) / 2, m[-1] + 1):
            want = next((k for k, v in enumerate(m, 1) if v > K), kmax)           # Bora App. A, or the widest
            _, info = data.sample_clip(path, F, 16, np.random.default_rng(seed), motion_threshold=K,
                                       max_interval=kmax)
            assert info["interval"] == want and list(info["indices"]) == [start + want * i for i in range(F)]
    # a still video: the widest interval
    np.save(path, np.repeat(moving(1, 16, 16), 14, axis=0))
    _, info = data.sample_clip(path, F, 16, np.random.default_rng(0), motion_threshold=1.0, max_interval=kmax)
    assert info["interval"] == 3 and list(info["indices"]) == [0, 3, 6, 9, 12]    # (14 - 1) // 4 = 3 fits

def test_short_videos_are_padded_or_skipped_and_counted(tmp_path):
    np.save(tmp_path / "short.npy", moving(3))
    np.save(tmp_path / "long.npy", moving(9))
    csv_path = write_csv(tmp_path / "c.csv", [("short.npy", "s", "cell"), ("long.npy", "l", "cell")])
    # pad: frames repeat, [0, 0, 1, 2, 2]
    ds = data.VideoCSVDataset(csv_path, num_frames=5, size=16)
    it = ds[0]
    v = data.resize_center_crop(moving(3), 16)
    assert it["short"] == str(tmp_path / "short.npy") and it["text"] == "s"
    assert torch.equal(it["video"], data.to_tensor(v[[0, 0, 1, 2, 2]]))
    assert ds[1]["short"] == ""
    skip = data.VideoCSVDataset(csv_path, num_frames=5, size=16, short_clips="skip")
    with pytest.warns(UserWarning, match="short.npy has 3 frames, fewer than num_frames=5; skipping it"):
        it = skip[0]
    assert it["text"] == "l" and it["short"] == str(tmp_path / "short.npy") and it["skipped"] == ""
    known = write_csv(tmp_path / "k.csv", [("short.npy", "s", "cell", 3), ("long.npy", "l", "cell", 9)],
                      header=("path", "text", "modality", "num_frames"))
    # known lengths: dropped up front
    with pytest.warns(UserWarning, match="left out 1 video"):
        assert len(data.VideoCSVDataset(known, num_frames=5, size=16, short_clips="skip")) == 1
    with pytest.raises(ValueError, match="short_clips='cut'"):
        data.VideoCSVDataset(csv_path, short_clips="cut")

# ----------------------------------------------------------------------------------------------
# CSV dialects, folder trees, bad files

def test_csv_formats_headered_headerless_aliases_and_errors(tmp_path):
    for folder in ("Colonoscopic", "EchoNet_Dynamic", "misc"):
        os.makedirs(tmp_path / folder)
    np.save(tmp_path / "Colonoscopic" / "a.npy", moving(6))
    # headered, any column order, optional num_frames/fps, aliases mapped, empty caption -> template
    header = ("num_frames", "path", "text", "modality", "fps")
    row = (" 6", "Colonoscopic/a.npy", "", "colonoscopy", "25")
    rows = data.read_csv(write_csv(tmp_path / "h.csv", [row], header))
    assert rows == [dict(path=str(tmp_path / "Colonoscopic" / "a.npy"), text="This is an endoscopy video.",
                         modality="endoscopy", num_frames=6, fps=25.0)]
    # headerless (Bora / Open-Sora v1.0): modality from the nearest known folder name, else unknown; column 3
    # = frames
    rows = [("EchoNet_Dynamic/x/b.mp4", "a heart", "40"), ("misc/c.mp4", "something"),
            ("/abs/Colonoscopic/d.avi", "")]
    rows = data.read_csv(write_csv(tmp_path / "nh.csv", rows, header=None))
    assert [(r["modality"], r["num_frames"], r["text"]) for r in rows] == [
        ("ultrasound", 40, "a heart"), ("unknown", None, "something"),
        ("endoscopy", None, "This is an endoscopy video.")]
    assert rows[0]["path"] == str(tmp_path / "EchoNet_Dynamic" / "x" / "b.mp4")
    assert rows[2]["path"] == "/abs/Colonoscopic/d.avi"
    # errors are one line naming the file and the fix
    with pytest.raises(ValueError, match=r"missing column\(s\) \['modality', 'path', 'text'\].*header path,"):
        data.read_csv(write_csv(tmp_path / "bad.csv", [("1", "2")], header=("a", "b")))
    with pytest.raises(ValueError, match="line 2: 'many' is not a number"):
        data.read_csv(write_csv(tmp_path / "n.csv", [("a.npy", "t", "cell", "many")],
                                header=("path", "text", "modality", "num_frames")))
    with pytest.raises(ValueError, match="no rows"):
        data.read_csv(write_csv(tmp_path / "e.csv", []))

def test_make_csv_builds_a_readable_csv_from_a_folder_tree(tmp_path, capsys):
    root = tmp_path / "corpus"
    for d in ("Kvasir-Capsule/sub", "cell", "Dermoscopy", "ultrasound/clip3"):
        os.makedirs(root / d)
    # nested: top folder names it
    np.save(root / "Kvasir-Capsule" / "sub" / "v1.npy", moving(7))
    # sidecar caption
    (root / "Kvasir-Capsule" / "sub" / "v1.txt").write_text("A capsule\nendoscopy video.\n")
    np.savez_compressed(root / "cell" / "c1.npz", frames=moving(5))
    data.save_video(root / "cell" / "c2.mp4", moving(9, 32, 32))
    write_csv(root / "cell" / "captions.csv", [("c2.mp4", "Cells drifting.")], header=("file", "caption"))
    np.save(root / "Dermoscopy" / "d.npy", moving(4))                              # an unknown name is kept
    # a frame folder is one video
    for t, frame in enumerate(moving(3, 16, 16)):
        data.iio.imwrite(root / "ultrasound" / "clip3" / f"{t:03d}.png", frame)
    (root / "ultrasound" / "broken.mp4").write_bytes(b"\0" * 100)                 # left out, named
    out, rows = data.make_csv(str(root))
    printed = capsys.readouterr().out
    assert "broken.mp4" in printed and "leaving it out" in printed and "3 without a caption" in printed
    got = {os.path.basename(r["path"]): r for r in data.read_csv(out)}
    assert set(got) == {"v1.npy", "c1.npz", "c2.mp4", "d.npy", "clip3"}
    v1, c2 = got["v1.npy"], got["c2.mp4"]
    assert (v1["modality"], v1["text"], v1["num_frames"]) == ("endoscopy", "A capsule endoscopy video.", 7)
    assert (c2["text"], c2["num_frames"], c2["fps"]) == ("Cells drifting.", 9, 8.0)
    assert got["c1.npz"]["text"] == "This is a cell microscopy video."
    assert got["d.npy"]["modality"] == "dermoscopy"
    assert (got["clip3"]["modality"], got["clip3"]["num_frames"]) == ("ultrasound", 3)
    assert open(out).readline().strip() == "path,text,modality,num_frames,fps"
    assert str(root) not in open(out).read()  # relative paths
    ds = data.VideoCSVDataset(out, num_frames=5, size=16)                          # every row loads
    assert all(ds[i]["video"].shape == (5, 3, 16, 16) for i in range(len(ds)))

@needs_real
def test_csv_dataset_skips_bad_files(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)
    (tmp_path / "bad.mp4").write_bytes(noise.tobytes())
    good = [f"{REAL}/ultrasound_ocular_clarius_itkpocus.mp4",
            f"{REAL}/microscopy_phase_contrast_cells_laptrack_10f_uint8.npy"]
    rows = [(good[0], "an ocular ultrasound", "ultrasound"), (str(tmp_path / "bad.mp4"), "x", "cell"),
            (str(tmp_path / "missing.mp4"), "y", "cell"), (good[1], "cells, phase contrast", "cell")]
    csv_path = tmp_path / "clips.csv"
    csv_path.write_text("path,text,modality\n" + "".join(f'{p},"{t}",{m}\n' for p, t, m in rows))
    ds = data.VideoCSVDataset(str(csv_path), num_frames=8, size=32, frame_interval=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    # imageio-ffmpeg may add ResourceWarnings
    msgs = [str(w.message) for w in caught if w.category is UserWarning]
    assert len(msgs) == 2 and "bad.mp4" in msgs[0] and "missing.mp4: file not found" in msgs[1]
    assert all("\n" not in m for m in msgs)                    # one line each
    for it in items:
        assert it["video"].shape == (8, 3, 32, 32) and it["video"].dtype == torch.float32
        assert -1 <= it["video"].min() and it["video"].max() <= 1 and it["video"].std() > 0.01
    assert len(ds.bad) == 2 and items[1]["modality"] == "cell"  # bad.mp4's turn went to the next good clip
    ds_align = data.VideoCSVDataset(str(csv_path), num_frames=4, size=16, align=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ds_align[0]["text"] == "This is an ultrasound video."
    with pytest.raises(ValueError, match="missing column"):
        (tmp_path / "nohead.csv").write_text("a,b\n1,2\n")
        data.VideoCSVDataset(str(tmp_path / "nohead.csv"))
    with pytest.raises(ValueError, match="not found"):
        data.VideoCSVDataset(str(tmp_path / "nope.csv"))
    # relative paths
    (tmp_path / "allbad.csv").write_text("path,text,modality\nbad.mp4,x,cell\nmissing.mp4,y,cell\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no video"):
            data.VideoCSVDataset(str(tmp_path / "allbad.csv"))[0]

def test_bad_files_are_skipped_with_a_warning_counted_per_epoch_and_truncated_mp4s_recounted(
        tmp_path, capsys):
    video = moving(30, 32, 32)
    # an mp4 with its index first (faststart), cut short: the header promises 30 frames, the stream holds
    # fewer
    w = imageio_ffmpeg.write_frames(str(tmp_path / "full.mp4"), (32, 32), fps=10,
                                    output_params=["-movflags", "+faststart"])
    w.send(None)
    for frame in video:
        w.send(np.ascontiguousarray(frame))
    w.close()
    blob = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(blob[:len(blob) * 2 // 3])
    assert data.video_info(str(tmp_path / "cut.mp4"))[0] == 30
    clip, info = data.sample_clip(str(tmp_path / "cut.mp4"), 5, 16, np.random.default_rng(0), interval=6)
    assert 5 <= info["total"] < 30 and clip.shape == (5, 16, 16, 3)               # recounted, still a clip
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)
    (tmp_path / "noise.mp4").write_bytes(noise.tobytes())
    (tmp_path / "empty.mp4").write_bytes(b"")
    np.save(tmp_path / "ok.npy", video)
    (tmp_path / "half.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:5000])
    np.savez(tmp_path / "cut.npz", frames=video)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:3000])
    bad = ["noise.mp4", "empty.mp4", "half.npy", "cut.npz", "gone.mp4"]
    rows = [(b, "x", "cell") for b in bad] + [("ok.npy", "fine", "cell"), ("cut.mp4", "y", "cell")]
    csv_path = write_csv(tmp_path / "c.csv", rows)
    ds = data.VideoCSVDataset(csv_path, num_frames=5, size=16)
    cfg = train.TrainConfig(data=csv_path, num_frames=5, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = train.batches(ds, cfg, batch_size=7, start_step=0, rank=0, world=1)
        batch = next(stream)
        # the next epoch's first batch
        next(stream)
    msgs = [str(w.message) for w in caught if w.category is UserWarning]
    assert len(msgs) == 5 and all("\n" not in m for m in msgs)
    named = sorted(m.split("cannot read video ")[1].split(":")[0] for m in msgs)
    assert named == sorted(str(tmp_path / b) for b in bad)
    assert "Invalid data found" in next(m for m in msgs if "noise.mp4" in m)
    assert any("gone.mp4: file not found" in m for m in msgs)
    assert batch["video"].shape == (7, 5, 3, 16, 16) and set(batch["text"]) == {"fine", "y"}
    assert "skipped" not in batch and "epoch 0: 5 unreadable file(s) skipped" in capsys.readouterr().out

def test_synthetic_dataset():
    ds = data.SyntheticVideoDataset(10, num_frames=5, size=16, seed_offset=7)
    it = ds[6]
    assert it["video"].shape == (5, 3, 16, 16) and it["modality"] == data.MODALITIES[1]
    assert it["text"] == data.render_synthetic(data.MODALITIES[1], 13, 5, 16)[1]
    assert -1 <= it["video"].min() and it["video"].max() <= 1
    assert data.SyntheticVideoDataset(10, 5, 16, 7, align=True)[6]["text"] == "This is an ultrasound video."
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["video"].shape == (5, 5, 3, 16, 16) and len(set(batch["modality"])) == 5

# ----------------------------------------------------------------------------------------------
# Flips, modality balancing, shards

def test_hflip_only_for_modalities_without_laterality_and_never_when_the_caption_names_a_side(tmp_path):
    np.save(tmp_path / "v.npy", moving(6))
    rows = [("v.npy", "a polyp", "endoscopy"), ("v.npy", "a tool from the left", "endoscopy"),
            ("v.npy", "cells", "cell")]
    ds = data.VideoCSVDataset(write_csv(tmp_path / "c.csv", rows), num_frames=5, size=16, hflip="Colonoscopy")
    plain = data.VideoCSVDataset(str(tmp_path / "c.csv"), num_frames=5, size=16)
    differs = lambda a, b, i, s: not torch.equal(a[(i, 0, s)]["video"], b[(i, 0, s)]["video"])  # noqa: E731
    flipped = [[differs(ds, plain, i, s) for s in range(40)] for i in range(3)]
    for i in range(3):  # same window either way: a flip is the only difference, and it is exact
        a, b = ds[(i, 0, 1)]["video"], plain[(i, 0, 1)]["video"]
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    assert 10 < sum(flipped[0]) < 30 and not any(flipped[1]) and not any(flipped[2])
    aligned = data.VideoCSVDataset(str(tmp_path / "c.csv"), num_frames=5, size=16, hflip="endoscopy",
                                   align=True)
    assert any(differs(aligned, plain, 1, s) for s in range(40))  # the template names no side
    for lateral in ("ophthalmic-surgery", "cataract", "ultrasound", "RT_MRI"):
        with pytest.raises(ValueError, match="must not be flipped"):
            data.VideoCSVDataset(str(tmp_path / "c.csv"), hflip=f"endoscopy,{lateral}")

def test_modality_balancing_equalises_modalities_caps_and_is_deterministic():
    mods = ["endoscopy"] * 60 + ["cell"] * 30 + ["rt-mri"] * 10
    w = data.modality_weights(mods)
    assert np.isclose(w.sum(), 1) and np.allclose([w[:60].sum(), w[60:90].sum(), w[90:].sum()], 1 / 3)
    draws = np.concatenate([data.epoch_order(100, 0, e, mods, "weight") for e in range(30)])
    share = np.bincount(np.searchsorted([60, 90], draws, side="right"), minlength=3) / len(draws)
    assert np.allclose(share, 1 / 3, atol=0.03)                                   # 3000 draws: ~0.009 std
    # rare clips recur, all of them
    assert len(set(draws[draws >= 90].tolist())) == 10
    cap = data.epoch_order(100, 0, 0, mods, "cap")
    assert len(cap) == 30 and len(set(cap)) == 30
    assert [sum(1 for i in cap if lo <= i < hi) for lo, hi in ((0, 60), (60, 90), (90, 100))] == [10, 10, 10]
    # fresh subsets
    assert set().union(*(data.epoch_order(100, 0, e, mods, "cap") for e in range(60))) == set(range(100))
    for bal in ("weight", "cap", "none"):
        order = data.epoch_order(100, 3, 2, mods, bal)
        assert order == data.epoch_order(100, 3, 2, mods, bal) != data.epoch_order(100, 3, 1, mods, bal)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(7)).tolist()
    assert data.epoch_order(100, 5, 2, mods, "none") == perm
    with pytest.raises(ValueError, match="use none, weight or cap"):
        data.epoch_order(100, 0, 0, mods, "equal")

def test_batches_give_ranks_disjoint_shards_and_a_resume_the_same_clips(tmp_path):
    csv_path = _npy_corpus(tmp_path, corrupt=False)
    cfg = train.TrainConfig(data=csv_path, num_frames=5, size=16, num_workers=0, seed=3)
    ds = train.make_dataset(cfg, "align")
    assert train.balancing(cfg, "align") == "weight" and train.balancing(cfg, "instruct") == "none"
    stream = lambda rank, start: train.batches(ds, cfg, 2, start, rank, 2, "weight")  # noqa: E731
    # 11 clips / 4 per step: 2 steps an epoch
    straight = {r: [b for b, _ in zip(stream(r, 0), range(5))] for r in (0, 1)}
    for epoch in (0, 1, 2):
        pos = {r: [(int(p), int(i)) for b in straight[r] for i, e, p in zip(*b["key"]) if e == epoch]
               for r in (0, 1)}
        order = data.epoch_order(11, 3, epoch, ds.modalities, "weight")
        assert {p for p, _ in pos[0]}.isdisjoint(p for p, _ in pos[1])           # each rank its own shard
        assert sorted(p for r in (0, 1) for p, _ in pos[r]) == list(range(8 if epoch < 2 else 4))
        assert all(order[p] == i and p % 2 == r for r in (0, 1) for p, i in pos[r])
    resumed = [b for b, _ in zip(stream(1, 3), range(2))]                          # rank 1 resumes at step 3
    for a, b in zip(straight[1][3:], resumed):
        # same clips, same random windows
        assert torch.equal(a["video"], b["video"]) and a["text"] == b["text"]
        assert all(torch.equal(x, y) for x, y in zip(a["key"], b["key"]))

# ----------------------------------------------------------------------------------------------
# Two real processes (gloo on CPU), set up with the environment torchrun gives its workers

def _ddp_rank(rank, ports, runs, out):
    """One rank: train.main for each run (a fresh process group each). It watches, without changing anything,
    through two public hooks: Python's audit hook sees each checkpoint write (save_checkpoint ends in an
    atomic os.replace), torch's global forward hook every module the run calls: the DDP-wrapped DiT, and the
    text encoder with each micro-batch's captions."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)  # two ranks on a 2-core machine
    saves, models, captions = [], [], []
    sys.addaudithook(lambda event, args: event == "os.rename" and saves.append(str(args[1])))

    def seen(module, inputs, output):
        if isinstance(module, DistributedDataParallel) and not models:
            models.append(module.module)  # the first DDP module a run calls: the DiT
        if isinstance(module, dit.TextEncoder):
            captions.append(list(inputs[0]))
    torch.nn.modules.module.register_module_forward_hook(seen)
    for run, (port, argv) in enumerate(zip(ports, runs)):
        os.environ["MASTER_PORT"] = str(port)
        saves.clear(), models.clear(), captions.clear()
        train.main(argv)
        torch.save(dict(params=models[0].state_dict(), saves=list(saves), captions=list(captions)),
                   f"{out}/run{run}.rank{rank}.pt")

def test_ddp_two_processes_identical_parameters_disjoint_shards_one_checkpoint_and_resume(
        tiny_run, tmp_path, capfd):
    root, args, _ = tiny_run
    bert = next(a for a in args if a.startswith("--text_encoder="))
    csv_path, out = _npy_corpus(tmp_path / "corpus"), tmp_path / "out"
    common = ["--size=16", "--num_frames=5", "--num_workers=0", bert, "--warmup_steps=1", "--log_every=1",
              "--preview_steps=1", "--batch_size=2", f"--data={csv_path}", "--balance=weight",
              "--val_clips=0"]  # no validation captions among the ones the hook records
    instruct = common + ["--stage=instruct", f"--init_from={root / 'out' / 'vae.pt'}", f"--out_dir={out}",
                         "--instruct_steps=4"]
    # stop at step 2, then resume to 4
    runs = [instruct + ["--max_run_steps=2"], instruct + ["--resume=True"]]
    socks = [socket.socket() for _ in runs]
    ports = [s.bind(("127.0.0.1", 0)) or s.getsockname()[1] for s in socks]
    [s.close() for s in socks]
    capfd.readouterr()
    # spawn, not fork: a child forked after the parent's OpenMP pool has run can deadlock in its first matmul
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_ddp_rank, args=(r, ports, runs, str(tmp_path))) for r in (0, 1)]
    [p.start() for p in procs]
    [p.join(timeout=150) for p in procs]
    printed = capfd.readouterr()
    assert [p.exitcode for p in procs] == [0, 0], printed.err[-3000:]
    got = {(run, r): torch.load(tmp_path / f"run{run}.rank{r}.pt", weights_only=True)
           for run in (0, 1) for r in (0, 1)}
    for run in (0, 1):
        r0, r1 = got[run, 0], got[run, 1]
        assert r0["params"].keys() == r1["params"].keys()
        # DDP kept the ranks in step
        assert all(torch.equal(v, r1["params"][k]) for k, v in r0["params"].items())
        # one writer, one checkpoint (and the metrics file that rank 0 alone rewrites at the stage's start)
        assert r0["saves"] == [str(out / "metrics.jsonl"), str(out / "instruct.pt")] and r1["saves"] == []
    assert sorted(os.listdir(out)) == ["instruct.pt", "loss.png", "metrics.jsonl", "previews"]
    assert [r["step"] for r in train.read_metrics(str(out))] == [1, 2, 3, 4]  # rank 0 alone logs, once a step
    assert data.load_checkpoint(str(out / "instruct.pt"))["step"] == 4
    assert "stopped at step 2 of 4" in printed.out and "epoch 0: 1 unreadable file(s) skipped" in printed.out
    # 12 clips (one unreadable), global batch 4: 3 steps an epoch. Run 0 did steps 0-1, the resumed run steps
    # 2-3. Rank r must have encoded, in order, the captions of its shard: the positions r, r + 2, ... of each
    # epoch's order (the unreadable file's turn going to another clip of its modality), nothing twice or lost
    ds = data.VideoCSVDataset(csv_path, num_frames=5, size=16)
    modalities = [row["modality"] for row in data.read_csv(csv_path)]
    orders = [data.epoch_order(12, 0, e, modalities, "weight") for e in (0, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in (0, 1):
            keys = [(orders[0][p], 0, p) for p in range(r, 12, 2)]
            keys += [(orders[1][p], 1, p) for p in range(r, 4, 2)]
            # 2 micro-batches a run
            seen = [c for run in (0, 1) for call in got[run, r]["captions"][:2] for c in call]
            assert seen == [ds[k]["text"] for k in keys], r

# ----------------------------------------------------------------------------------------------
# Loaders: the real from_pretrained paths on tiny models the tests save

def test_text_encoder_loads_with_from_pretrained_and_masks_padding(bert):
    enc = dit.load_text_encoder(bert)
    assert enc.dim == 24
    emb, mask = enc(["heart video", "cell video fast slow hello"])
    assert emb.shape == (2, 7, 24) and mask.tolist()[0] == [True] * 4 + [False] * 3  # [CLS] heart video [SEP]
    assert not emb.requires_grad and all(not p.requires_grad for p in enc.parameters())
    alone, _ = dit.load_text_encoder(bert)(["heart video"])
    torch.testing.assert_close(alone[0], emb[0, :4])  # a caption's tokens do not depend on its batch-mates
    assert emb[0, 4:].abs().sum() == 0

def test_t5_folder_loads_its_encoder_only(bert, tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration
    path = shutil.copytree(bert, tmp_path / "t5")  # a word-piece tokenizer is enough for the test
    T5ForConditionalGeneration(T5Config(vocab_size=16, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                        decoder_start_token_id=0)).save_pretrained(path)
    enc = dit.load_text_encoder(path)
    assert type(enc.model).__name__ == "T5EncoderModel" and enc.dim == 16
    emb, mask = enc(["heart video"])
    assert emb.shape == (1, 4, 16) and bool(mask.all())

def test_unloadable_text_encoder_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        dit.load_text_encoder(str(tmp_path / "nothing-here"))
    msg = str(e.value)
    assert "cannot load text encoder" in msg and "--text_encoder=minilm" in msg and "\n" not in msg

def test_unloadable_or_wrong_teacher_is_a_one_line_error(tmp_path):
    for bad, what in [(str(tmp_path / "nothing-here"), "cannot load DINO teacher"), (None, "not a ViT")]:
        if bad is None:
            from transformers import BertConfig, BertModel
            bad = str(tmp_path / "bert")
            BertModel(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=8)).save_pretrained(bad)
        with pytest.raises(SystemExit) as e:
            priors.load_dino(bad)
        assert what in str(e.value) and "--dino=none" in str(e.value) and "\n" not in str(e.value)

# ----------------------------------------------------------------------------------------------
# Command lines: options, checkpoints and prompts that are wrong are one-line errors

def test_parse_args_types_presets_and_errors():
    argv = ["--lr=1e-3", "--batch_size=4", "--stage=align", "--resume=True"]
    cfg = data.parse_args(train.TrainConfig, argv, train.PRESETS)
    assert (cfg.lr, cfg.batch_size, cfg.stage, cfg.resume) == (1e-3, 4, "align", True)
    assert data.parse_args(train.TrainConfig, ["--preset=small"], train.PRESETS).size == 128
    for bad in (["--nope=1"], ["--batch_size=four"], ["--batch_size=1.5"], ["stage"], ["--preset=huge"]):
        with pytest.raises(SystemExit):
            data.parse_args(train.TrainConfig, bad, train.PRESETS)
    # --vae_args: typed VAEConfig overrides on top of a preset (the frequency-compensation ablation)
    v = train.vae_config("tiny-fc", "freq_comp=False,base_channels=18,norm_groups=6")
    assert (v.freq_comp, v.base_channels, v.norm_groups, v.z_channels) == (False, 18, 6, 16)
    assert train.vae_config("tiny", "") == VAEConfig(**VAE_PRESETS["tiny"])
    for name, bad in (("tiny", "freq=1"), ("tiny", "z_channels=1.5"), ("tiny", "freq_comp"), ("huge", "")):
        with pytest.raises(SystemExit):
            train.vae_config(name, bad)
    for bad, msg in ((["--compile=maybe"], "--compile=maybe"), (["--stage=vea"], "--stage=vea"),
                     (["--num_frames=8"], "1\\+4k"), (["--balance=equal", "--stage=vae"], "--balance")):
        with pytest.raises(SystemExit, match=msg):
            train.main(bad + ["--out_dir=/nonexistent/never-written"])

def test_help_of_every_script_lists_every_option_with_its_comment_and_exits_0(capsys):
    for main, cls in ((train.main, train.TrainConfig), (sample.main, sample.SampleConfig),
                      (evaluate.main, evaluate.EvalConfig), (bench.main, bench.BenchConfig)):
        for flag in ("--help", "-h"):
            with pytest.raises(SystemExit) as e:
                main([flag, "--lr=not even parsed"])
            assert e.value.code == 0
            out = capsys.readouterr().out
            assert all(f"  --{f.name}=" in out for f in dataclasses.fields(cls)), cls
    # train.py's: the comment beside a field and the line under it, the group headings, the presets
    train_help = data.config_help(train.TrainConfig, train.PRESETS)
    assert "  --lr=0.001" in train_help and "DiT peak lr: 1e-3 suits" in train_help
    lines = train_help.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("  --data="))
    assert "CSV of videos" in lines[i] and lines[i + 1].strip() == "'' = the synthetic benchmark"
    assert "  # I/O\n  --out_dir=" in train_help and "  # optimisation (per stage)\n" in train_help
    assert "  small  size=128 num_frames=17" in train_help
    # and as a command: the dataclass's source is read from the script run as __main__
    run = subprocess.run([sys.executable, "train.py", "--help"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)), timeout=120)
    assert run.returncode == 0 and "--vae_texture=0.0" in run.stdout and "presets" in run.stdout

def test_a_misspelled_option_suggests_the_closest_name():
    for wrong, right in (("lr_rate", "lr"), ("batchsize", "batch_size"), ("outdir", "out_dir"),
                         ("vae_step", "vae_steps")):
        with pytest.raises(SystemExit, match=f"^unknown option --{wrong} \\(did you mean --{right}\\?\\)$"):
            data.parse_args(train.TrainConfig, [f"--{wrong}=1"], train.PRESETS)
    with pytest.raises(SystemExit, match="unknown option --xyzzy; valid options: out_dir, stage"):
        data.parse_args(train.TrainConfig, ["--xyzzy=1"], train.PRESETS)

def test_metrics_log_has_each_step_once_across_a_stop_and_resume(tiny_run, tmp_path):
    root, args, _ = tiny_run
    base = [a for a in args if not a.startswith(("--out_dir", "--instruct_steps"))]
    base += ["--stage=instruct", f"--init_from={root / 'out' / 'align.pt'}", "--instruct_steps=4",
             "--val_clips=2", f"--out_dir={tmp_path}"]
    assert train.main(base + ["--max_run_steps=2"]) is None
    # as if killed after logging step 3 past the checkpoint at step 2, in the middle of the next line
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps(dict(stage="instruct", step=3, loss=9.0)) + "\n" + '{"stage": "instr')
    train.main(base + ["--resume=True"])
    rows = train.read_metrics(str(tmp_path))
    assert [(r["stage"], r["step"]) for r in rows] == [("instruct", s) for s in (1, 2, 3, 4)]
    assert all(r["loss"] != 9.0 for r in rows)
    assert set(rows[-1]) == {"stage", "step", "loss", "val", "lr", "grad_norm", "ms_per_step", "clips_per_s"}

def test_loss_png_is_drawn_at_the_end_of_each_stage_and_by_plot(tiny_run, tmp_path):
    root, _, _ = tiny_run
    rows = train.read_metrics(str(root / "out"))
    assert [(r["stage"], r["step"]) for r in rows] == [("vae", 1), ("vae", 2), ("align", 1), ("align", 2),
                                                       ("align", 3), ("instruct", 1), ("instruct", 2)]
    assert all("val" in r for r in rows if r["stage"] != "vae")
    png = root / "out" / "loss.png"
    with Image.open(png) as im:
        im.verify()
    assert os.path.getsize(png) > 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (3 * 420, 300)  # a panel per stage
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 10  # not blank
    os.remove(png)
    assert train.main([f"--plot={root / 'out'}"]) == str(png) and png.exists()
    with pytest.raises(SystemExit, match="nothing to draw"):
        train.main([f"--plot={tmp_path}"])

def test_vae_config_errors():
    with pytest.raises(ValueError, match="temporal_downsample"):
        VAEConfig(channel_mult=(1, 2), temporal_downsample=3)
    with pytest.raises(ValueError, match="fc_fold"):
        VAEConfig(fc_fold=0)

def test_a_missing_previous_stage_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at .*vae.pt"):
        train.main(["--stage=align", f"--out_dir={tmp_path}"])

def test_sample_end_to_end_writes_readable_videos(tiny_run, tmp_path, capsys):
    _, _, path = tiny_run
    sample.main(["an echocardiogram of a heart beating fast", f"--ckpt={path}", f"--out_dir={tmp_path}",
                 "--steps=3"])
    printed = capsys.readouterr().out
    mp4 = tmp_path / "an-echocardiogram-of-a-heart-beating-fast.mp4"
    assert str(mp4) in printed
    frames = data.read_video(str(mp4))
    assert frames.shape[0] == 5 and frames.shape[-1] == 3 and frames.dtype == np.uint8
    assert (tmp_path / "an-echocardiogram-of-a-heart-beating-fast.png").exists()
    assert (tmp_path / "an-echocardiogram-of-a-heart-beating-fast.gif").exists()

def test_sample_bad_inputs_are_one_line_errors(tiny_run, tmp_path):
    _, _, path = tiny_run
    for argv, msg in ((["x", f"--ckpt={tmp_path}/none.pt"], "no checkpoint at"),
                      ([f"--ckpt={path}", "--prompt= "], "empty prompt"),
                      (["--prompt=FILE:/no.txt", f"--ckpt={path}"], "--prompt=FILE:/no.txt: no such file"),
                      (["x", f"--ckpt={path}", "--num_frames=6"], "1\\+4k")):
        with pytest.raises(SystemExit, match=msg):
            sample.main(argv)

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
        (ev, "--what=everything"), (ev, "--words=paraphrase"), (ev, f"--ckpt={tmp_path}/none.pt")]
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
        train.main(VAE_RUN + [f"--data={csv_path}", "--vae_steps=1", "--num_workers=2", f"--out_dir={tmp_path}"])
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
