"""
medvid's benchmark and its metrics, as executable checks: every attribute a caption states can be measured
from the pixels, and evaluate.py's Frechet distance, VBench formulas, PSNR / SSIM and VAE fidelity match
closed forms and slow references. CPU only.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import data
import evaluate as E
import synthetic
from synthetic import (cell_drift, cell_mask, count_blobs, dominant_cycles, endo_motion, endo_polyp_pixels,
                       eye_iris, eye_side, mix_textures, mri_jaw_motion, texture_video, us_dark_fraction)

SEEDS = range(12)

# ----------------------------------------------------------------------------------------------
# Builders: rendered clips of one modality

def clips(modality, seeds=SEEDS, size=32):
    return [data.render_synthetic(modality, s, 17, size) for s in seeds]

# ----------------------------------------------------------------------------------------------
# The synthetic benchmark (synthetic.py): every attribute a caption states can be measured from pixels

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

def test_sensor_noise_off_renders_the_same_scene_without_the_noise_redrawn_every_frame():
    for m in data.MODALITIES:
        noisy, c, a = data.render_synthetic(m, 5, 17, 32)
        clean, c2, a2 = data.render_synthetic(m, 5, 17, 32, sensor_noise=False)
        assert (c, a) == (c2, a2)
        if m not in ("rt-mri", "cell"):  # no sensor noise in these three
            assert np.array_equal(noisy, clean)
            continue
        diff = noisy.astype(np.float32) - clean  # (F, S, S, 3): the noise, different in every frame
        assert 1 < np.abs(diff).mean() < 8 and np.abs(np.diff(diff, axis=0)).mean() > 1
        assert E.frame_motion(clean) < 0.7 * E.frame_motion(noisy)

def test_modalities_separable_by_simple_stats():
    # a 1-nearest-neighbour classifier on mean colour and coarse layout, fit on seeds 0..19 and scored
    # on seeds 100..119, must get every held-out clip right (1-NN, not centroids, because cell
    # microscopy has two looks: fluorescent and phase contrast)
    def feats(f):
        g = f.astype(np.float32) / 255
        S = f.shape[1]
        h, q = S // 2, slice(S // 4, 3 * S // 4)
        parts = [g, g[:, :h], g[:, h:], g[:, :, :h], g[:, :, h:], g[:, q, q]]
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
    assert {a["speed"] for _, _, a in cs} == {"slow", "fast"}
    assert {a["polyp"] for _, _, a in cs} == {True, False}

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
        first, last = count_blobs(m[0]), count_blobs(m[-1])
        assert first == a["count"] == last, (a, first, last)
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
        fast = any(w in c.lower() for w in "fast rapid quick swift darting rushing high-speed brisk".split())
        slow = any(w in c.lower() for w in "slow inching sluggish crawling low-speed drawn-out".split())
        assert fast == (a["speed"] == "fast") and slow == (a["speed"] == "slow"), c
    assert data.align_caption("rt-mri") == "This is a real-time MRI video."

def test_analysers_recover_every_attribute_of_rendered_clips():
    items = E.benchmark_set(60, 17, 32, 10 ** 9)
    acc = E.analyser_accuracy(items)
    assert set(acc) == {f"{m}/{k}" for m in data.MODALITIES for k in E.ATTR_VALUES[m]}
    assert min(acc.values()) == 1.0, acc

def test_confusion_tables_count_every_clip_once_and_hold_the_accuracy_on_their_diagonal():
    other = {"left": "right", "right": "left"}
    items = [(m, f, {**a, "side": other[a["side"]]} if m == "ophthalmic-surgery" else a)  # ask the wrong side
             for m, f, a in E.benchmark_set(20, 17, 32, 10 ** 9)]
    reads, acc = E.analyser_reads(items), E.analyser_accuracy(items)
    for k, rows in reads.items():
        m, attr = k.split("/")
        mine = [(f, a) for mm, f, a in items if mm == m]
        assert sum(n for row in rows.values() for n in row.values()) == len(mine) == 4
        slow = np.mean([str(E.ANALYSERS[m][attr](f)) == str(a[attr]) for f, a in mine])  # clip by clip
        assert acc[k] == pytest.approx(slow)
    assert all(set(row) == {other[asked]} for asked, row in reads["ophthalmic-surgery/side"].items())
    assert acc["ophthalmic-surgery/side"] == 0.0 and acc["ultrasound/rate"] == 1.0

def test_heldout_captions_state_attributes_in_words_never_used_in_training():
    rng = np.random.default_rng(0)
    for m in data.MODALITIES:
        for k, vals in synthetic.HELDOUT[m].items():
            train = data.CAPTIONS[m][k]
            assert (set(vals) == set(train)) if k != "noun" else True  # same attribute values
            held = vals if k == "noun" else [p for v in vals.values() for p in v]
            seen = train if k == "noun" else [p for v in train.values() for p in v]
            assert not set(held) & set(seen), (m, k)
    m, f, a = E.benchmark_set(1, 17, 32, 7)[0]
    c = synthetic.heldout_caption(m, a, rng)
    assert c.endswith(".") and c[0].isupper()
    for k, m in enumerate(data.MODALITIES):  # train_caption writes what render_synthetic writes, same stream
        _, caption, attrs = synthetic.render_synthetic(m, 5, 5, 8)
        assert synthetic.train_caption(m, attrs, np.random.default_rng([5, k, 1])) == caption

def test_texture_video():
    g = torch.Generator().manual_seed(0)
    v = texture_video(4, 5, (16, 24), g)  # (4, 5, 3, 16, 24)
    assert v.shape == (4, 5, 3, 16, 24) and v.min() >= -1 and v.max() <= 1
    assert torch.equal(v, texture_video(4, 5, (16, 24), torch.Generator().manual_seed(0)))  # reproducible
    # 1/f^beta: the power at the lowest non-zero frequencies dwarfs the power near Nyquist
    P = torch.fft.fft2(v - v.mean(dim=(-2, -1), keepdim=True)).abs().pow(2).mean(dim=(0, 1, 2))  # (16, 24)
    assert P[1, 0] + P[0, 1] > 10 * (P[8, 12] + P[8, 11])
    # the drift is a translation: frame 1 is frame 0 moved (cyclic sub-pixel shift), same statistics
    assert (v[:, 1].std() - v[:, 0].std()).abs() < 0.05
    x = torch.zeros(64, 1, 3, 8, 8)
    y = mix_textures(x, 0.5, torch.Generator().manual_seed(1))
    replaced = (y != 0).flatten(1).any(1).float().mean()
    assert 0.3 < replaced < 0.7 and torch.equal(mix_textures(x, 0.0), x)

# ----------------------------------------------------------------------------------------------
# evaluate.py: Frechet distance, VBench's temporal formulas, PSNR / SSIM, VAE fidelity

def test_frechet_distance_self_is_zero_and_matches_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) @ torch.randn(6, 6, generator=g)
    assert abs(E.fd_of(x, x)) < 1e-8
    # two Gaussians with commuting covariances (same eigenvectors): FD = |mu1-mu2|^2 + sum (sqrt(a) -
    # sqrt(b))^2
    Q = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=g))[0]
    a = torch.rand(6, dtype=torch.float64, generator=g) + 0.1
    b = torch.rand(6, dtype=torch.float64, generator=g) + 0.1
    mu1 = torch.randn(6, dtype=torch.float64, generator=g)
    mu2 = torch.randn(6, dtype=torch.float64, generator=g)
    fd = E.frechet_distance(mu1, Q @ torch.diag(a) @ Q.T, mu2, Q @ torch.diag(b) @ Q.T)
    closed_form = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert fd == pytest.approx(closed_form, rel=1e-9)
    # and a general (non-commuting) pair against the trace of the principal square root of s1 s2 by Newton
    s1 = torch.cov(torch.randn(6, 50, dtype=torch.float64, generator=g))
    s2 = torch.cov(torch.randn(6, 50, dtype=torch.float64, generator=g))
    Y, Z = s1 @ s2, torch.eye(6, dtype=torch.float64)
    for _ in range(60):  # Denman-Beavers iteration for sqrtm(s1 s2)
        Y, Z = (Y + torch.linalg.inv(Z)) / 2, (Z + torch.linalg.inv(Y)) / 2
    ref = float(s1.trace() + s2.trace() - 2 * Y.trace())
    assert E.frechet_distance(torch.zeros(6), s1, torch.zeros(6), s2) == pytest.approx(ref, rel=1e-7)

def test_temporal_metrics_follow_vbench_formulas():
    static = np.repeat(np.random.default_rng(0).integers(0, 255, (1, 16, 16, 3), dtype=np.uint8), 9, 0)
    assert E.temporal_flickering(static) == 1.0 and E.motion_smoothness_proxy(static) == 1.0
    blink = static.copy()
    blink[1::2] = 255 - blink[1::2]  # every other frame inverted: maximal flicker
    vbench = (255 - np.abs(blink[1:].astype(float) - blink[:-1]).mean()) / 255
    assert E.temporal_flickering(blink) == pytest.approx(vbench)
    assert E.temporal_flickering(blink) < 0.7
    # a linear fade is perfectly smooth for the linear-interpolation proxy
    fade = np.stack([np.full((8, 8, 3), 10 * t, np.uint8) for t in range(9)])
    assert E.motion_smoothness_proxy(fade) == 1.0 and E.motion_smoothness_proxy(blink) < 0.7
    from priors import horn_schunck
    y, x = np.mgrid[:32, :32]
    wave = [127 + 100 * np.sin((x - 2 * t) / 3.0) for t in range(17)]  # 2 px per frame to the right
    moving = np.repeat(np.stack(wave)[..., None], 3, -1).astype(np.uint8)  # (17, 32, 32, 3)
    assert E.dynamic_degree(moving, horn_schunck) and not E.dynamic_degree(static, horn_schunck)

def test_psnr_ssim_and_high_frequency_error():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    assert E.psnr(a, a) == E.PSNR_CAP == 100.0 and E.ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a.astype(int) + 5 * (2 * (rng.random(a.shape) > 0.5) - 1), 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert E.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / mse)) and E.ssim(a, b) < 1.0
    y, x = np.mgrid[:32, :32]
    base = np.full((3, 32, 32, 3), 128.0)
    lo = base + 20 * np.sin(2 * np.pi * x / 32)[None, ..., None]  # 1 cycle per clip: low frequency
    hi = base + 20 * np.sin(2 * np.pi * 14 * x / 32)[None, ..., None]  # 14 cycles: near Nyquist
    to8 = lambda v: np.round(v).astype(np.uint8)
    e_lo, e_hi = E.high_freq_error(to8(base), to8(lo)), E.high_freq_error(to8(base), to8(hi))
    assert e_hi > 100 * e_lo
    assert e_hi == pytest.approx(np.mean((to8(base) / 255 - to8(hi) / 255) ** 2), rel=0.05)
    # high-band power ratio: 1 for the original itself, ~0 once the fine detail is blurred away, ~2 with it
    # doubled
    detail = to8(base + 40 * np.sin(2 * np.pi * 14 * x / 32)[None, ..., None])
    blurred = to8(base + 40 * np.sin(2 * np.pi * 14 * x / 32)[None, ..., None] * 0.05)
    doubled = to8(base + 40 * np.sqrt(2) * np.sin(2 * np.pi * 14 * x / 32)[None, ..., None])
    assert E.high_freq_power_ratio(detail, detail) == pytest.approx(1.0)
    assert E.high_freq_power_ratio(detail, blurred) < 0.01
    assert E.high_freq_power_ratio(detail, doubled) == pytest.approx(2.0, rel=0.02)

def test_subject_consistency_and_i3d_convention(tmp_path):
    f = torch.randn(2, 5, 8)
    assert E.subject_consistency(f[:, :1].expand(2, 5, 8)) == pytest.approx(1.0)
    assert E.subject_consistency(f) < 0.8

    class FakeI3D(torch.nn.Module):  # StyleGAN-V's call signature; checks the layout it is given
        def forward(self, x, rescale: bool, resize: bool, return_features: bool):
            assert x.shape[1:] == (3, 16, 224, 224) and not rescale and not resize and return_features
            assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
            return x.mean((2, 3, 4)).repeat(1, 134)[:, :400]
    path = str(tmp_path / "i3d.pt")
    torch.jit.script(FakeI3D()).save(path)
    clips = [m[1] for m in E.benchmark_set(3, 17, 32, 0)]
    feats = E.i3d_features(torch.jit.load(path), clips, "cpu")
    assert feats.shape == (3, 400)

class IdentityCodec:  # the VAE interface with nothing lost
    def encode_latents(self, x, sample=False):
        return x
    def decode_latents(self, z):
        return z

def test_vae_fidelity_on_an_identity_autoencoder_is_perfect():
    clips = [m[1] for m in E.benchmark_set(2, 5, 16, 0)]
    r = E.vae_fidelity(IdentityCodec(), clips, "cpu")
    assert r["psnr"] == 100.0 and r["ssim"] == pytest.approx(1.0)
    assert r["hf_mse"] == 0.0 and r["hf_power"] == pytest.approx(1.0)
    # the bilinear reference codec: exact on a flat clip, and it keeps none of a 2-pixel checkerboard
    flat = np.full((5, 16, 16, 3), 90, np.uint8)
    y, x = np.mgrid[:16, :16]
    checker = (128 + 60 * ((x + y) % 2 * 2 - 1))[None, ..., None]  # (1, 16, 16, 1)
    checker = np.repeat(checker, 5, 0).repeat(3, -1).astype(np.uint8)
    r = E.vae_fidelity(E.BilinearCodec(4), [flat, checker], "cpu")
    assert r["per_clip_psnr"][0] == 100.0 and r["per_clip_psnr"][1] < 15 and r["hf_power"] < 1e-6

def test_word_use_is_zero_for_a_denoiser_deaf_to_text_and_swaps_exactly_one_attribute():
    seen = []

    def text_encoder(captions):  # records what it is asked to encode
        seen.append(list(captions))
        return torch.zeros(len(captions), 1, 4), torch.ones(len(captions), 1, dtype=torch.bool)

    class Deaf(torch.nn.Module):  # an eps-predictor that never looks at the caption
        cfg = SimpleNamespace(motion_scale=2.0, prediction="eps")

        def forward(self, x_t, t, text, mask):
            return 0.5 * x_t
    res = E.word_use(Deaf(), E.BilinearCodec(4), text_encoder, 3, 5, 16, "cpu", ts=(100, 600))
    for words in ("train_words", "heldout_words"):
        assert set(res[words]) == {f"{m}/{k}" for m in data.MODALITIES for k in synthetic.ATTR_VALUES[m]}
        assert all(v == 0.0 for v in res[words].values())
    # per modality and vocabulary: the clips' captions, then one list per attribute; each swapped caption
    # differs from its base caption and keeps the same noun and template (the same per-clip rng draws)
    k = 0
    for m in data.MODALITIES:
        for vocab in (synthetic.CAPTIONS[m], synthetic.HELDOUT[m]):
            base = seen[k]
            for swapped in seen[k + 1: k + 1 + len(synthetic.ATTR_VALUES[m])]:
                for a, b in zip(base, swapped):
                    assert a != b and a.split()[:2] == b.split()[:2], (a, b)
                    assert any(n in a.lower() and n in b.lower() for n in map(str.lower, vocab["noun"]))
            k += 1 + len(synthetic.ATTR_VALUES[m])
    assert k == len(seen)

def test_text_separation_is_one_for_an_encoder_that_knows_the_values_and_zero_for_a_blind_one():
    value_of = {}  # phrase -> (attribute, value): what an oracle text encoder would know
    for vocab in (synthetic.CAPTIONS, synthetic.HELDOUT):
        for m in data.MODALITIES:
            for key, values in synthetic.ATTR_VALUES[m].items():
                for v in values:
                    for p in vocab[m][key][v]:
                        value_of[p.format(count=4 if v == "few" else 12)] = (key, str(v))
    codes = sorted(set(value_of.values()))

    def oracle(phrases):  # one token per phrase: the one-hot code of its value, plus a little noise
        tokens = torch.zeros(len(phrases), 1, len(codes))
        for i, p in enumerate(phrases):
            tokens[i, 0, codes.index(value_of[p])] = 1.0
        return tokens + 0.01 * torch.rand(tokens.shape), torch.ones(len(phrases), 1, dtype=torch.bool)
    def blind(phrases):  # the same token for every phrase
        return torch.ones(len(phrases), 2, 3), torch.ones(len(phrases), 2, dtype=torch.bool)
    share, margin = E.text_separation(oracle)
    assert all(v == 1.0 for v in share.values()) and all(0.9 < v < 1.1 for v in margin.values())
    share, margin = E.text_separation(blind)  # every phrase equally near every value: nothing separates
    assert set(share) == {f"{m}/{k}" for m in data.MODALITIES for k in synthetic.ATTR_VALUES[m]}
    assert all(v == 0.0 for v in share.values()) and all(abs(v) < 1e-6 for v in margin.values())

def test_vae_ceiling_keeps_everything_through_identity_and_no_motion_through_a_still_codec():
    class Still(IdentityCodec):  # every frame replaced by the first: the look survives, the motion does not
        def decode_latents(self, z):
            return z[:, :1].expand_as(z)
    items = E.benchmark_set(10, 17, 32, 0)
    same = E.vae_ceiling(IdentityCodec(), items, "cpu", pool=4)
    assert same["round_trip"] == E.analyser_accuracy(items)
    assert same["motion_ratio"] == pytest.approx(1.0) and same["motion_ratio_pooled"] == pytest.approx(1.0)
    still = E.vae_ceiling(Still(), items, "cpu", pool=4)
    assert still["motion_ratio"] == 0.0 and still["round_trip"]["ultrasound/rate"] < 1.0
    # against the noise-free scene the identity codec keeps the noise too: its ratio is noisy / clean motion
    clean = sum(E.frame_motion(f) for _, f, _ in E.benchmark_set(10, 17, 32, 0, sensor_noise=False))
    noisy_over_clean = sum(E.frame_motion(f) for _, f, _ in items) / clean
    assert E.vae_ceiling(IdentityCodec(), items, "cpu", 4, clean)["motion_ratio_clean"] == pytest.approx(
        noisy_over_clean) and noisy_over_clean > 1.2
    # the latents' motion share through the identity codec: the pixels' own, by hand per modality
    for m in data.MODALITIES:
        xs = [data.to_tensor(f).double().numpy() for mm, f, _ in items if mm == m]  # (F, 3, S, S) each
        ref = sum(((x - x.mean(0)) ** 2).sum() for x in xs) / sum((x ** 2).sum() for x in xs)
        assert same["latent_motion_share"][m] == pytest.approx(ref, rel=1e-4)
    frozen = [(m, np.repeat(f[:1], len(f), 0), a) for m, f, a in items]  # still clips: no motion to share
    share = E.vae_ceiling(IdentityCodec(), frozen, "cpu", 4)["latent_motion_share"]
    assert all(v < 1e-9 for v in share.values())
    # the pooled motion is the slow reference: a 2 x 2 mean written out by hand
    f = items[0][1].astype(np.float32)
    pooled = (f[:, 0::2, 0::2] + f[:, 1::2, 0::2] + f[:, 0::2, 1::2] + f[:, 1::2, 1::2]) / 4
    assert E.frame_motion(items[0][1], 2) == pytest.approx(np.abs(np.diff(pooled, axis=0)).mean(), rel=1e-5)

def test_the_benchmark_classifier_depends_on_its_seed_alone(tmp_path):
    # the cached classifier is keyed by (frames, size, clips, seed): two trainings with the same seed must
    # give the same weights whatever drew from the global RNG before, and another seed other weights
    def train(folder, seed, draw):
        torch.rand(draw)  # what a model loaded before would take from the global RNG
        cfg = E.EvalConfig(classifier=str(tmp_path / folder), classifier_clips=10, seed=seed)
        return E.get_classifier(cfg, 5, 16, "cpu")[0].state_dict()
    a, b, c = train("a", 0, 1), train("b", 0, 1000), train("c", 1, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)

if __name__ == "__main__":
    raise SystemExit(pytest.main(["-q", __file__]))
