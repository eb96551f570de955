"""
medvid's claims about diffusion.py, as executable checks: the schedule, q_sample and the two samplers match
their closed forms, guidance extrapolates, and v-prediction, Min-SNR, correlated noise, motion scaling and the
validation loss match slow references. CPU only.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import diffusion
from conftest import randomize_, tiny_dit

# ----------------------------------------------------------------------------------------------
# diffusion.py: closed forms, the two samplers, guidance

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
            noise = torch.randn(n, generator=g, dtype=torch.float64)
            closed = diffusion.q_sample(s, x0, torch.full((n,), t), noise)
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
    runs = [diffusion.sample(model, (4, 1, 1, 2, 2), text, mask, s, steps=1000, cfg_scale=1.0, method=m,
                             eta=1.0, generator=torch.Generator().manual_seed(0)) for m in ("ddpm", "ddim")]
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

def _guidance_case(seed, t):
    """A random tiny DiT, its inputs at timesteps t, and its conditional and null-caption outputs."""
    model = randomize_(tiny_dit()).eval()
    g = torch.Generator().manual_seed(seed)
    x, text = torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 5, 16, generator=g)
    mask, t = torch.ones(2, 5, dtype=torch.bool), torch.tensor(t)
    no, yes = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        return model, x, t, text, mask, model(x, t, text, mask, no), model(x, t, text, mask, yes)

def test_cfg_scale_one_is_the_conditional_prediction_and_other_scales_extrapolate():
    model, x, t, text, mask, cond, uncond = _guidance_case(0, [10, 900])
    with torch.no_grad():
        torch.testing.assert_close(diffusion.guided_eps(model, x, t, text, mask, 1.0), cond)
        guided = diffusion.guided_eps(model, x, t, text, mask, 4.0)
        torch.testing.assert_close(guided, uncond + 4 * (cond - uncond), rtol=1e-5, atol=1e-5)
    assert (cond - uncond).abs().max() > 1e-3  # the null caption really is a different condition

def test_motion_guidance_scales_each_frame_s_deviation_from_the_mean_and_is_plain_cfg_at_equal_scales():
    model, x, t, text, mask, cond, uncond = _guidance_case(1, [50, 700])
    with torch.no_grad():
        same = diffusion.guided_eps(model, x, t, text, mask, 4.0, motion_cfg_scale=4.0)
        torch.testing.assert_close(same, diffusion.guided_eps(model, x, t, text, mask, 4.0))
        got = diffusion.guided_eps(model, x, t, text, mask, 4.0, motion_cfg_scale=10.0)
    # slow reference, frame by frame: the guidance difference's mean over frames at 4, each frame's rest at 10
    frames = x.shape[1]
    diff = [cond[:, i] - uncond[:, i] for i in range(frames)]
    mean = sum(diff) / frames
    for i in range(frames):
        want = uncond[:, i] + 4.0 * mean + 10.0 * (diff[i] - mean)
        torch.testing.assert_close(got[:, i], want, rtol=1e-5, atol=1e-5)
    # the temporal mean of the guided output is plain guidance's at s = 4: appearance is guided as before
    torch.testing.assert_close(got.mean(1), same.mean(1), rtol=1e-5, atol=1e-5)

# ----------------------------------------------------------------------------------------------
# diffusion.py options beside the DDPM defaults: v-prediction, Min-SNR, correlated noise, validation loss

def test_schedule_coefficients_are_float64_and_invert_exactly_at_t0():
    s = diffusion.Schedule()
    for name in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "posterior_mean_coef1",
                 "posterior_mean_coef2"):
        assert getattr(s, name).dtype == torch.float64
    # noising then inverting in float32 at t = 0 gives x0 back to rounding (a float32 alpha-bar: 1.7e-4 off)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4096, generator=g), torch.randn(2, 4096, generator=g)
    t = torch.zeros(2, dtype=torch.long)
    rec = diffusion.predict_x0(s, diffusion.q_sample(s, x0, t, eps), t, eps)
    assert (rec - x0).abs().max() < 2e-6
    a = s.alphas_cumprod
    torch.testing.assert_close(s.posterior_mean_coef1, a.roll(1).index_fill(0, torch.tensor([0]), 1.0).sqrt()
                               * s.betas / (1 - a), rtol=1e-12, atol=0)

def test_v_and_eps_prediction_give_the_same_x0_and_eps_for_the_same_x_t():
    s = diffusion.Schedule()
    g = torch.Generator().manual_seed(1)
    x0, eps = (torch.randn(5, 3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0, 10, 500, 900, 999])
    x_t = diffusion.q_sample(s, x0, t, eps)
    for pred in ("eps", "v"):  # a perfect network of either kind implies the true (x0, eps)
        out = diffusion.target_of(s, x0, t, eps, pred)
        got_x0, got_eps = diffusion.to_x0_eps(s, x_t, t, out, pred)
        torch.testing.assert_close(got_x0, x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got_eps, eps, rtol=1e-9, atol=1e-9)
    # v by its definition, alpha eps - sigma x0, written out by hand
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(diffusion.target_of(s, x0, t, eps, "v"), a.sqrt() * eps - (1 - a).sqrt() * x0)

def test_sampler_with_a_v_oracle_equals_the_eps_oracle():
    # the exact denoiser of x0 ~ N(0.3, 0.5) written as a v-predictor samples exactly what its eps form does
    s = diffusion.Schedule()
    eps_model = _gaussian_oracle(0.3, 0.5, s)

    def v_model(x, t, text, mask, drop):
        e = eps_model(x, t, text, mask, drop)
        al, si = s.at("sqrt_alphas_cumprod", t, x), s.at("sqrt_one_minus_alphas_cumprod", t, x)
        return al * e - si * (x - si * e) / al  # v = alpha eps - sigma x0
    v_model.parameters = eps_model.parameters
    text, mask = torch.zeros(64, 1, 1, dtype=torch.float64), torch.ones(64, 1, dtype=torch.bool)
    runs = [diffusion.sample(m, (64, 1, 1, 1, 1), text, mask, s, steps=50, cfg_scale=1.0, prediction=p,
                             generator=torch.Generator().manual_seed(3))
            for m, p in ((eps_model, "eps"), (v_model, "v"))]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-9, atol=1e-9)

@pytest.mark.parametrize("pred", ["eps", "v"])
def test_min_snr_weights_match_their_closed_form_and_turn_the_loss_into_clamped_x0_mse(pred):
    s, gamma = diffusion.Schedule(), 5.0
    t = torch.tensor([0, 50, 200, 400, 999])
    a = s.alphas_cumprod[t]
    snr = a / (1 - a)
    w = diffusion.loss_weight(s, t, pred, gamma)
    closed = torch.minimum(snr, torch.full_like(snr, gamma)) / (snr if pred == "eps" else snr + 1)
    torch.testing.assert_close(w, closed, rtol=1e-12, atol=0)
    assert torch.equal(diffusion.loss_weight(s, t, pred, 0.0), torch.ones(5, dtype=torch.float64))
    # a floor under it (Salimans & Ho's truncated SNR at 1): x0-weight clamp(SNR, floor, gamma), or
    # max(SNR, floor) without gamma; floor 0 is Min-SNR exactly
    for floor, gam in ((1.0, gamma), (0.5, 0.0), (0.0, gamma)):
        x0w = torch.maximum(snr, torch.full_like(snr, floor))
        x0w = torch.minimum(x0w, torch.full_like(snr, gam)) if gam > 0 else x0w
        closed = x0w / (snr if pred == "eps" else snr + 1)
        torch.testing.assert_close(diffusion.loss_weight(s, t, pred, gam, floor), closed, rtol=1e-12, atol=0)
    assert torch.equal(diffusion.loss_weight(s, t, pred, gamma, 0.0), w)
    # slow reference: the weighted target-MSE equals min(SNR, gamma) x the MSE of the x0 the output implies
    g = torch.Generator().manual_seed(4)
    x0, eps, out = (torch.randn(5, 2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = diffusion.q_sample(s, x0, t, eps)
    target_mse = (out - diffusion.target_of(s, x0, t, eps, pred)).pow(2).flatten(1).mean(1)
    x0_mse = (diffusion.to_x0_eps(s, x_t, t, out, pred)[0] - x0).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(w * target_mse, snr.clamp(max=gamma) * x0_mse, rtol=1e-9, atol=1e-12)

def test_importance_sampled_timesteps_estimate_the_same_weighted_loss():
    s = diffusion.Schedule()
    w = diffusion.loss_weight(s, torch.arange(1000), "v", 5.0)  # (T,) Min-SNR-5 on v
    torch.manual_seed(0)
    t_u, w_u = diffusion.sample_timesteps(s, 8, "cpu", "v", 5.0)  # the default: uniform t, weighted
    torch.manual_seed(0)
    assert torch.equal(t_u, torch.randint(0, 1000, (8,))) and torch.equal(w_u, w[t_u])
    torch.manual_seed(1)
    t, wt = diffusion.sample_timesteps(s, 400_000, "cpu", "v", 5.0, importance=True)
    assert torch.all(wt == w.mean())  # one constant weight: the mean of w over all T
    # t is drawn in proportion to w: per band of 100 steps the share of draws is the band's share of sum w
    got = torch.bincount(t // 100, minlength=10).double() / len(t)
    want = w.view(10, 100).sum(1) / w.sum()
    torch.testing.assert_close(got, want, atol=3e-3, rtol=0)
    assert (t >= 900).sum() < 40  # w ~ 3e-4 there: almost no draws
    # same objective: for any per-t loss f(t), E_uniform[w(t) f(t)] = E_p[mean(w) f(t)] exactly (enumerated
    # over all t), and the Monte Carlo estimates from each sampler agree with it
    f = 1.0 + torch.sin(torch.arange(1000, dtype=torch.float64) / 37.0) ** 2
    exact_uniform = (w * f).mean()
    exact_importance = ((w / w.sum()) * w.mean() * f).sum()
    torch.testing.assert_close(exact_importance, exact_uniform, rtol=1e-12, atol=0)
    torch.testing.assert_close((wt * f[t]).mean(), exact_uniform, rtol=5e-3, atol=0)
    torch.manual_seed(2)
    t_u, w_u = diffusion.sample_timesteps(s, 400_000, "cpu", "v", 5.0)
    torch.testing.assert_close((w_u * f[t_u]).mean(), exact_uniform, rtol=1e-2, atol=0)
    # and with less variance per draw (the reason to use it)
    assert (wt * f[t]).var() < 0.5 * (w_u * f[t_u]).var()
    # no weighting: importance sampling is uniform sampling with weight 1
    t1, w1 = diffusion.sample_timesteps(s, 100_000, "cpu", "eps", 0.0, importance=True)
    assert torch.all(w1 == 1.0) and abs(t1.double().mean().item() - 499.5) < 3

def test_correlated_video_noise_has_unit_variance_and_the_stated_frame_correlation():
    g = torch.Generator().manual_seed(5)
    for corr in (0.0, 0.3, 0.8):
        n = diffusion.video_noise((20000, 3, 2, 2, 2), corr, generator=g)  # (B, f, c, h, w)
        assert abs(n.var().item() - 1) < 0.02
        v = n.permute(1, 0, 2, 3, 4).reshape(3, -1)  # (f, everything else)
        c = torch.corrcoef(v)
        off = c[~torch.eye(3, dtype=torch.bool)]
        assert (off - corr).abs().max() < 0.02, (corr, off)
        shared_across_space = torch.corrcoef(n[:, 0].reshape(20000, -1).T[:2])[0, 1]
        assert abs(shared_across_space) < 0.03  # only frames are correlated, never positions or channels

def test_scale_motion_scales_only_the_temporal_deviation_and_inverts_with_one_over_k():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, 9, 3, 4, 4, generator=g, dtype=torch.float64)  # (B, f, c, h, w)
    y = diffusion.scale_motion(z, 4.0)
    torch.testing.assert_close(y.mean(1), z.mean(1), rtol=0, atol=1e-12)  # appearance untouched
    # slow reference, frame by frame: every frame's deviation from the clip mean, times k
    for f in range(9):
        ref = z.mean(1) + 4.0 * (z[:, f] - z.mean(1))
        torch.testing.assert_close(y[:, f], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(diffusion.scale_motion(y, 1 / 4.0), z, rtol=1e-12, atol=1e-12)
    assert diffusion.scale_motion(z, 1.0) is z
    # a still clip has no motion to scale; frame differences grow exactly k times
    still = z[:, :1].expand(-1, 9, -1, -1, -1)
    torch.testing.assert_close(diffusion.scale_motion(still, 4.0), still, rtol=0, atol=1e-12)
    torch.testing.assert_close(y.diff(dim=1), 4.0 * z.diff(dim=1), rtol=1e-12, atol=1e-12)

def test_motion_weighted_error_matches_a_per_frame_reference_and_weights_only_what_moves():
    g = torch.Generator().manual_seed(9)
    err = torch.randn(3, 5, 2, 4, 4, generator=g, dtype=torch.float64)  # (B, f, c, h, w)
    plain = err.pow(2).flatten(1).mean(1)
    torch.testing.assert_close(diffusion.motion_weighted_se(err, 1.0), plain)
    got = diffusion.motion_weighted_se(err, 7.0)
    mean = err.mean(1)  # (B, c, h, w) slow reference: each frame's error split into clip mean + deviation
    ref = sum((mean.pow(2) + 7.0 * (err[:, f] - mean).pow(2)).flatten(1).sum(1) for f in range(5))
    ref = ref / err[0].numel()
    torch.testing.assert_close(got, ref)
    still = err[:, :1].expand(-1, 5, -1, -1, -1)  # an error that does not change over frames: weight unused
    torch.testing.assert_close(diffusion.motion_weighted_se(still, 7.0), still.pow(2).flatten(1).mean(1))
    moving = err - mean[:, None]  # an error with zero mean over frames: weighted exactly w times
    torch.testing.assert_close(diffusion.motion_weighted_se(moving, 7.0),
                               7.0 * moving.pow(2).flatten(1).mean(1))

def test_validation_loss_is_deterministic_and_scores_v_models_on_eps():
    torch.manual_seed(0)
    model = randomize_(tiny_dit()).eval()
    s = diffusion.Schedule()
    g = torch.Generator().manual_seed(6)
    x0, text = torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 5, 16, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    ts = torch.linspace(0, 999, 10).round().long()
    noise = torch.randn(10, *x0.shape, generator=g)
    a, per_t = diffusion.validation_loss(model, x0, text, mask, s, noise, ts)
    torch.manual_seed(123)  # the global RNG must not matter
    b, _ = diffusion.validation_loss(model, x0, text, mask, s, noise, ts)
    assert torch.equal(a, b) and per_t.shape == (10,)
    # slow reference for one timestep
    t = torch.full((2,), int(ts[4]))
    with torch.no_grad():
        ref = (model(diffusion.q_sample(s, x0, t, noise[4]), t, text, mask) - noise[4]).pow(2).mean()
    torch.testing.assert_close(per_t[4], ref)
    # read as a v-predictor, the same network is scored on the eps it implies
    _, per_t_v = diffusion.validation_loss(model, x0, text, mask, s, noise, ts, prediction="v")
    x_t = diffusion.q_sample(s, x0, t, noise[4])
    with torch.no_grad():
        eps_v = diffusion.to_x0_eps(s, x_t, t, model(x_t, t, text, mask), "v")[1]
    torch.testing.assert_close(per_t_v[4], (eps_v - noise[4]).pow(2).mean())

def test_a_prompt_samples_the_same_alone_and_beside_a_longer_prompt():
    # dropped (null-caption) rows always see all max_text_len rows of y_null, so a prompt's guided sample does
    # not depend on the lengths of the other prompts in its batch
    model = randomize_(tiny_dit()).eval().double()  # float64: batch-size-dependent float32 rounding stays out
    s = diffusion.Schedule()
    g = torch.Generator().manual_seed(7)
    short, long = (torch.randn(1, n, 16, generator=g, dtype=torch.float64) for n in (3, 7))
    text = torch.cat([F.pad(short, (0, 0, 0, 4)), long])  # (2, 7, 16): the short caption zero-padded
    mask = torch.tensor([[True] * 3 + [False] * 4, [True] * 7])
    # one seed gives the same x_T for row 0 (randn fills row by row); DDIM with eta = 0 adds no more noise
    alone = diffusion.sample(model, (1, 3, 4, 4, 4), short, torch.ones(1, 3, dtype=torch.bool), s, steps=5,
                             cfg_scale=4.0, generator=torch.Generator().manual_seed(8))
    both = diffusion.sample(model, (2, 3, 4, 4, 4), text, mask, s, steps=5, cfg_scale=4.0,
                            generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(both[:1], alone, rtol=1e-5, atol=1e-5)

if __name__ == "__main__":
    raise SystemExit(pytest.main(["-q", __file__]))
