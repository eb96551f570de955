# Tests for vae.py (to be merged into test_all.py). Plain asserts; `python -m pytest -q _test_vae.py`.
import pytest
import torch

from vae import VAEConfig, VAE_PRESETS, CausalVideoVAE, valid_num_frames, smooth_blobs

# These tensors are tiny, and on a shared 2-core machine two OpenMP threads fighting another
# process for the cores made one run 15x slower (172 s vs 12 s); one thread is steady.
torch.set_num_threads(1)


def tiny_vae(seed=0, **over):
    torch.manual_seed(seed)
    return CausalVideoVAE(VAEConfig(**{**VAE_PRESETS["tiny"], **over}))


def test_vae_shapes():
    model = tiny_vae()
    for F in (1, 5, 9, 17, 33):
        x = torch.rand(1, F, 3, 16, 16) * 2 - 1  # (B, F, C, H, W)
        mu, logvar = model.encode(x)
        k = (F - 1) // 4
        assert mu.shape == logvar.shape == (1, 1 + k, 4, 4, 4), (F, mu.shape)
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
    assert shift.shape == scale.shape == (4,)
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
