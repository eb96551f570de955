"""
medvid's test suite: executable claims about the math and the plumbing. CPU only, a few minutes.

  python -m pytest -q test_all.py            # everything
  python -m pytest -q test_all.py -k ddim    # one topic

Read it as a list of statements: each test name says what is true, the body checks it on real values.
"""
import glob
import math
import os
import warnings

import numpy as np
import pytest
import torch

import data
import diffusion
import dit
import sample
import train
from mamba import (MambaConfig, MambaMixer, SpatialMamba, TemporalMamba, spiral_order, spiral_variants, ssm_scan,
                   ssm_scan_ref, temporal_order)
from vae import VAE_PRESETS, CausalVideoVAE, VAEConfig, smooth_blobs, valid_num_frames

REAL_CLIPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data", "real_clips")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_dit(**kw):
    cfg = dict(input_size=4, num_frames=3, in_channels=4, patch_size=2, hidden_size=32, depth=4, num_heads=4,
               text_dim=16, max_text_len=8)
    return dit.DiT(dit.DiTConfig(**{**cfg, **kw}))


def randomize_(model, std=0.05):
    """Give every parameter random values, so zero-initialised gates stop hiding bugs."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


# ==============================================================================================
# data.py: the synthetic benchmark and the video loaders

REAL = REAL_CLIPS if os.path.isdir(REAL_CLIPS) else None
needs_real = pytest.mark.skipif(REAL is None, reason=f"real clips not found at {REAL_CLIPS} (../shared beside the repo)")
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
    (tmp_path / "allbad.csv").write_text("path,text,modality\nbad.mp4,x,cell\nmissing.mp4,y,cell\n")  # relative paths
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


# ==============================================================================================
# vae.py

def tiny_vae(seed=0, **over):
    torch.manual_seed(seed)
    return CausalVideoVAE(VAEConfig(**{**VAE_PRESETS["tiny"], **over}))


def test_vae_shapes():
    model = tiny_vae()
    for F in (1, 5, 9, 17, 33):
        x = torch.rand(1, F, 3, 16, 16) * 2 - 1  # (B, F, C, H, W)
        mu, logvar = model.encode(x)
        k = (F - 1) // 4
        assert mu.shape == logvar.shape == (1, 1 + k, model.cfg.z_channels, 4, 4), (F, mu.shape)
        assert model.latent_shape(F, 16) == tuple(mu.shape[1:])
        assert model.decode(mu).shape == x.shape
        assert model.encode_latents(x).shape == mu.shape
        assert model.decode_latents(mu).shape == x.shape
    with pytest.raises(ValueError, match=r"num_frames must be 1\+4k"):
        model.encode(torch.zeros(1, 8, 3, 16, 16))
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(torch.zeros(1, 5, 3, 18, 16))
    assert valid_num_frames(17) == 17
    with pytest.raises(ValueError, match=r"e\.g\. 17"):
        valid_num_frames(8)


def test_vae_causal():
    model = tiny_vae().eval()
    x = torch.rand(1, 17, 3, 16, 16) * 2 - 1
    mu, _ = model.encode(x)
    # frames >= 13 feed only latent 4 (= frames 13..16); 9.. feed latents 3, 4
    for t, first_changed in [(16, 4), (13, 4), (9, 3), (1, 1)]:
        x2 = x.clone()
        x2[:, t:] = torch.rand_like(x2[:, t:])
        mu2, _ = model.encode(x2)
        assert torch.equal(mu[:, :first_changed], mu2[:, :first_changed]), t
        assert not torch.equal(mu[:, first_changed:], mu2[:, first_changed:]), t
    # decoder: latent j >= 1 feeds frames 4j-3 .. 4j and later, never earlier ones
    xh = model.decode(mu)
    for j in (4, 2, 1):
        mu2 = mu.clone()
        mu2[:, j:] += torch.randn_like(mu2[:, j:])
        xh2 = model.decode(mu2)
        assert torch.equal(xh[:, :4 * j - 3], xh2[:, :4 * j - 3]), j
        assert not torch.equal(xh[:, 4 * j - 3:], xh2[:, 4 * j - 3:]), j


def test_vae_kl():
    mu, logvar = torch.zeros(2, 3, 4, 2, 2), torch.zeros(2, 3, 4, 2, 2)
    assert CausalVideoVAE.kl(mu, logvar).item() == 0.0
    mu, logvar = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    # closed form per element: log(1/sigma) + (sigma^2 + mu^2) / 2 - 1/2
    sigma = torch.exp(0.5 * logvar)
    ref = (torch.log(1 / sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5).mean()
    kl = CausalVideoVAE.kl(mu, logvar)
    assert kl.item() > 0 and torch.allclose(kl, ref, atol=1e-6)
    # and against torch.distributions
    q, p = torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0)
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, p).mean(), atol=1e-6)


def test_vae_latent_stats():
    model = tiny_vae()
    with torch.no_grad():  # give the untrained latents a non-trivial offset and scale
        model.encoder.conv_out.conv.bias[:4] += torch.tensor([1.0, -2.0, 0.5, 3.0])
    batches = [smooth_blobs(4, 5, 16, seed=s) for s in range(3)]
    shift, scale = model.measure_latent_stats(batches)
    assert shift.shape == scale.shape == (model.cfg.z_channels,)
    z = torch.cat([model.encode_latents(x) for x in batches])  # (B, f, c, h, w)
    assert z.mean(dim=(0, 1, 3, 4)).abs().max() < 1e-4
    assert (z.std(dim=(0, 1, 3, 4), unbiased=False) - 1).abs().max() < 1e-3
    with torch.no_grad():
        x = batches[0]
        assert torch.allclose(model.decode_latents(model.encode_latents(x)),
                              model.decode(model.encode(x)[0]).clamp(-1, 1), atol=1e-5)
    # the buffers travel with the state_dict
    model2 = tiny_vae(seed=1)
    model2.load_state_dict(model.state_dict())
    assert torch.equal(model2.latent_shift, shift) and torch.equal(model2.latent_scale, scale)
    assert "latent_shift" in model.state_dict() and "latent_scale" in model.state_dict()


def test_vae_overfit():
    model = tiny_vae()
    x = smooth_blobs(2, 5, 8, seed=0)  # one tiny batch of smooth moving blobs, (2, 5, 3, 8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss, parts = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(parts["l1"].item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_vae_freq_comp_not_yet():
    with pytest.raises(AssertionError, match="later issue"):
        VAEConfig(freq_comp=True)


# ==============================================================================================
# diffusion.py

def test_schedule_is_float64_linear_and_posterior_variance_matches_eq7():
    s = diffusion.Schedule()
    assert s.betas.dtype == torch.float64 and s.num_steps == 1000
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    t = 500
    a, a_prev, b = s.alphas_cumprod[t], s.alphas_cumprod[t - 1], s.betas[t]
    assert torch.isclose(s.posterior_variance[t], (1 - a_prev) / (1 - a) * b)
    assert s.posterior_variance[0] == 0  # q(x_{-1}|x_0, x_0) is a point mass


def test_q_sample_closed_form_equals_iterated_noising_in_distribution():
    # Iterate x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (DDPM Eq. 2) and compare mean and variance
    # with the closed form x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (Eq. 4) at several t.
    s = diffusion.Schedule()
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n,), 1.5, dtype=torch.float64)
    x = x0.clone()
    checks = {10: None, 200: None, 999: None}
    for t in range(1000):
        x = (1 - s.betas[t]).sqrt() * x + s.betas[t].sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
        if t in checks:
            closed = diffusion.q_sample(s, x0, torch.full((n,), t), torch.randn(n, generator=g, dtype=torch.float64))
            a = s.alphas_cumprod[t].item()
            for samples in (x, closed):
                assert abs(samples.mean().item() - math.sqrt(a) * 1.5) < 5 * math.sqrt((1 - a) / n) + 1e-6
                assert abs(samples.var().item() - (1 - a)) < 0.01 * (1 - a) + 1e-7


def _gaussian_oracle(mu, s2, sched):
    """The exact eps-predictor for data x0 ~ N(mu, s2): E[eps | x_t] in closed form."""
    def model(x, t, text, mask, drop):
        a = sched.at("alphas_cumprod", t, x)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s2 + 1 - a)
    model.parameters = lambda: iter([torch.zeros(1, dtype=torch.float64)])
    return model


def test_ddim_eta1_single_step_equals_ddpm_posterior_step():
    s = diffusion.Schedule()
    g = torch.Generator().manual_seed(1)
    for t in (999, 500, 37, 1):
        x_t, eps, noise = (torch.randn(3, 2, 4, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
        tt = torch.full((3,), t)
        a = diffusion.ddpm_step(s, x_t, tt, eps, noise)
        b = diffusion.ddim_step(s, x_t, tt, tt - 1, eps, noise, eta=1.0)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_ddim_eta1_all_1000_steps_matches_ddpm_sampler():
    s = diffusion.Schedule()
    model = _gaussian_oracle(0.3, 0.5, s)
    text, mask = torch.zeros(4, 1, 1, dtype=torch.float64), torch.ones(4, 1, dtype=torch.bool)
    runs = [diffusion.sample(model, (4, 1, 1, 2, 2), text, mask, s, steps=1000, cfg_scale=1.0, method=m, eta=1.0,
                             generator=torch.Generator().manual_seed(0)) for m in ("ddpm", "ddim")]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-7, atol=1e-7)


def test_samplers_recover_the_data_distribution_with_the_exact_denoiser():
    # With the Bayes-optimal eps for x0 ~ N(0.3, 0.5), DDPM (ancestral) and DDIM (deterministic) must both
    # produce samples with that mean and variance. (DDIM is a first-order ODE solver: with 50 steps the
    # variance comes out ~0.44, with 20 ~0.38 -- discretisation error, not a bug; 1000 steps give ~0.48.)
    s = diffusion.Schedule()
    model = _gaussian_oracle(0.3, 0.5, s)
    n = 4000
    text, mask = torch.zeros(n, 1, 1, dtype=torch.float64), torch.ones(n, 1, dtype=torch.bool)
    for method, steps in (("ddpm", 1000), ("ddim", 1000)):
        x = diffusion.sample(model, (n, 1, 1, 1, 1), text, mask, s, steps=steps, cfg_scale=1.0, method=method,
                             generator=torch.Generator().manual_seed(2)).flatten()
        assert abs(x.mean().item() - 0.3) < 0.05, method
        assert abs(x.var().item() - 0.5) < 0.05, method


def test_cfg_scale_one_is_the_conditional_prediction_and_other_scales_extrapolate():
    model = randomize_(tiny_dit()).eval()
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 5, 16, generator=g)
    mask, t = torch.ones(2, 5, dtype=torch.bool), torch.tensor([10, 900])
    no, yes = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        cond, uncond = model(x, t, text, mask, no), model(x, t, text, mask, yes)
        torch.testing.assert_close(diffusion.guided_eps(model, x, t, text, mask, 1.0), cond)
        torch.testing.assert_close(diffusion.guided_eps(model, x, t, text, mask, 4.0), uncond + 4 * (cond - uncond),
                                   rtol=1e-5, atol=1e-5)
    assert (cond - uncond).abs().max() > 1e-3  # the null caption really is a different condition


# ==============================================================================================
# dit.py

@pytest.mark.parametrize("mixer", ["attn", "mamba", "hybrid"])
def test_dit_output_shape_and_zero_at_init(mixer):
    model = tiny_dit(mixer=mixer)
    x = torch.randn(2, 3, 4, 4, 4)
    out = model(x, torch.tensor([1, 999]), torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-Zero + zero final layer: the DiT starts as the zero function
    if mixer != "attn":  # the Mamba mixers keep their own init (DiT's xavier init must not overwrite it)
        mix = model.blocks[1].mixers[0].mixer
        assert abs(mix.out_proj.weight.std().item() - 0.02) < 0.005
        temporal = {id(p) for p in model.temporal_parameters()}
        assert id(mix.A_log) in temporal  # the align stage freezes temporal Mamba layers too


def test_dit_ignores_padding_tokens_and_dropped_captions():
    model = randomize_(tiny_dit()).eval()
    g = torch.Generator().manual_seed(3)
    x, text = torch.randn(1, 3, 4, 4, 4, generator=g), torch.randn(1, 4, 16, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        ref = model(x, t, text, torch.ones(1, 4, dtype=torch.bool))
        padded = torch.cat([text, torch.randn(1, 3, 16, generator=g)], 1)  # 3 garbage padding tokens
        mask = torch.tensor([[True] * 4 + [False] * 3])
        torch.testing.assert_close(model(x, t, padded, mask), ref, rtol=1e-5, atol=1e-6)
        # with drop=True the caption is replaced by the learned null caption: the text no longer matters
        d = torch.ones(1, dtype=torch.bool)
        torch.testing.assert_close(model(x, t, text, torch.ones(1, 4, dtype=torch.bool), d),
                                   model(x, t, torch.randn(1, 4, 16, generator=g), torch.ones(1, 4, dtype=torch.bool), d))


@pytest.mark.parametrize("mixer", ["attn", "hybrid"])
def test_dit_spatial_blocks_do_not_mix_frames_without_temporal_blocks(mixer):
    # Interleaving is the only path between frames: with the temporal blocks' gates at zero, changing
    # frame 2 must leave frames 0 and 1 of the output untouched (also with spiral Mamba inside frames).
    model = randomize_(tiny_dit(mixer=mixer)).eval()
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            if i % 2 == 1:
                blk.adaLN_modulation[-1].weight.zero_(), blk.adaLN_modulation[-1].bias.zero_()
        x = torch.randn(1, 3, 4, 4, 4)
        args = (torch.tensor([300]), torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool))
        a = model(x, *args)
        x2 = x.clone()
        x2[:, 2] += 1
        b = model(x2, *args)
    assert torch.equal(a[:, :2], b[:, :2]) and not torch.equal(a[:, 2], b[:, 2])


def test_dit_mamba_temporal_mixing_is_causal_in_time():
    # with mixer=mamba the only path between frames is the causal temporal scan: frame 2 cannot reach frame 1
    model = randomize_(tiny_dit(mixer="mamba"), std=0.1).eval()
    x = torch.randn(1, 3, 4, 4, 4)
    args = (torch.tensor([300]), torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool))
    with torch.no_grad():
        a = model(x, *args)
        x2 = x.clone()
        x2[:, 2] += 1
        b = model(x2, *args)
        x3 = x.clone()
        x3[:, 0] += 1
        c = model(x3, *args)
    assert torch.equal(a[:, :2], b[:, :2])
    assert (c[:, 1:] - a[:, 1:]).abs().max() > 1e-4  # but frame 0 does reach later frames


def test_sincos_embeddings_are_distinct_per_position():
    e = dit.sincos_2d(32, 4)
    assert e.shape == (16, 32)
    d = ((e[:, None] - e[None]) ** 2).sum(-1) + np.eye(16)
    assert d.min() > 1e-3


def test_a_short_training_run_on_one_repeated_batch_more_than_halves_the_loss():
    torch.manual_seed(0)
    model = tiny_dit(hidden_size=64)
    s = diffusion.Schedule()
    x0 = torch.randn(4, 3, 4, 4, 4)
    text, mask = torch.randn(4, 5, 16), torch.ones(4, 5, dtype=torch.bool)
    g = torch.Generator().manual_seed(9)  # a fixed evaluation set of (t, noise) pairs
    t_eval, n_eval = torch.randint(0, 1000, (64,), generator=g), torch.randn(64, *x0.shape[1:], generator=g)

    def eval_loss():
        with torch.no_grad():
            xb = x0.repeat(16, 1, 1, 1, 1)
            x_t = diffusion.q_sample(s, xb, t_eval, n_eval)
            return (model(x_t, t_eval, text.repeat(16, 1, 1), mask.repeat(16, 1)) - n_eval).pow(2).mean().item()

    before = eval_loss()
    opt, _, _ = train.configure_optimizer(model.parameters(), 2e-3, 0.0, "cpu")
    for _ in range(150):
        loss = diffusion.loss(model, x0, text, mask, s, p_uncond=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


# ==============================================================================================
# mamba.py

def _scan_inputs(L, b=2, H=3, P=4, N=5, dtype=torch.float32, dt_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, dtype=dtype)
    dt = dt_scale * torch.nn.functional.softplus(torch.randn(b, L, H, generator=g, dtype=dtype) - 1)
    A = -(1 + 15 * torch.rand(H, generator=g, dtype=dtype))  # A ~ -U(1, 16), the Mamba-2 init range
    B = torch.randn(b, L, N, generator=g, dtype=dtype)
    C = torch.randn(b, L, N, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, dt, A, B, C)]


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def _check_scan(L, dtype, tol, dt_scale=1.0, chunk=16):
    inputs = _scan_inputs(L, dtype=dtype, dt_scale=dt_scale)
    y_fast = ssm_scan(*inputs, chunk_size=chunk)
    y_ref = ssm_scan_ref(*inputs)
    assert y_fast.shape == y_ref.shape == inputs[0].shape
    assert torch.isfinite(y_fast).all()
    assert _rel_err(y_fast, y_ref) < tol, (L, dtype, _rel_err(y_fast, y_ref))
    g = torch.randn_like(y_ref)
    grads_fast = torch.autograd.grad(y_fast, inputs, g)
    grads_ref = torch.autograd.grad(y_ref, inputs, g)
    for name, gf, gr in zip('x dt A B C'.split(), grads_fast, grads_ref):
        assert torch.isfinite(gf).all(), (L, name)
        assert _rel_err(gf, gr) < tol, (L, dtype, name, _rel_err(gf, gr))


def test_scan_matches_loop():
    for L in (1, 7, 16, 64, 100):  # shorter than, equal to, multiple of, and ragged w.r.t. chunk 16
        _check_scan(L, torch.float32, 1e-5)
        _check_scan(L, torch.float64, 1e-10)


def test_scan_stable_with_strong_decay():
    # dt ~ 10 * softplus(.) and |A| up to 16: the log-decay over the sequence is in the thousands.
    # A naive exp(-cumsum) scan overflows here; the segsum form must stay finite and exact.
    inputs = _scan_inputs(100, dt_scale=10.0)
    x, dt, A, B, C = inputs
    assert (dt * A).sum(1).max() < -200
    _check_scan(100, torch.float32, 1e-5, dt_scale=10.0)
    _check_scan(100, torch.float32, 1e-5, dt_scale=10.0, chunk=64)


def _is_spiral(walk, h, w):
    assert sorted(walk.tolist()) == list(range(h * w)), "not a permutation"
    r, c = walk // w, walk % w
    dist = (r[1:] - r[:-1]).abs() + (c[1:] - c[:-1]).abs()
    return bool((dist == 1).all())


def test_spiral_orders():
    for h, w in [(1, 1), (1, 5), (4, 4), (3, 5), (6, 8), (5, 2)]:
        walks = spiral_variants(h, w)
        assert len(walks) == 8
        assert torch.equal(walks[0], spiral_order(h, w))
        assert torch.equal(walks[4], spiral_order(h, w, clockwise=False))
        for walk in walks:
            assert _is_spiral(walk, h, w) and _is_spiral(walk.flip(0), h, w), (h, w, walk)
        if h > 1 and w > 1:
            assert len({tuple(wk.tolist()) for wk in walks}) == 8  # 4 corners x 2 directions
    assert spiral_order(3, 3).tolist() == [0, 1, 2, 5, 8, 7, 6, 3, 4]
    assert spiral_order(3, 3, clockwise=False).tolist() == [0, 3, 6, 7, 8, 5, 2, 1, 4]


def test_temporal_order():
    f, n = 3, 4
    tokens = torch.arange(f * n)  # frame-major: t * n + p
    seq = tokens[temporal_order(f, n)].view(n, f)  # (n, f) each row one position through time
    assert torch.equal(seq, torch.arange(f * n).view(f, n).t())


def test_mixer_fast_equals_ref():
    torch.manual_seed(0)
    cfg = dict(d_model=32, d_state=8, headdim=16, chunk_size=16)
    fast = MambaMixer(MambaConfig(**cfg))
    ref = MambaMixer(MambaConfig(**cfg, use_ref_scan=True))
    ref.load_state_dict(fast.state_dict())
    for L in (5, 16, 37):  # float32 only: depthwise conv1d in float64 is very slow on CPU
        u = torch.randn(2, L, 32)
        assert torch.allclose(fast(u), ref(u), atol=1e-5)


def test_mixer_autocast_bf16():
    torch.manual_seed(0)
    m = MambaMixer(MambaConfig(d_model=32, d_state=8, headdim=16, chunk_size=16))
    u = torch.randn(2, 20, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = m(u)
    assert torch.isfinite(y).all() and (y.float() - m(u)).abs().max() < 0.05


def test_temporal_mamba_causal():
    torch.manual_seed(0)
    layer = TemporalMamba(32, d_state=8, headdim=16, chunk_size=4)
    x = torch.randn(6, 10, 32)  # (B*h*w, F, D)
    y = layer(x)
    assert y.shape == x.shape and y.abs().max() > 0
    for t in (1, 4, 9):
        x2 = x.clone()
        x2[:, t] += torch.randn(6, 32)
        y2 = layer(x2)
        assert (y2[:, :t] - y[:, :t]).abs().max() <= 1e-6, t
        assert (y2[:, t] - y[:, t]).abs().max() > 1e-4  # and frame t itself does see the change


def test_spatial_mamba_restores_order():
    torch.manual_seed(0)
    h, w = 3, 5
    for layer_idx in (0, 5):
        layer = SpatialMamba(32, grid=(h, w), layer_idx=layer_idx, d_state=8, headdim=16, chunk_size=8)
        x = torch.randn(4, h * w, 32)  # (B*F, L, D)
        y = layer(x)
        assert y.shape == x.shape
        # manual: gather along the walk, run both directions, scatter each output to its token
        walk = spiral_variants(h, w)[layer_idx % 8]
        seq = torch.stack([x[:, i] for i in walk.tolist()], 1)  # (4, L, D)
        fwd, bwd = layer.mixer(seq), layer.mixer(seq.flip(1)).flip(1)
        expect = torch.empty_like(x)
        for k, i in enumerate(walk.tolist()):
            expect[:, i] = 0.5 * (fwd[:, k] + bwd[:, k])
        assert torch.allclose(y, expect, atol=1e-6)
    assert 'walk' not in layer.state_dict()  # buffers are rebuilt, not saved


if __name__ == '__main__':
    for name, fn in list(globals().items()):
        if name.startswith('test_'):
            fn()
            print('ok', name)


# ==============================================================================================
# text encoder: the real from_pretrained path, on tiny models saved by the test

def _tiny_bert_folder(path, vocab_words=("hello", "heart", "cell", "video", "fast", "slow")):
    from transformers import BertConfig, BertModel, BertTokenizer
    os.makedirs(path, exist_ok=True)
    vocab = os.path.join(path, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *vocab_words]) + "\n")
    BertTokenizer(vocab).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=16, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(path)
    return path


def test_text_encoder_loads_with_from_pretrained_and_masks_padding(tmp_path):
    enc = dit.load_text_encoder(_tiny_bert_folder(str(tmp_path / "bert")))
    assert enc.dim == 24
    emb, mask = enc(["heart video", "cell video fast slow hello"])
    assert emb.shape == (2, 7, 24) and mask.tolist()[0] == [True] * 4 + [False] * 3  # [CLS] heart video [SEP]
    assert not emb.requires_grad and all(not p.requires_grad for p in enc.parameters())
    alone, _ = dit.load_text_encoder(str(tmp_path / "bert"))(["heart video"])
    torch.testing.assert_close(alone[0], emb[0, :4])  # a caption's tokens do not depend on its batch-mates
    assert emb[0, 4:].abs().sum() == 0


def test_t5_folder_loads_its_encoder_only(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration
    path = _tiny_bert_folder(str(tmp_path / "t5"))  # a word-piece tokenizer is enough for the test
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


def test_the_offline_minilm_encoder_puts_paraphrases_closer_than_other_modalities():
    enc = dit.load_text_encoder("minilm")
    emb, mask = enc(["an echocardiogram of a heart beating fast", "cardiac ultrasound with a rapid heartbeat",
                     "phase contrast microscopy of a few drifting cells"])
    pooled = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0], pooled[1], dim=0) > cos(pooled[0], pooled[2], dim=0)


# ==============================================================================================
# train.py: config, checkpoints, stages, resume

def test_parse_args_types_presets_and_errors():
    cfg = train.parse_args(train.TrainConfig, ["--lr=1e-3", "--batch_size=4", "--stage=align", "--resume=True"], train.PRESETS)
    assert (cfg.lr, cfg.batch_size, cfg.stage, cfg.resume) == (1e-3, 4, "align", True)
    assert train.parse_args(train.TrainConfig, ["--preset=small"], train.PRESETS).size == 128
    for bad in (["--nope=1"], ["--batch_size=four"], ["--batch_size=1.5"], ["stage"], ["--preset=huge"]):
        with pytest.raises(SystemExit):
            train.parse_args(train.TrainConfig, bad, train.PRESETS)


def test_checkpoint_round_trip_is_bit_identical_and_atomic(tmp_path):
    model = randomize_(tiny_dit())
    path = str(tmp_path / "ck.pt")
    train.save_checkpoint(dict(model=model.state_dict(), step=7, model_args={"a": 1}), path)
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temp file left behind
    back = train.load_checkpoint(path)
    assert back["step"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(v, back["model"][k]), k
    with pytest.raises(SystemExit, match="no checkpoint at"):
        train.load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="corrupt"):
        train.load_checkpoint(str(tmp_path / "junk.pt"))


# the smallest real pipeline: 5 frames at 16 px (2 latent frames of 4x4), a 2-block DiT
TINY_RUN = ["--size=16", "--num_frames=5", "--batch_size=2", "--vae_batch_size=2", "--num_clips=40", "--num_workers=0", "--log_every=1",
            "--preview_steps=2", "--warmup_steps=1", "--text_encoder={bert}", "--vae_steps=2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """vae -> align -> instruct, 2-3 steps each, through train.main: the checkpoints the tests below inspect."""
    root = tmp_path_factory.mktemp("run")
    bert = _tiny_bert_folder(str(root / "bert"))
    args = [a.format(bert=bert) for a in TINY_RUN] + [f"--out_dir={root / 'out'}", "--align_steps=3", "--instruct_steps=2"]
    path = train.main(args)
    return root, bert, args, path


def test_full_chain_writes_checkpoints_and_previews(tiny_run):
    root, _, _, path = tiny_run
    assert path == str(root / "out" / "instruct.pt")
    for stage in ("vae", "align", "instruct"):
        ck = train.load_checkpoint(str(root / "out" / f"{stage}.pt"))
        assert ck["stage"] == stage and ck["step"] == {"vae": 2, "align": 3, "instruct": 2}[stage]
        assert os.path.getsize(root / "out" / "previews" / f"{stage}.gif") > 0
    ck = train.load_checkpoint(path)
    assert set(ck) >= {"model", "ema", "optimizer", "model_args", "step", "config", "vae", "vae_args"}
    assert ck["model_args"]["num_frames"] == 2 and ck["model_args"]["input_size"] == 4


def test_align_stage_leaves_temporal_parameters_unchanged(tiny_run, tmp_path):
    # start an align run from the finished align checkpoint: after its optimizer steps, every temporal-block
    # tensor is bit-identical to the start, and the spatial ones have moved
    root, bert, args, _ = tiny_run
    start = train.load_checkpoint(str(root / "out" / "align.pt"))
    args = [a for a in args if not a.startswith("--out_dir")] + [f"--out_dir={tmp_path}", "--stage=align",
                                                                   f"--init_from={root / 'out' / 'align.pt'}"]
    end = train.load_checkpoint(train.main(args))
    temporal = [k for k in start["model"] if k.startswith("blocks.") and int(k.split(".")[1]) % 2 == 1]
    spatial = [k for k in start["model"] if k.startswith("blocks.") and int(k.split(".")[1]) % 2 == 0]
    assert temporal and all(torch.equal(start["model"][k], end["model"][k]) for k in temporal)
    assert any(not torch.equal(start["model"][k], end["model"][k]) for k in spatial)
    # frozen tensors are not in the optimizer at all: its state covers only the trainable ones
    n_trainable = sum(start["model"][k].numel() for k in start["model"]) - sum(start["model"][k].numel() for k in temporal)
    n_state = sum(s["exp_avg"].numel() for s in end["optimizer"]["state"].values())
    assert n_state == n_trainable


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(tiny_run, tmp_path):
    root, bert, args, _ = tiny_run
    base = [a for a in args if not a.startswith("--out_dir") and not a.startswith("--instruct_steps")]
    base += ["--stage=instruct", f"--init_from={root / 'out' / 'align.pt'}", "--instruct_steps=4"]
    straight = train.load_checkpoint(train.main(base + [f"--out_dir={tmp_path / 'a'}"]))
    assert train.main(base + [f"--out_dir={tmp_path / 'b'}", "--max_run_steps=2"]) is None  # stopped at step 2
    assert train.load_checkpoint(str(tmp_path / "b" / "instruct.pt"))["step"] == 2
    resumed = train.load_checkpoint(train.main(base + [f"--out_dir={tmp_path / 'b'}", "--resume=True"]))
    assert resumed["step"] == 4
    for key in ("model", "ema"):
        for k, v in straight[key].items():
            assert torch.equal(v, resumed[key][k]), (key, k)


def test_a_missing_previous_stage_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at .*vae.pt"):
        train.main(["--stage=align", f"--out_dir={tmp_path}"])


# ==============================================================================================
# sample.py

def test_sample_end_to_end_writes_readable_videos(tiny_run, tmp_path, capsys):
    root, _, _, path = tiny_run
    sample.main(["an echocardiogram of a heart beating fast", f"--ckpt={path}", f"--out_dir={tmp_path}", "--steps=3"])
    printed = capsys.readouterr().out
    mp4 = tmp_path / "an-echocardiogram-of-a-heart-beating-fast.mp4"
    assert str(mp4) in printed
    frames = data.read_video(str(mp4))
    assert frames.shape[0] == 5 and frames.shape[-1] == 3 and frames.dtype == np.uint8
    assert (tmp_path / "an-echocardiogram-of-a-heart-beating-fast.png").exists()
    assert (tmp_path / "an-echocardiogram-of-a-heart-beating-fast.gif").exists()


def test_sample_bad_inputs_are_one_line_errors(tiny_run, tmp_path):
    _, _, _, path = tiny_run
    for argv, msg in ((["x", f"--ckpt={tmp_path}/none.pt"], "no checkpoint at"), ([f"--ckpt={path}", "--prompt= "], "empty prompt"),
                      (["--prompt=FILE:/nonexistent.txt", f"--ckpt={path}"], "prompt file"),
                      (["x", f"--ckpt={path}", "--num_frames=6"], "1\\+4k")):
        with pytest.raises(SystemExit, match=msg):
            sample.main(argv)
