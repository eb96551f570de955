"""
medvid's test suite: executable claims about the math and the plumbing. CPU only, a few minutes.

  python -m pytest -q test_all.py            # everything
  python -m pytest -q test_all.py -k ddim    # one topic

Read it as a list of statements: each test name says what is true, the body checks it on real values.
"""
import math
import os
import warnings

import numpy as np
import pytest
import torch

import data
import diffusion
import dit
import mamba
import sample
import train
import vae as vae_mod

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

def test_dit_output_shape_and_zero_at_init():
    model = tiny_dit()
    x = torch.randn(2, 3, 4, 4, 4)
    out = model(x, torch.tensor([1, 999]), torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-Zero + zero final layer: the DiT starts as the zero function


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


def test_dit_spatial_blocks_do_not_mix_frames_without_temporal_blocks():
    # Interleaving is the only path between frames: with the temporal blocks' gates at zero, changing
    # frame 2 must leave frames 0 and 1 of the output untouched.
    model = randomize_(tiny_dit()).eval()
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
TINY_RUN = ["--size=16", "--num_frames=5", "--batch_size=2", "--num_clips=40", "--num_workers=0", "--log_every=1",
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
