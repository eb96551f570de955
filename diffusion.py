"""
Gaussian diffusion for video latents: the DDPM forward process, the epsilon-prediction loss,
and two samplers (ancestral DDPM and DDIM), with classifier-free guidance. All of it.

Papers:
  [1] DDPM, Ho et al. 2020, https://arxiv.org/abs/2006.11239   (Eq. 4 q(x_t|x_0), Eq. 7 posterior,
      Eq. 11 mean from eps, Eq. 14 "simple" loss, Alg. 1 training, Alg. 2 sampling)
  [2] DDIM, Song et al. 2020, https://arxiv.org/abs/2010.02502   (Eq. 12 the generalised step, Eq. 16 sigma)
  [3] Classifier-free guidance, Ho & Salimans 2022, https://arxiv.org/abs/2207.12598  (Eq. 6)
  [4] Endora (MICCAI 2024) Eq. 1 is the same forward process as [1] Eq. 4, used on video latents.
Used by train.py (`loss`) and sample.py (`sample`); `python -m pytest test_all.py -k diffusion` tests it.

Glossary (code name: paper symbol)
  betas[t]              beta_t            noise variance added at step t          [1] Eq. 2
  alphas_cumprod[t]     alpha-bar_t       prod_{s<=t} (1 - beta_s)                [1] Eq. 4
  x0, x_t               x_0, x_t          clean / noised latents (B, f, c, h, w)
  eps                   epsilon           the Gaussian noise; the network predicts it
  posterior_variance    beta-tilde_t      variance of q(x_{t-1} | x_t, x_0)       [1] Eq. 7
  eta                   eta               DDIM stochasticity; eta=1 is DDPM       [2] Eq. 16
  cfg_scale             w (+1)            guidance scale s: eps_u + s (eps_c - eps_u)  [3] Eq. 6
  drop                  the "null" condition mask: True rows use the model's learned empty caption

Timesteps are 0-indexed here (t = 0 .. T-1), the paper's t = 1 .. T shifted by one.
The model is any callable model(x_t, t, text, text_mask, drop) -> eps with x_t's shape.
"""
import numpy as np
import torch
from tqdm import tqdm


class Schedule:
    """The linear beta schedule of [1] Sec. 4 (beta_1 = 1e-4 to beta_T = 0.02, T = 1000), and every
    coefficient the loss and samplers need. Computed in float64 (as DDPM/IDDPM do) because 1 - alpha-bar
    near t = 0 is ~1e-4 and float32 cumulative products lose digits there; we cast to the latents' dtype
    only at the point of use."""

    def __init__(self, num_steps=1000, beta_start=1e-4, beta_end=0.02):
        self.num_steps = num_steps
        self.betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)  # (T,)  [1] Sec. 4
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,)  alpha-bar_t, [1] Eq. 4
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])  # (T,)
        # [1] Eq. 7: beta-tilde_t = (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) * beta_t
        self.posterior_variance = self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

    def at(self, name, t, x):
        """Gather schedule[name] at integer timesteps t (B,), shaped to broadcast against x (B, ...)."""
        v = getattr(self, name).to(x.device)[t]  # (B,) float64
        return v.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, ...)


def q_sample(sched, x0, t, noise):
    """Sample x_t ~ q(x_t | x_0) in closed form: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps. [1] Eq. 4, Endora Eq. 1."""
    a = sched.at("alphas_cumprod", t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise  # [1] Eq. 4


def loss(model, x0, text, text_mask, sched, p_uncond=0.1, return_parts=False, taps=()):
    """The epsilon-prediction training loss ("L_simple", [1] Eq. 14, Alg. 1) on a batch of clean latents.

    x0: (B, f, c, h, w) clean latents; text: (B, L, Dtext) caption tokens; text_mask: (B, L) bool, True = real token.
    With probability p_uncond a sample's caption is replaced by the model's learned null caption, so the
    same network also learns the unconditional prediction that classifier-free guidance needs ([3] Sec. 3.2).
    taps: DiT block indices whose token features the same forward pass also returns, in parts["feats"]
    (the student side of the training priors, priors.py); they need return_parts=True.
    """
    B = x0.shape[0]
    t = torch.randint(0, sched.num_steps, (B,), device=x0.device)  # t ~ Uniform({0..T-1}), [1] Alg. 1 line 3
    noise = torch.randn_like(x0)  # eps ~ N(0, I), [1] Alg. 1 line 4
    x_t = q_sample(sched, x0, t, noise)
    drop = torch.rand(B, device=x0.device) < p_uncond  # (B,) rows trained as unconditional, [3] Alg. 1
    assert return_parts or not taps, "taps come back in parts['feats']: pass return_parts=True"
    if taps:
        eps_pred, feats = model(x_t, t, text, text_mask, drop, taps=tuple(taps))
    else:  # exactly the call it always was (no new keyword for torch.compile to guard on)
        eps_pred, feats = model(x_t, t, text, text_mask, drop), []
    mse = (eps_pred.float() - noise.float()).pow(2).mean()  # [1] Eq. 14, MSE in fp32 even under autocast
    return (mse, dict(t=t, x_t=x_t, eps_pred=eps_pred, feats=feats)) if return_parts else mse


def guided_eps(model, x_t, t, text, text_mask, cfg_scale):
    """Classifier-free guidance on ALL latent channels ([3] Eq. 6, in the DiT/Latte 'scale' convention):
    eps = eps_uncond + s * (eps_cond - eps_uncond). s = 1 is plain conditional sampling, s = 0 unconditional.
    (DiT/Open-Sora v1.0/Bora guide only the first 3 of 4 channels "for reproducibility"; we guide all.)"""
    B = x_t.shape[0]
    no_drop = torch.zeros(B, dtype=torch.bool, device=x_t.device)
    if cfg_scale == 1.0:  # exactly the conditional model: skip the wasted unconditional half
        return model(x_t, t, text, text_mask, no_drop)
    # one batched call for both halves: rows [0, B) conditional, [B, 2B) with the null caption
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, text]),
                torch.cat([text_mask, text_mask]), torch.cat([no_drop, ~no_drop]))  # (2B, f, c, h, w)
    eps_c, eps_u = eps.chunk(2)  # (B, f, c, h, w) each
    return eps_u + cfg_scale * (eps_c - eps_u)  # [3] Eq. 6


def predict_x0(sched, x_t, t, eps):
    """Invert [1] Eq. 4 for x_0 given a noise estimate: x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    a = sched.at("alphas_cumprod", t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def ddpm_step(sched, x_t, t, eps, noise):
    """One ancestral step x_t -> x_{t-1} ~ p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x0_pred), [1] Alg. 2 / Eq. 7.
    All t in the batch are equal (as in sampling). No noise is added at the last step t = 0."""
    x0 = predict_x0(sched, x_t, t, eps)
    a, a_prev, beta = (sched.at(n, t, x_t) for n in ("alphas_cumprod", "alphas_cumprod_prev", "betas"))
    # posterior mean, [1] Eq. 7: mu = sqrt(a_prev) beta / (1 - a) x0 + sqrt(1 - beta) (1 - a_prev) / (1 - a) x_t
    mean = a_prev.sqrt() * beta / (1 - a) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x_t
    var = sched.at("posterior_variance", t, x_t)
    return mean + (t[0] > 0).to(x_t.dtype) * var.sqrt() * noise  # sigma_t^2 = beta-tilde_t, [1] Sec. 3.2


def ddim_step(sched, x_t, t, t_prev, eps, noise, eta):
    """One DDIM step x_t -> x_{t_prev} for any earlier t_prev (t_prev = -1 means 'past the end': a = 1).
    [2] Eq. 12: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z,
    [2] Eq. 16: sigma = eta * sqrt((1 - a_prev) / (1 - a)) * sqrt(1 - a / a_prev).
    With eta = 1 and t_prev = t - 1 this is exactly ddpm_step (sigma^2 = beta-tilde_t); test_all.py checks it."""
    x0 = predict_x0(sched, x_t, t, eps)
    a = sched.at("alphas_cumprod", t, x_t)
    if t_prev[0] >= 0:
        a_prev = sched.at("alphas_cumprod", t_prev, x_t)
    else:
        a_prev = torch.ones_like(a)
    sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()  # [2] Eq. 16
    direction = (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps  # "direction pointing to x_t", [2] Eq. 12
    return a_prev.sqrt() * x0 + direction + sigma * noise  # [2] Eq. 12


@torch.no_grad()
def sample(model, shape, text, text_mask, sched, steps=50, cfg_scale=4.0, method="ddim", eta=0.0,
           generator=None, progress=False):
    """Generate latents (B, f, c, h, w) from pure noise, conditioned on text.

    method="ddim": `steps` evenly spaced timesteps of the 1000 ([2] Sec. 4.2), eta=0 deterministic.
    method="ddpm": the ancestral sampler of [1] Alg. 2, which always walks all T steps (`steps` ignored).
    cfg_scale: guidance scale s of [3] Eq. 6 (1 = no guidance). generator: torch.Generator for reproducibility.
    """
    assert method in ("ddim", "ddpm"), f"unknown sampler {method!r}: use ddim or ddpm"
    device = text.device
    dtype = next(model.parameters()).dtype
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)  # x_T ~ N(0, I), [1] Alg. 2 line 1
    T = sched.num_steps
    if method == "ddpm":
        ts = list(range(T - 1, -1, -1))
    else:  # evenly spaced, always including the last step t = T-1 and the first t = 0
        ts = sorted(set(np.linspace(0, T - 1, steps).round().astype(int).tolist()), reverse=True)
    B = shape[0]
    for i, ti in enumerate(tqdm(ts, desc=f"{method} sampling", disable=not progress, leave=False)):
        t = torch.full((B,), ti, device=device, dtype=torch.long)
        eps = guided_eps(model, x, t, text, text_mask, cfg_scale).to(dtype)
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if method == "ddpm":
            x = ddpm_step(sched, x, t, eps, noise)
        else:
            t_prev = torch.full_like(t, ts[i + 1] if i + 1 < len(ts) else -1)
            x = ddim_step(sched, x, t, t_prev, eps, noise, eta)
    return x
