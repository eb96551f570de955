# tests for data.py (to be merged into test_all.py). Run: python -m pytest -q _test_data.py
import glob
import os
import warnings

import numpy as np
import pytest
import torch

import data

HERE = os.path.dirname(os.path.abspath(__file__))
REAL = next((p for p in [os.path.join(HERE, "shared/data/real_clips"), os.path.join(HERE, "data/real_clips"),
                         "/work/shared/data/real_clips"] if os.path.isdir(p)), None)
needs_real = pytest.mark.skipif(REAL is None, reason="real clips (shared/data/real_clips) not found")
SEEDS = range(12)

# -----------------------------------------------------------------------------
# small pixel measurements: if the benchmark says "fast", a script must be able to see it

def grid(S):
    c = (np.arange(S) + 0.5) / S * 2 - 1
    return np.meshgrid(c, c, indexing="ij")  # y, x in [-1, 1], (H, W) each

def dominant_cycles(frames):
    # cycles per clip of the strongest motion: the first principal component of the frames over time
    v = frames.reshape(len(frames), -1).astype(np.float64)     # (F, H*W*3)
    v = v - v.mean(0)
    u = np.linalg.eigh(np.einsum("ik,jk->ij", v, v))[1][:, -1]  # (F,) top eigenvector of the (F, F) Gram matrix
    return int(np.argmax(np.abs(np.fft.rfft(u))[1:]) + 1)

def count_blobs(mask):
    # 4-connected components by propagating the max label until nothing changes (no scipy needed)
    lab = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        p = np.pad(lab, 1)
        new = np.where(mask, np.maximum.reduce([lab, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]), 0)
        if (new == lab).all():
            return len(np.unique(lab)) - 1
        lab = new

def endo_motion(f):
    y, x = grid(f.shape[1])
    inside = x ** 2 + y ** 2 < 0.8
    return np.abs(np.diff(f.astype(np.float32), axis=0)).mean(-1)[:, inside].mean()

def endo_polyp_pixels(f):
    r, g = f[..., 0].astype(np.float32), f[..., 1].astype(np.float32)
    return ((g > 0.7 * r) & (r > 100)).sum(axis=(1, 2)).min()  # pale pixels in every frame

def us_dark_fraction(f):
    y, x = grid(f.shape[1])
    box = (np.abs(x) < 0.55) & (y > -0.45) & (y < 0.85)
    return (f.mean(-1)[:, box] < 25).mean()

def mri_jaw_motion(f):
    y, x = grid(f.shape[1])
    chin = (x < -0.2) & (y > 0.62) & (y < 0.95)
    return f.mean(-1).astype(np.float32).std(0)[chin].mean()

def cell_mask(f):
    g = f.astype(np.float32)
    fluo = np.median(g) < 60                                    # a black background
    return fluo, (g[..., 1] > 128) if fluo else (g.mean(-1) < 95)  # (F, H, W)

def cell_drift(f):
    _, m = cell_mask(f)
    y, x = grid(f.shape[1])
    cy = [(y * k).sum() / k.sum() for k in m]
    cx = [(x * k).sum() / k.sum() for k in m]
    dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
    return ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")

def eye_side(f):
    g = f.astype(np.float32)
    gray = (g.max(-1) - g.min(-1) < 16) & (g.mean(-1) > 90) & (g.mean(-1) < 215)  # (F, H, W) neutral metal
    W = f.shape[2]
    return "left" if gray[:, :, : W // 2].sum() > gray[:, :, W // 2:].sum() else "right"

def eye_iris(f):
    y, x = grid(f.shape[1])
    ring = (np.sqrt(x ** 2 + y ** 2) > 0.36) & (np.sqrt(x ** 2 + y ** 2) < 0.52)
    g = f.astype(np.float32)[:, ring]                           # (F, N, 3)
    return "blue" if (g[..., 2] - g[..., 0]).mean() > 0 else "brown"

def clips(modality, seeds=SEEDS, size=32):
    return [data.render_synthetic(modality, s, 17, size) for s in seeds]

# -----------------------------------------------------------------------------

def test_render_shapes_and_determinism():
    for m in data.MODALITIES:
        for size in (32, 64):
            f, c, a = data.render_synthetic(m, 3, 17, size)
            assert f.shape == (17, size, size, 3) and f.dtype == np.uint8
            assert isinstance(c, str) and a["modality"] == m
        f2, c2, a2 = data.render_synthetic(m, 3, 17, 64)
        assert np.array_equal(f, f2) and c == c2 and a == a2
        assert not np.array_equal(f, data.render_synthetic(m, 4, 17, 64)[0])
        assert data.render_synthetic(m, 3, 9, 32)[0].shape == (9, 32, 32, 3)
        # the same seed is the same scene, caption and attributes at any size and length
        assert data.render_synthetic(m, 3, 9, 32)[1:] == data.render_synthetic(m, 3, 17, 64)[1:]
        small, big = data.render_synthetic(m, 3, 17, 32)[0], f2.reshape(17, 32, 2, 32, 2, 3).mean((2, 4))
        assert np.abs(small - big).mean() < 12
    with pytest.raises(ValueError):
        data.render_synthetic("x-ray", 0)

def test_modalities_separable_by_simple_stats():
    # a 1-nearest-neighbour classifier on mean colour and coarse layout, fit on seeds 0..19 and scored
    # on seeds 100..119, must get every held-out clip right (1-NN, not centroids, because cell
    # microscopy has two looks: fluorescent and phase contrast)
    def feats(f):
        g = f.astype(np.float32) / 255
        S = f.shape[1]
        parts = [g, g[:, : S // 2], g[:, S // 2:], g[:, :, : S // 2], g[:, :, S // 2:], g[:, S // 4: 3 * S // 4, S // 4: 3 * S // 4]]
        return np.concatenate([p.mean((0, 1, 2)) for p in parts] + [g.std((0, 1, 2))])
    train = [(feats(f), m) for m in data.MODALITIES for f, _, _ in clips(m, range(20))]
    for m in data.MODALITIES:
        for f, _, _ in clips(m, range(100, 120)):
            x = feats(f)
            assert min(train, key=lambda t: np.linalg.norm(t[0] - x))[1] == m

def test_endoscopy_attributes_measurable():
    cs = clips("endoscopy", range(20))
    for f, _, a in cs:
        assert (endo_motion(f) > 16) == (a["speed"] == "fast"), (a, endo_motion(f))
        assert (endo_polyp_pixels(f) > 5) == a["polyp"], (a, endo_polyp_pixels(f))
    assert {a["speed"] for _, _, a in cs} == {"slow", "fast"} and {a["polyp"] for _, _, a in cs} == {True, False}

def test_ultrasound_attributes_measurable():
    cs = clips("ultrasound", range(20))
    for f, _, a in cs:
        assert dominant_cycles(f) == a["beats"], a
        assert (us_dark_fraction(f) > 0.2) == (a["chamber"] == "dilated"), (a, us_dark_fraction(f))
    assert {a["beats"] for _, _, a in cs} == {1, 2, 3}

def test_rt_mri_attributes_measurable():
    for f, _, a in clips("rt-mri", range(20)):
        assert dominant_cycles(f) == {"slow": 1, "fast": 3}[a["speed"]], a
        assert (mri_jaw_motion(f) > 8) == (a["articulator"] == "jaw"), (a, mri_jaw_motion(f))

def test_cell_attributes_measurable():
    for f, _, a in clips("cell", range(20)):
        fluo, m = cell_mask(f)
        assert fluo == (a["stain"] == "fluorescent")
        assert count_blobs(m[0]) == a["count"] == count_blobs(m[-1]), (a, count_blobs(m[0]), count_blobs(m[-1]))
        assert a["density"] == ("few" if a["count"] <= 5 else "many")
        assert cell_drift(f) == a["drift"], a

def test_ophthalmic_attributes_measurable():
    for f, _, a in clips("ophthalmic-surgery", range(20)):
        assert eye_side(f) == a["side"] and eye_iris(f) == a["iris"], a

def test_captions_state_attributes_and_vary():
    for m in data.MODALITIES:
        cs = clips(m, range(30))
        assert len({c for _, c, _ in cs}) >= 25                 # wording varies with the seed
        for _, c, a in cs:
            vocab = data.CAPTIONS[m]
            for key, phrases in vocab.items():
                if key == "noun":
                    assert any(n.lower() in c.lower() for n in phrases), c
                    continue
                said = [v for v, ps in phrases.items() if any(p.format(**a).lower() in c.lower() for p in ps)]
                assert said == [a[key]], (c, a, said)
        assert data.align_caption(m).startswith("This is a") and data.align_caption(m).endswith(" video.")
    for _, c, a in clips("endoscopy", range(20)) + clips("rt-mri", range(20)):
        fast = any(w in c.lower() for w in ("fast", "rapid", "quick"))
        assert fast == (a["speed"] == "fast") and ("slow" in c.lower()) == (a["speed"] == "slow"), c
    assert data.align_caption("rt-mri") == "This is a real-time MRI video."

# -----------------------------------------------------------------------------
# real videos

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

@needs_real
def test_csv_dataset_skips_bad_files(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good = [f"{REAL}/ultrasound_ocular_clarius_itkpocus.mp4", f"{REAL}/microscopy_phase_contrast_cells_laptrack_10f_uint8.npy"]
    rows = [(good[0], "an ocular ultrasound", "ultrasound"), (str(tmp_path / "bad.mp4"), "x", "cell"),
            (str(tmp_path / "missing.mp4"), "y", "cell"), (good[1], "cells, phase contrast", "cell")]
    csv_path = tmp_path / "clips.csv"
    csv_path.write_text("path,text,modality\n" + "".join(f'{p},"{t}",{m}\n' for p, t, m in rows))
    ds = data.VideoCSVDataset(str(csv_path), num_frames=8, size=32, frame_interval=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    msgs = [str(w.message) for w in caught if w.category is UserWarning]  # imageio-ffmpeg may add ResourceWarnings
    assert len(msgs) == 2 and "bad.mp4" in msgs[0] and "missing.mp4: file not found" in msgs[1]
    assert all("\n" not in m for m in msgs)                    # one line each
    for it in items:
        assert it["video"].shape == (8, 3, 32, 32) and it["video"].dtype == torch.float32
        assert -1 <= it["video"].min() and it["video"].max() <= 1 and it["video"].std() > 0.01
    assert ds.num_skipped == 2 and items[1]["modality"] == "cell"  # bad.mp4's turn went to the next good clip
    ds_align = data.VideoCSVDataset(str(csv_path), num_frames=4, size=16, align=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ds_align[0]["text"] == "This is an ultrasound video."
    with pytest.raises(ValueError, match="missing column"):
        (tmp_path / "nohead.csv").write_text("a,b\n1,2\n")
        data.VideoCSVDataset(str(tmp_path / "nohead.csv"))
    with pytest.raises(ValueError, match="not found"):
        data.VideoCSVDataset(str(tmp_path / "nope.csv"))
    (tmp_path / "allbad.csv").write_text(f"path,text,modality\nbad.mp4,x,cell\nmissing.mp4,y,cell\n")  # relative paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no video"):
            data.VideoCSVDataset(str(tmp_path / "allbad.csv"))[0]

def test_synthetic_dataset():
    ds = data.SyntheticVideoDataset(10, num_frames=5, size=16, seed_offset=7)
    it = ds[6]
    assert it["video"].shape == (5, 3, 16, 16) and it["modality"] == data.MODALITIES[1]
    assert it["text"] == data.render_synthetic(data.MODALITIES[1], 13, 5, 16)[1]
    assert -1 <= it["video"].min() and it["video"].max() <= 1
    assert data.SyntheticVideoDataset(10, 5, 16, 7, align=True)[6]["text"] == "This is an ultrasound video."
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["video"].shape == (5, 5, 3, 16, 16) and len(set(batch["modality"])) == 5

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
