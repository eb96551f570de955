"""
medvid's claims about the priors, as executable checks: Endora's correlation prior matches a slow reference,
Horn-Schunck recovers known motion, the tiny teachers load frozen, and the prior losses reach only the DiT
and their heads. CPU only.
"""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import diffusion
import dit
import priors
from conftest import TINY, dit_cfg, dit_inputs, randomize_, save_tiny_teacher

# ----------------------------------------------------------------------------------------------
# Builders: smooth periodic images and their exact translations

def texture(n, H, sigma=3.0, seed=0):
    """A smooth periodic random image in [0, 1], (n, 1, H, H): low-pass filtered noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, H, H, generator=g, dtype=torch.float64)
    fy, fx = torch.fft.fftfreq(H).view(-1, 1), torch.fft.fftfreq(H).view(1, -1)
    lowpass = torch.exp(-(fx ** 2 + fy ** 2) * (2 * math.pi * sigma) ** 2 / 2)
    x = torch.fft.ifft2(torch.fft.fft2(x) * lowpass).real
    x = (x - x.amin((2, 3), keepdim=True)) / (x.amax((2, 3), keepdim=True) - x.amin((2, 3), keepdim=True))
    return x.float()

def fourier_shift(x, dx, dy):
    """Exact sub-pixel translation of a periodic image: the content moves by (+dx, +dy) pixels."""
    H = x.shape[-1]
    fy, fx = torch.fft.fftfreq(H).view(-1, 1), torch.fft.fftfreq(H).view(1, -1)
    ramp = torch.exp(-2j * math.pi * (fx * dx + fy * dy))
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * ramp).real.float()

# ----------------------------------------------------------------------------------------------
# priors.py: Endora's correlation prior, Horn-Schunck flow, MedSora's flow alignment

def test_pearson_equals_corrcoef_and_is_invariant_to_positive_affine_maps():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 40, generator=g, dtype=torch.float64)
    b = torch.randn(6, 40, generator=g, dtype=torch.float64)
    b = b + 0.7 * a  # some real correlation
    # the slow reference
    ref = torch.stack([torch.corrcoef(torch.stack([a[i], b[i]]))[0, 1] for i in range(6)])
    torch.testing.assert_close(priors.pearson(a, b), ref)
    # 1 channel: 1 - r
    torch.testing.assert_close(priors.corr_loss(a[..., None], b[..., None]), 1 - ref.float())
    torch.testing.assert_close(priors.pearson(3.5 * a - 2, b), ref)
    torch.testing.assert_close(priors.pearson(a, 0.01 * b + 100), ref)
    torch.testing.assert_close(priors.pearson(-a, b), -ref)  # a negative scale flips the sign
    # Endora's channel mean first: loss on (S, D) features is 1 - r of the per-token channel means
    x, y = torch.randn(3, 40, 8, generator=g), torch.randn(3, 40, 5, generator=g)
    ref2 = torch.stack([torch.corrcoef(torch.stack([x[i].mean(-1), y[i].mean(-1)]))[0, 1] for i in range(3)])
    torch.testing.assert_close(priors.corr_loss(x, y), 1 - ref2, atol=1e-5, rtol=1e-5)

def endora_reference_corr_loss(conv, teacher, student):
    """Endora's training_losses as coded, written out slowly: layers concatenated on the batch axis, the
    shared conv, channel means, a parameter-free LayerNorm over tokens, then r = cov / (std std) row by
    row."""
    B, f, n, G = teacher.shape[:4]
    rows_a, rows_f = [], []
    for k in range(n):
        for b in range(B):
            for j in range(f):
                a = conv(teacher[b, j, k].permute(2, 0, 1)[None])[0]  # (D, g, g)
                rows_a.append(a.flatten(1).mean(0))  # (S,)
                rows_f.append(student[k][b, j].mean(-1))  # (S,)
    a = F.layer_norm(torch.stack(rows_a), (len(rows_a[0]),))
    f_ = F.layer_norm(torch.stack(rows_f), (len(rows_f[0]),))
    r = []
    for i in range(len(a)):
        ac, fc = a[i] - a[i].mean(), f_[i] - f_[i].mean()
        r.append((ac * fc).sum() / (ac.norm() * fc.norm()))
    return (1 - torch.stack(r)).mean()

def test_corr_head_matches_a_slow_endora_reference():
    torch.manual_seed(0)
    heads = priors.PriorHeads(hidden_size=16, depth=8, grid=2, dino_dim=12, dino_mode="corr",
                              dino_grid_mult=2)
    conv = heads.dino_proj
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (2, 2) and conv.stride == (2, 2)
    assert heads.dino_taps == [0, 2, 4, 4] and heads.taps == (0, 2, 4)  # pairs round((l+1) 4 / 14) - 1 of 4
    B, f = 2, 3
    teacher = torch.randn(B, f, 4, 4, 4, 12)  # (B, f, n, m*g, m*g, Dt)
    feats = [torch.randn(B, f, 4, 16) for _ in heads.taps]  # (B, f, S, D) per tapped block
    got = heads(feats, dict(dino=teacher))["dino"]
    at = dict(zip(heads.taps, feats))
    ref = endora_reference_corr_loss(heads.dino_proj, teacher, [at[i] for i in heads.dino_taps])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)

def test_student_and_teacher_layers_follow_endoras_relative_depths():
    assert priors.parse_layers("2,5,8,11", 12)[1] == [2, 5, 8, 11]  # ViT-S/8 as in Endora
    # a 24-block teacher: same relative depths
    assert priors.parse_layers("2,5,8,11", 24)[1] == [5, 11, 17, 23]
    h = priors.PriorHeads(hidden_size=8, depth=28, grid=2, dino_dim=4)
    assert h.dino_taps == [4, 10, 16, 22]  # Endora XL/2: spatial blocks of pairs 2, 5, 8, 11
    # temporal, 10/28 of depth
    assert priors.PriorHeads(hidden_size=8, depth=28, grid=2, flow="hs").flow_tap == 9
    assert priors.PriorHeads(hidden_size=8, depth=12, grid=2, flow="hs").flow_tap == 3
    with pytest.raises(SystemExit, match="dino_layers"):
        priors.parse_layers("2,12", 12)

@pytest.mark.parametrize("H,dx,dy,tol", [(32, 0.6, -0.4, 0.06), (64, 1.3, -0.7, 0.06), (64, 3.2, 2.5, 0.1)])
def test_horn_schunck_recovers_a_known_translation(H, dx, dy, tol):
    I1 = texture(2, H)
    flow = priors.horn_schunck(I1, fourier_shift(I1, dx, dy))  # (2, 2, H, H)
    # content that left the frame (periodic wrap) is an occlusion: judge the interior
    m = 14 if H == 64 else 6
    err = (flow[:, :, m:-m, m:-m] - torch.tensor([dx, dy]).view(1, 2, 1, 1)).norm(dim=1)  # endpoint error, px
    assert err.mean() < tol, err.mean()

def test_horn_schunck_recovers_a_rotation():
    H, th = 64, math.radians(3)
    I1 = texture(1, H, sigma=2.5, seed=3)
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(H).float(), indexing="ij")
    c = (H - 1) / 2
    px, py = xs - c, ys - c
    # I2(p) = I1(R^-1 (p - c) + c): the content turns by th about the centre
    cos, sin = math.cos(th), math.sin(th)
    src = torch.stack([cos * px + sin * py + c, -sin * px + cos * py + c], -1)
    I2 = F.grid_sample(I1, (src * 2 / (H - 1) - 1)[None], mode="bicubic", align_corners=True,
                       padding_mode="border")
    true = torch.stack([cos * px - sin * py + c - xs, sin * px + cos * py + c - ys])  # (2, H, W)
    flow = priors.horn_schunck(I1, I2)[0]
    m = 10
    err = (flow - true).norm(dim=0)[m:-m, m:-m].mean()
    assert err < 0.1 * true.norm(dim=0)[m:-m, m:-m].mean(), err  # < 10 % of the mean speed (measured ~4 %)

def test_latent_flow_is_pixels_per_latent_frame_and_keeps_time():
    assert priors.latent_frame_index(17, 5) == [0, 4, 8, 12, 16] and priors.latent_frame_index(1, 1) == [0]
    base = texture(1, 64, seed=1)[0, 0]
    # 9 frames, (0.5, -0.25) px/frame
    frames = torch.stack([fourier_shift(base, 0.5 * k, -0.25 * k) for k in range(9)])
    video = (frames * 2 - 1)[None, :, None].expand(1, 9, 3, 64, 64)  # (1, F, 3, H, W) grey video in [-1, 1]
    lat = priors.latent_flow(video, 3)  # (1, 3, 2, H, W)
    mean = lat[0, :, :, 12:-12, 12:-12].mean((2, 3))  # (3, 2)
    # 4 frames per latent (~0.09 measured)
    torch.testing.assert_close(mean, torch.tensor([[2.0, -1.0]] * 3), atol=0.12, rtol=0)
    with pytest.raises(ValueError, match="2 latent frames"):
        priors.latent_flow(video[:, :1], 1)

def test_flow_colour_image_white_when_still_and_red_to_the_right():
    flow = torch.zeros(1, 2, 4, 4)
    flow[0, 0, 0, 0] = 3.0  # one pixel moving right at the frame's top speed
    rgb = priors.flow_to_rgb(flow)  # (1, 3, 4, 4)
    assert torch.allclose(rgb[0, :, 1:, 1:], torch.ones(3, 3, 3))  # still = white (Middlebury convention)
    r, g, b = rgb[0, :, 0, 0]
    assert r > 0.99 and g < 0.01 and b < 0.2  # rightwards = red

@pytest.mark.parametrize("kind", ["vit", "dinov2", "dinov2_with_registers"])
def test_tiny_teacher_loads_frozen_and_drops_cls_and_registers(tmp_path, kind):
    teacher = priors.load_dino(save_tiny_teacher(tmp_path / kind, kind))
    teacher.train()  # must not switch the teacher to train mode
    assert not teacher.model.training and all(not p.requires_grad for p in teacher.parameters())
    assert teacher.layers == [0, 1, 2, 3] and teacher.skip == (3 if kind == "dinov2_with_registers" else 1)
    imgs = torch.rand(2, 3, 24, 24) * 2 - 1
    feats = teacher(imgs, 6)  # 6 x 6 tokens at 24 px (patch 4)
    assert feats.shape == (2, 4, 6, 6, 24)
    # the last chosen block is the final block: its LayerNormed tokens are last_hidden_state minus
    # CLS/registers
    x = ((imgs + 1) / 2 - teacher.mean) / teacher.std
    last = teacher.model(pixel_values=x, **teacher.interp).last_hidden_state[:, teacher.skip:]  # (2, 36, 24)
    torch.testing.assert_close(feats[:, -1].flatten(1, 2), last, atol=1e-5, rtol=1e-5)

def prior_cfg(**kw):
    base = dict(dino="none", dino_mode="corr", dino_weight=0.5, dino_layers="2,5,8,11", dino_grid_mult=2,
                flow="none", flow_weight=0.1, prior_stages="align,instruct")
    return SimpleNamespace(**{**base, **kw})

@pytest.mark.parametrize("mode,flow", [("corr", "hs"), ("token", "dino")])
def test_prior_losses_backprop_into_the_dit_and_heads_only(tmp_path, mode, flow):
    cfg = dit_cfg(**TINY, input_size=8)  # 16 px video at x2 VAE stand-in: 4 x 4 tokens, 3 latents
    model = dit.DiT(cfg)
    pc = prior_cfg(dino=save_tiny_teacher(tmp_path / "vit", "vit"), dino_mode=mode, flow=flow)
    heads, teacher = priors.build_priors(pc, cfg, "cpu", "instruct")
    # (B, F, 3, H, W)
    video = (texture(2 * 9, 16).view(2, 9, 1, 16, 16).expand(2, 9, 3, 16, 16) * 2 - 1).contiguous()
    x0, t, text, mask = dit_inputs(cfg)
    targets = priors.prior_targets(heads, teacher, video, cfg.num_frames)
    assert targets["dino"].shape == (2, 3, 4, 8, 8, 24)  # (B, f, n, m*g, m*g, Dt)
    assert targets["flow"].shape == ((2, 3, 16, 3) if flow == "hs" else (2, 3, 16, 24))
    torch.manual_seed(0)
    loss, parts = diffusion.loss(model, x0, text, mask, diffusion.Schedule(), return_parts=True,
                                 taps=heads.taps)
    losses = heads(parts["feats"], targets)
    assert set(losses) == {"dino", "flow"} and all(0 < v < 2.5 for v in losses.values())
    (losses["dino"] + losses["flow"]).backward()  # the priors alone: where do their gradients go?
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    assert model.x_embedder.weight.grad.abs().sum() > 0  # the DiT learns from the priors
    assert model.final_layer.linear.weight.grad is None  # nothing after the last tap is touched
    # the diffusion loss is the same whether or not features were tapped (same seed, same draws)
    torch.manual_seed(0)
    assert torch.equal(loss, diffusion.loss(model, x0, text, mask, diffusion.Schedule()))

def test_flow_loss_is_the_mean_cosine_distance_per_token():
    torch.manual_seed(0)
    feats, tgt = [torch.randn(3, 2, 4, 8)], dict(flow=torch.randn(3, 2, 4, 3))
    heads = priors.PriorHeads(hidden_size=8, depth=2, grid=2, flow="hs")
    per = priors.token_cosine_loss(heads.flow_proj(feats[0]), tgt["flow"]).mean(1)  # (B,)
    torch.testing.assert_close(heads(feats, tgt)["flow"], per.mean())

def test_build_priors_is_off_outside_its_stages_and_checks_options(tmp_path):
    cfg = dit_cfg(**TINY)
    off = prior_cfg(flow="hs", prior_stages="instruct")
    assert priors.build_priors(off, cfg, "cpu", "align") == (None, None)
    assert priors.build_priors(prior_cfg(), cfg, "cpu", "align") == (None, None)  # both off
    with pytest.raises(SystemExit, match="--flow=dino"):
        priors.build_priors(prior_cfg(flow="dino"), cfg, "cpu", "align")
    heads, _ = priors.build_priors(prior_cfg(flow="hs"), cfg, "cpu", "align")
    randomize_(heads)
    ckpt = dict(priors=heads.state_dict(), prior_args=heads.args)  # what train.py saves
    back, _ = priors.build_priors(prior_cfg(flow="hs"), cfg, "cpu", "align", init=ckpt)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in heads.state_dict().items())

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_dit_taps_and_priors_under_bf16_autocast(tmp_path):
    cfg = dit_cfg(**TINY, input_size=8)
    model = randomize_(dit.DiT(cfg)).cuda()
    pc = prior_cfg(dino=save_tiny_teacher(tmp_path / "vit", "vit"), flow="hs")
    heads, teacher = priors.build_priors(pc, cfg, "cuda", "align")
    # (B, F, 3, H, W)
    video = (texture(2 * 9, 16).view(2, 9, 1, 16, 16).expand(2, 9, 3, 16, 16) * 2 - 1).contiguous()
    x0, t, text, mask = (a.cuda() for a in dit_inputs(cfg))
    compiled = torch.compile(model)  # inductor
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, feats = compiled(x0, t, text, mask, taps=heads.taps)
        ref, ref_feats = model(x0, t, text, mask, taps=heads.taps)
        targets = priors.prior_targets(heads, teacher, video.cuda(), cfg.num_frames)
        losses = heads(feats, targets)
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(feats[-1].float(), ref_feats[-1].float(), atol=3e-2, rtol=3e-2)
    # the flow is computed in fp32 even under autocast: the GPU target equals the CPU one
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gpu_flow = priors.latent_flow(video.cuda(), cfg.num_frames)  # (B, f, 2, H, W)
    cpu_flow = priors.latent_flow(video, cfg.num_frames)
    torch.testing.assert_close(gpu_flow.cpu(), cpu_flow, atol=1e-3, rtol=1e-3)
    (out.float().pow(2).mean() + 0.5 * losses["dino"] + 0.1 * losses["flow"]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in heads.parameters())
    assert model.x_embedder.weight.grad is not None and torch.isfinite(model.x_embedder.weight.grad).all()

if __name__ == "__main__":
    raise SystemExit(pytest.main(["-q", __file__]))
