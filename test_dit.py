"""
medvid's claims about the DiT and the Mamba mixer, as executable checks: the DiT is zero at initialisation,
frames mix only in temporal blocks, taps leave the output alone, it learns; the chunked scan is the loop, the
scan orders are true spirals, and time stays causal. CPU only.
"""
import math

import numpy as np
import pytest
import torch

import diffusion
import dit
import train
from conftest import TINY, dit_cfg, dit_inputs, randomize_, tiny_dit
from mamba import (MambaConfig, MambaMixer, SpatialMamba, TemporalMamba, spiral_order, spiral_variants,
                   ssm_scan, ssm_scan_ref)

# ----------------------------------------------------------------------------------------------
# dit.py: zero at initialisation, frames mix only in temporal blocks, feature taps, it learns

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
        full = torch.ones(1, 4, dtype=torch.bool)
        other = torch.randn(1, 4, 16, generator=g)
        torch.testing.assert_close(model(x, t, text, full, d), model(x, t, other, full, d))

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

@pytest.mark.parametrize("temporal_text", [False, True])
def test_temporal_blocks_see_the_caption_only_with_temporal_text(temporal_text):
    # silence every other path of the caption (spatial cross-attention, pooled text): the output then depends
    # on the caption exactly when the temporal blocks cross-attend to it; align freezes those weights too
    model = randomize_(tiny_dit(pooled_text=False, temporal_text=temporal_text)).eval()
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            if i % 2 == 0:
                blk.cross_attn.proj.weight.zero_(), blk.cross_attn.proj.bias.zero_()
        x, t, mask = torch.randn(1, 3, 4, 4, 4), torch.tensor([400]), torch.ones(1, 5, dtype=torch.bool)
        a, b = model(x, t, torch.randn(1, 5, 16), mask), model(x, t, torch.randn(1, 5, 16), mask)
    assert (a - b).abs().max() > 1e-4 if temporal_text else torch.equal(a, b)
    temporal = {id(p) for p in model.temporal_parameters()}
    crosses = [b.cross_attn for i, b in enumerate(model.blocks) if i % 2 == 1 and b.cross_attn is not None]
    assert len(crosses) == (2 if temporal_text else 0)
    assert all(id(p) in temporal for c in crosses for p in c.parameters())

def test_rotary_matches_complex_rotation_and_scores_depend_on_the_offset_only():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64)  # (N, h, F, d)
    z = torch.complex(x[..., :4], x[..., 4:])  # pair (j, j + d/2) as one complex number, slowly:
    for f in range(7):
        for j in range(4):
            angle = f * 1e4 ** (-j / 4)  # position x base^(-2j/d), d = 8
            z[..., f, j] = z[..., f, j] * complex(math.cos(angle), math.sin(angle))
    assert torch.allclose(dit.rotary(x), torch.cat([z.real, z.imag], -1), atol=1e-6)
    q, k = (torch.randn(1, 1, 1, 8, generator=g).expand(1, 1, 7, 8) for _ in range(2))  # one vector per frame
    s = dit.rotary(q) @ dit.rotary(k).transpose(-1, -2)  # (1, 1, F, F) scores
    for off in range(-6, 7):  # Toeplitz: the same along every diagonal
        diag = s[0, 0].diagonal(off)
        assert torch.allclose(diag, diag[:1].expand(len(diag)), atol=1e-5)
    assert (s[0, 0].diagonal(1)[0] - s[0, 0].diagonal(2)[0]).abs() > 1e-3  # and offsets are told apart

def test_temporal_rope_changes_only_the_temporal_attention():
    base = randomize_(tiny_dit(), std=0.2).eval()  # attention logits large enough for positions to matter
    rope = tiny_dit(temporal_rope=True).eval()
    rope.load_state_dict(base.state_dict())  # no new parameters: the same weights load
    x, t, text, mask = dit_inputs(base.cfg)
    with torch.no_grad():
        a, b = base(x, t, text, mask), rope(x, t, text, mask)
        for i, blk in enumerate(rope.blocks):
            if i % 2 == 1:
                blk.adaLN_modulation[-1].weight.zero_(), blk.adaLN_modulation[-1].bias.zero_()
                base.blocks[i].load_state_dict(blk.state_dict())
        c, d = base(x, t, text, mask), rope(x, t, text, mask)  # temporal blocks gated off: rope has no effect
    assert (a - b).abs().max() > 1e-3 and torch.equal(c, d)
    ropes = [m.rope for m in rope.modules() if isinstance(m, dit.Attention)]
    assert ropes == [False, False, True] * 2  # depth 4: (self, cross) spatial, then self temporal

def test_sincos_embeddings_are_distinct_per_position():
    e = dit.sincos_2d(32, 4)
    assert e.shape == (16, 32)
    d = ((e[:, None] - e[None]) ** 2).sum(-1) + np.eye(16)
    assert d.min() > 1e-3

def test_taps_return_block_features_without_changing_the_output():
    cfg = dit_cfg(**TINY)
    model = randomize_(dit.DiT(cfg))
    x, t, text, mask = dit_inputs(cfg)
    out = model(x, t, text, mask)
    out2, feats = model(x, t, text, mask, taps=(3, 0, 7))
    assert torch.equal(out, out2)
    assert [f.shape for f in feats] == [(2, 3, 4, 128)] * 3  # (B, F, S, D), in taps order
    # the last block's tokens are what the final layer reads: feeding them through it gives the output back
    c = model.t_embedder(t) + model.pool_embedder(model.y_embedder(text).mean(1))  # (B, D), all-True mask
    y = model.final_layer(feats[2].flatten(0, 1), c.repeat_interleave(3, 0))  # (B*F, S, p*p*C)
    y = y.view(2, 3, 2, 2, 2, 2, 4).permute(0, 1, 6, 2, 4, 3, 5).reshape(out.shape)  # unpatchify
    torch.testing.assert_close(y, out)

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
            eps = model(x_t, t_eval, text.repeat(16, 1, 1), mask.repeat(16, 1))
            return (eps - n_eval).pow(2).mean().item()

    before = eval_loss()
    opt, _, _ = train.configure_optimizer(model.parameters(), 2e-3, 0.0, "cpu")
    for _ in range(150):
        loss = diffusion.loss(model, x0, text, mask, s, p_uncond=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)

def test_the_offline_minilm_encoder_puts_paraphrases_closer_than_other_modalities():
    enc = dit.load_text_encoder("minilm")
    emb, mask = enc(["an echocardiogram of a heart beating fast", "cardiac ultrasound with a rapid heartbeat",
                     "phase contrast microscopy of a few drifting cells"])
    pooled = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0], pooled[1], dim=0) > cos(pooled[0], pooled[2], dim=0)

# ----------------------------------------------------------------------------------------------
# mamba.py: the chunked scan is the loop, the scan orders are true spirals, time stays causal

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

if __name__ == "__main__":
    raise SystemExit(pytest.main(["-q", __file__]))
