"""
Gaussian diffusion for video latents: the DDPM forward process, the epsilon-prediction loss,
and two samplers (ancestral DDPM and DDIM), with classifier-free guidance. All of it.

Papers:
  [1] DDPM, Ho et al. 2020, https://arxiv.org/abs/2006.11239   (Eq. 4 q(x_t|x_0), Eq. 7 posterior,
      Eq. 11 mean from eps, Eq. 14 "simple" loss, Alg. 1 training, Alg. 2 sampling)
  [2] DDIM, Song et al. 2020, https://arxiv.org/abs/2010.02502   (Eq. 12 the generalised step, Eq. 16 sigma)
  [3] Classifier-free guidance, Ho & Salimans 2022, https://arxiv.org/abs/2207.12598  (Eq. 6)
  [4] Progressive distillation, Salimans & Ho 2022, https://arxiv.org/abs/2202.00512  (Sec. 4, App. D: v-pred)
  [5] Min-SNR, Hang et al. 2023, https://arxiv.org/abs/2303.09556  (Sec. 3.3: loss weight min(SNR_t, gamma))
  [6] PYoCo, Ge et al. 2023, https://arxiv.org/abs/2305.10474  (Sec. 3.2: mixed noise, correlated in time)
  [7] Blurring diffusion, Hoogeboom & Salimans 2022, https://arxiv.org/abs/2209.05557  (Sec. 3: a schedule per
      frequency); simple diffusion, Hoogeboom et al. 2023, https://arxiv.org/abs/2301.11093 (Sec. 3.1)
  [8] Composable diffusion, Liu et al. 2022, https://arxiv.org/abs/2206.01714 (a guidance weight per concept)
  [9] Kingma & Gao 2023, https://arxiv.org/abs/2303.00848 (Sec. 2: a weighted loss is one objective under any
      noise schedule p(lambda), which acts as an importance-sampling distribution and sets only its variance)
  Endora (MICCAI 2024) Eq. 1 is the same forward process as [1] Eq. 4, used on video latents.
Used by train.py (`loss`) and sample.py (`sample`); `python -m pytest test_diffusion.py` tests it.

Glossary (code name: paper symbol)
  betas[t]              beta_t            noise variance added at step t          [1] Eq. 2
  alphas_cumprod[t]     alpha-bar_t       prod_{s<=t} (1 - beta_s)                [1] Eq. 4
  x0, x_t               x_0, x_t          clean / noised latents (B, f, c, h, w)
  eps                   epsilon           the Gaussian noise; the network predicts it
  posterior_variance    beta-tilde_t      variance of q(x_{t-1} | x_t, x_0)       [1] Eq. 7
  eta                   eta               DDIM stochasticity; eta=1 is DDPM       [2] Eq. 16
  cfg_scale             w (+1)            guidance scale s: eps_u + s (eps_c - eps_u)  [3] Eq. 6
  motion_cfg_scale      s_m               the scale for the guidance's part that changes over frames
  drop                  the "null" condition mask: True rows use the model's learned empty caption

Timesteps are 0-indexed here (t = 0 .. T-1), the paper's t = 1 .. T shifted by one.
The model is any callable model(x_t, t, text, text_mask, drop) -> eps (or v: prediction="v"), shaped as x_t.
"""
import numpy as np
import torch
from tqdm import tqdm

class Schedule:
    """The linear beta schedule of [1] Sec. 4 (beta_1 = 1e-4 to beta_T = 0.02, T = 1000) and the coefficients
    the loss and samplers need, in float64 (DDPM/IDDPM: near t = 0 a float32 alpha-bar loses 3-4 digits)."""
    def __init__(self, num_steps=1000, beta_start=1e-4, beta_end=0.02):
        self.num_steps = num_steps
        self.betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)  # (T,)  [1] Sec. 4
        a = self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,)  alpha-bar_t, [1] Eq. 4
        a_prev = torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])  # (T,)  alpha-bar_{t-1}
        self.sqrt_alphas_cumprod = a.sqrt()  # alpha_t in [4]'s notation: the signal coefficient, [1] Eq. 4
        self.sqrt_one_minus_alphas_cumprod = (1 - a).sqrt()  # sigma_t in [4]'s notation: noise coefficient
        self.snr = a / (1 - a)  # SNR(t) = alpha_t^2 / sigma_t^2, [5] Sec. 3
        # [1] Eq. 7: beta-tilde_t, and the posterior mean mu-tilde_t = coef1 * x_0 + coef2 * x_t
        self.posterior_variance = self.betas * (1 - a_prev) / (1 - a)
        self.posterior_mean_coef1 = a_prev.sqrt() * self.betas / (1 - a)
        self.posterior_mean_coef2 = (1 - self.betas).sqrt() * (1 - a_prev) / (1 - a)

    def at(self, name, t, x):
        """schedule[name] at timesteps t (B,) (not -1), float64 cast once to x's dtype, as (B, 1, ...)."""
        v = getattr(self, name).to(x.device)[t]  # (B,) float64
        return v.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, ...)

def q_sample(sched, x0, t, noise):
    """Sample x_t ~ q(x_t | x_0) in closed form: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps. Endora Eq. 1."""
    signal, sigma = sched.at("sqrt_alphas_cumprod", t, x0), sched.at("sqrt_one_minus_alphas_cumprod", t, x0)
    return signal * x0 + sigma * noise  # [1] Eq. 4

def video_noise(shape, corr=0.0, generator=None, device=None, dtype=None):
    """Gaussian noise for video latents (B, f, c, h, w), unit variance per element, correlation `corr` between
    any two frames at the same (c, h, w): PYoCo's mixed noise ([6] Sec. 3.2, corr = alpha^2 / (1 + alpha^2)),
    eps_i = eps_shared ~ N(0, corr I) + eps_ind_i ~ N(0, (1 - corr) I). corr = 0: one plain torch.randn."""
    if corr == 0.0:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    shared = torch.randn((shape[0], 1, *shape[2:]), generator=generator, device=device, dtype=dtype)  # f = 1
    own = torch.randn(shape, generator=generator, device=device, dtype=dtype)  # (B, f, c, h, w)
    return corr ** 0.5 * shared + (1 - corr) ** 0.5 * own  # [6] mixed noise: variance corr + (1 - corr) = 1

def scale_motion(z, k):
    """Latents (B, f, c, h, w) with their motion scaled by k: z_mean + k (z - z_mean), z_mean the mean of the
    f frames (appearance: kept); the inverse is k -> 1 / k. Why: motion is 2-20 % of the variance, so noise
    drowns it first; scaled, it gets k^2 times the SNR of the mean ([7] Sec. 3), decided with the layout."""
    if k == 1.0:
        return z
    mean = z.mean(dim=1, keepdim=True)  # (B, 1, c, h, w) the clip's temporal mean
    return mean + k * (z - mean)  # (B, f, c, h, w)

def target_of(sched, x0, t, noise, prediction):
    """What the network is trained to output: eps ([1] Eq. 14), or v = alpha_t eps - sigma_t x_0 ([4] Sec. 4
    and Appendix D), with alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t)."""
    if prediction == "eps":
        return noise
    if prediction == "v":
        al, si = sched.at("sqrt_alphas_cumprod", t, x0), sched.at("sqrt_one_minus_alphas_cumprod", t, x0)
        return al * noise - si * x0  # [4] Sec. 4: v = alpha_t eps - sigma_t x_0
    raise ValueError(f"prediction={prediction!r}: use eps or v")

def to_x0_eps(sched, x_t, t, out, prediction):
    """The network's output read as the (x_0, eps) it implies at x_t. eps: x_0 = (x_t - sigma_t eps) / alpha_t
    ([1] Eq. 4 inverted); v: x_0 = alpha_t x_t - sigma_t v, eps = sigma_t x_t + alpha_t v ([4] Sec. 4)."""
    al, si = sched.at("sqrt_alphas_cumprod", t, x_t), sched.at("sqrt_one_minus_alphas_cumprod", t, x_t)
    if prediction == "eps":
        return (x_t - si * out) / al, out
    if prediction == "v":
        return al * x_t - si * out, si * x_t + al * out
    raise ValueError(f"prediction={prediction!r}: use eps or v")

def loss_weight(sched, t, prediction, snr_gamma, snr_floor=0.0):
    """Per-sample loss weights (B,) for Min-SNR-gamma [5] Sec. 3.3: the x_0-loss weight min(SNR_t, gamma)
    over SNR (eps-MSE = SNR x x_0-MSE) or SNR + 1 (v-MSE). snr_floor > 0 (<= gamma) keeps the x_0-weight at
    least snr_floor near pure noise (at 1: [4] Sec. 4's truncated SNR max(SNR, 1)). Both 0: all ones."""
    snr = sched.snr.to(t.device)[t]  # (B,) float64
    if snr_gamma <= 0 and snr_floor <= 0:
        return torch.ones_like(snr)
    x0_weight = snr.clamp(min=snr_floor, max=snr_gamma if snr_gamma > 0 else None)  # [5] 3.3, [4] Sec. 4
    return x0_weight / (snr if prediction == "eps" else snr + 1)

def sample_timesteps(sched, n, device, prediction="eps", snr_gamma=0.0, snr_floor=0.0, importance=False):
    """n timesteps and their loss weights, both (n,). importance=False: t ~ Uniform({0..T-1}) ([1] Alg. 1 line
    3) with weights loss_weight(t). importance=True: t ~ p(t) = loss_weight(t) / sum_s loss_weight(s), every
    weight the mean of loss_weight over all T: the same expected loss ([9] Sec. 2: the sampling distribution
    of the noise level sets only the estimator's variance), with no draw spent where the weight is ~0. Why:
    Min-SNR-5 on v gives t > 500 (half of the uniform draws) 3.5 % of the total weight, so a batch of 16
    carries the information of ~6 (effective sample size (E w)^2 / E w^2 = 0.38)."""
    if not importance:
        t = torch.randint(0, sched.num_steps, (n,), device=device)  # t ~ Uniform({0..T-1}), [1] Alg. 1 line 3
        return t, loss_weight(sched, t, prediction, snr_gamma, snr_floor)  # (n,), (n,) ones unless Min-SNR
    w_all = loss_weight(sched, torch.arange(sched.num_steps), prediction, snr_gamma, snr_floor)  # (T,) fp64
    t = torch.multinomial(w_all / w_all.sum(), n, replacement=True).to(device)  # (n,) t ~ p(t) ∝ w(t)  [9]
    return t, torch.full((n,), w_all.mean().item(), dtype=torch.float64, device=device)  # w(t) / (T p(t))

def motion_weighted_se(err, motion_weight=1.0):
    """Per-sample MSE (B,) of err (B, f, c, h, w), its part that changes over frames weighted by w =
    motion_weight: |P err|^2 + w |err - P err|^2, P the mean over frames. The parts are orthogonal: w = 1 is
    the plain MSE, any w > 0 has the same minimiser; w changes only what a small network learns first."""
    se = err.pow(2).flatten(1).mean(1)  # (B,)
    if motion_weight == 1.0:
        return se
    dev = err - err.mean(dim=1, keepdim=True)  # (B, f, c, h, w) the part that moves
    return se + (motion_weight - 1.0) * dev.pow(2).flatten(1).mean(1)  # (B,)

def loss(model, x0, text, text_mask, sched, p_uncond=0.1, return_parts=False, taps=(), prediction="eps",
         snr_gamma=0.0, noise_corr=0.0, motion_weight=1.0, snr_floor=0.0, t_importance=False):
    """The diffusion training loss on clean latents x0 (B, f, c, h, w): by default the eps-prediction
    "L_simple" of [1] Eq. 14 / Alg. 1 (Endora Eq. 1). Options, all off by default: prediction="v" [4];
    snr_gamma > 0: Min-SNR-gamma [5] (snr_floor: loss_weight); noise_corr > 0: frame-correlated noise [6];
    motion_weight != 1: motion_weighted_se; t_importance: sample_timesteps. text_mask (B, L): True = a real
    token. A p_uncond share of captions becomes the learned null caption, so one network learns the
    unconditional prediction ([3] Sec. 3.2). taps: DiT blocks whose tokens come back in parts["feats"]
    (priors.py); need return_parts=True."""
    B = x0.shape[0]
    t, w = sample_timesteps(sched, B, x0.device, prediction, snr_gamma, snr_floor, t_importance)  # (B,) each
    noise = video_noise(x0.shape, noise_corr, device=x0.device, dtype=x0.dtype)  # eps ~ N(0, I) [1] Alg. 1
    x_t = q_sample(sched, x0, t, noise)
    drop = torch.rand(B, device=x0.device) < p_uncond  # (B,) rows trained as unconditional, [3] Alg. 1
    assert return_parts or not taps, "taps come back in parts['feats']: pass return_parts=True"
    if taps:
        out, feats = model(x_t, t, text, text_mask, drop, taps=tuple(taps))
    else:  # no taps keyword at all, so torch.compile has nothing new to guard on
        out, feats = model(x_t, t, text, text_mask, drop), []
    target = target_of(sched, x0, t, noise, prediction)
    per_sample = motion_weighted_se(out.float() - target.float(), motion_weight)  # (B,) [1] Eq. 14, fp32 MSE
    mse = (w.float() * per_sample).mean()  # the weighted loss [5], or its importance-sampled estimate [9]
    return (mse, dict(t=t, x_t=x_t, eps_pred=out, feats=feats)) if return_parts else mse

@torch.no_grad()
def validation_loss(model, x0, text, text_mask, sched, noise, ts, prediction="eps"):
    """A loss that does not move with each batch's random t (Open-Sora 1.2's evaluation loss): the eps-MSE of
    [1] Eq. 14 at fixed timesteps ts (K,), noise (K, B, f, c, h, w), clips x0 (B, f, c, h, w) and captions.
    An eps or v model is scored on the eps it implies: one number for either. Returns (mean, per-t (K,))."""
    per_t = []
    for k, tk in enumerate(ts.tolist()):
        t = torch.full((x0.shape[0],), tk, device=x0.device, dtype=torch.long)
        x_t = q_sample(sched, x0, t, noise[k])
        eps = to_x0_eps(sched, x_t, t, model(x_t, t, text, text_mask).float(), prediction)[1]
        per_t.append((eps - noise[k].float()).pow(2).mean())
    per_t = torch.stack(per_t)  # (K,)
    return per_t.mean(), per_t

def guided_eps(model, x_t, t, text, text_mask, cfg_scale, motion_cfg_scale=None):
    """Classifier-free guidance on ALL latent channels ([3] Eq. 6, DiT/Latte 'scale' convention; DiT/Bora
    guide 3 of 4): eps = eps_uncond + s * (eps_cond - eps_uncond); s = 1: conditional, s = 0: unconditional.
    motion_cfg_scale s_m (None: = s) scales the difference's part that changes over frames ([8]: a weight per
    concept; orthogonal parts, so s_m = s is [3] Eq. 6): a motion word moves that part only a little, and a
    larger s on all of it over-saturates the appearance."""
    no_drop = torch.zeros(x_t.shape[0], dtype=torch.bool, device=x_t.device)
    s_m = cfg_scale if motion_cfg_scale is None else motion_cfg_scale
    if cfg_scale == 1.0 and s_m == 1.0:  # exactly the conditional model: skip the wasted unconditional half
        return model(x_t, t, text, text_mask, no_drop)
    # one batched call for both halves: rows [0, B) conditional, [B, 2B) with the null caption
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, text]),
                torch.cat([text_mask, text_mask]), torch.cat([no_drop, ~no_drop]))  # (2B, f, c, h, w)
    eps_c, eps_u = eps.chunk(2)  # (B, f, c, h, w) each
    if s_m == cfg_scale:
        return eps_u + cfg_scale * (eps_c - eps_u)  # [3] Eq. 6
    diff = eps_c - eps_u  # (B, f, c, h, w)
    still = diff.mean(dim=1, keepdim=True)  # (B, 1, c, h, w) its temporal mean
    return eps_u + cfg_scale * still + s_m * (diff - still)  # [3] Eq. 6 per part, weighted as in [8]

def predict_x0(sched, x_t, t, eps):
    """Invert [1] Eq. 4 for x_0 given a noise estimate: x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    return to_x0_eps(sched, x_t, t, eps, "eps")[0]

def ddpm_step(sched, x_t, t, eps, noise):
    """One ancestral step x_t -> x_{t-1} ~ p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x0_pred), [1] Alg. 2 / Eq. 7.
    All t in the batch are equal (as in sampling). No noise is added at the last step t = 0."""
    x0 = predict_x0(sched, x_t, t, eps)
    # [1] Eq. 7: mu = sqrt(a_prev) beta / (1 - a) x0 + sqrt(1 - beta) (1 - a_prev) / (1 - a) x_t
    mean = sched.at("posterior_mean_coef1", t, x_t) * x0 + sched.at("posterior_mean_coef2", t, x_t) * x_t
    var = sched.at("posterior_variance", t, x_t)
    return mean + (t[0] > 0).to(x_t.dtype) * var.sqrt() * noise  # sigma_t^2 = beta-tilde_t, [1] Sec. 3.2

def ddim_step(sched, x_t, t, t_prev, eps, noise, eta):
    """One DDIM step x_t -> x_{t_prev} for any earlier t_prev (t_prev = -1 means 'past the end': a = 1).
    [2] Eq. 12: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z,
    [2] Eq. 16: sigma = eta * sqrt((1 - a_prev) / (1 - a)) * sqrt(1 - a / a_prev).
    In float64, cast once. eta = 1, t_prev = t - 1: exactly ddpm_step (sigma^2 = beta-tilde_t; tested)."""
    x0 = predict_x0(sched, x_t, t, eps)
    a_all = sched.alphas_cumprod.to(x_t.device)  # (T,) float64
    a = a_all[t]  # (B,)
    a_prev = a_all[t_prev] if t_prev[0] >= 0 else torch.ones_like(a)  # (B,)
    sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()  # [2] Eq. 16
    c_dir = (1 - a_prev - sigma ** 2).clamp(min=0).sqrt()  # "direction pointing to x_t", [2] Eq. 12
    shape = (-1, *([1] * (x_t.dim() - 1)))
    c_x0, c_dir, sigma = (v.to(x_t.dtype).view(shape) for v in (a_prev.sqrt(), c_dir, sigma))  # (B, 1, ...)
    return c_x0 * x0 + c_dir * eps + sigma * noise  # [2] Eq. 12

@torch.no_grad()
def sample(model, shape, text, text_mask, sched, steps=50, cfg_scale=4.0, method="ddim", eta=0.0,
           generator=None, progress=False, prediction="eps", noise_corr=0.0, motion_cfg_scale=None):
    """Generate latents (B, f, c, h, w) from pure noise, conditioned on text. method="ddim": `steps` evenly
    spaced timesteps of the 1000 ([2] Sec. 4.2), eta=0 deterministic.
    method="ddpm": the ancestral sampler of [1] Alg. 2, which always walks all T steps (`steps` ignored).
    cfg_scale: s of [3] Eq. 6 (1 = no guidance); motion_cfg_scale: see guided_eps; generator: to reproduce.
    prediction / noise_corr: what the model was trained with (loss); the noise is drawn the same way [6]."""
    assert method in ("ddim", "ddpm"), f"unknown sampler {method!r}: use ddim or ddpm"
    device, dtype = text.device, next(model.parameters()).dtype
    x = video_noise(shape, noise_corr, generator, device, dtype)  # x_T ~ N(0, I), [1] Alg. 2 line 1
    T = sched.num_steps  # ddim: evenly spaced, always including the last step t = T-1 and the first t = 0
    ts = (list(range(T - 1, -1, -1)) if method == "ddpm"
          else sorted(set(np.linspace(0, T - 1, steps).round().astype(int).tolist()), reverse=True))
    for i, ti in enumerate(tqdm(ts, desc=f"{method} sampling", disable=not progress, leave=False)):
        t = torch.full((shape[0],), ti, device=device, dtype=torch.long)
        out = guided_eps(model, x, t, text, text_mask, cfg_scale, motion_cfg_scale).to(dtype)  # eps or v
        eps = to_x0_eps(sched, x, t, out, prediction)[1]  # a v-prediction read as the eps it implies [4]
        noise = video_noise(shape, noise_corr, generator, device, dtype)
        t_prev = torch.full_like(t, ts[i + 1] if i + 1 < len(ts) else -1)
        x = (ddpm_step(sched, x, t, eps, noise) if method == "ddpm"
             else ddim_step(sched, x, t, t_prev, eps, noise, eta))
    return x
