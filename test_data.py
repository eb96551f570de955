"""
medvid's data plumbing, as executable checks: video formats and frame-exact streaming, CSV dialects and
folder trees, bad and short files, flips, modality balancing and sharding. CPU only.
"""
import glob
import os
import warnings

import imageio_ffmpeg
import numpy as np
import pytest
import torch

import data
import train
from conftest import HERE, _npy_corpus, moving, write_csv

REAL = os.path.join(HERE, "..", "shared", "data", "real_clips")
needs_real = pytest.mark.skipif(not os.path.isdir(REAL), reason=f"no real clips at {REAL}")

# ----------------------------------------------------------------------------------------------
# Builders: small videos in every format, and the slow whole-file reader

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
