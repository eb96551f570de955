"""
medvid's plumbing around a run, as executable checks: two real DDP processes, the model loaders, and the
one-line errors of the command lines. CPU only.
"""
import dataclasses
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

import bench
import data
import dit
import evaluate
import priors
import sample
import train
from conftest import _npy_corpus, tiny_dit
from vae import VAE_PRESETS, VAEConfig

# ----------------------------------------------------------------------------------------------
# Two real processes (gloo on CPU), set up with the environment torchrun gives its workers

def _ddp_rank(rank, ports, runs, out):
    """One rank: train.main for each run (a fresh process group each). It watches, without changing anything,
    through two public hooks: Python's audit hook sees each checkpoint write (save_checkpoint ends in an
    atomic os.replace), torch's global forward hook every module the run calls: the DDP-wrapped DiT, and the
    text encoder with each micro-batch's captions."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)  # two ranks on a 2-core machine
    saves, models, captions = [], [], []
    sys.addaudithook(lambda event, args: event == "os.rename" and saves.append(str(args[1])))

    def seen(module, inputs, output):
        if isinstance(module, DistributedDataParallel) and not models:
            models.append(module.module)  # the first DDP module a run calls: the DiT
        if isinstance(module, dit.TextEncoder):
            captions.append(list(inputs[0]))
    torch.nn.modules.module.register_module_forward_hook(seen)
    for run, (port, argv) in enumerate(zip(ports, runs)):
        os.environ["MASTER_PORT"] = str(port)
        saves.clear(), models.clear(), captions.clear()
        train.main(argv)
        torch.save(dict(params=models[0].state_dict(), saves=list(saves), captions=list(captions)),
                   f"{out}/run{run}.rank{rank}.pt")

def test_ddp_two_processes_identical_parameters_disjoint_shards_one_checkpoint_and_resume(
        tiny_run, tmp_path, capfd):
    root, args, _ = tiny_run
    bert = next(a for a in args if a.startswith("--text_encoder="))
    csv_path, out = _npy_corpus(tmp_path / "corpus"), tmp_path / "out"
    common = ["--size=16", "--num_frames=5", "--num_workers=0", bert, "--warmup_steps=1", "--log_every=1",
              "--preview_steps=1", "--batch_size=2", f"--data={csv_path}", "--balance=weight",
              "--val_clips=0"]  # no validation captions among the ones the hook records
    instruct = common + ["--stage=instruct", f"--init_from={root / 'out' / 'vae.pt'}", f"--out_dir={out}",
                         "--instruct_steps=4"]
    # stop at step 2, then resume to 4
    runs = [instruct + ["--max_run_steps=2"], instruct + ["--resume=True"]]
    socks = [socket.socket() for _ in runs]
    ports = [s.bind(("127.0.0.1", 0)) or s.getsockname()[1] for s in socks]
    [s.close() for s in socks]
    capfd.readouterr()
    # spawn, not fork: a child forked after the parent's OpenMP pool has run can deadlock in its first matmul
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_ddp_rank, args=(r, ports, runs, str(tmp_path))) for r in (0, 1)]
    [p.start() for p in procs]
    [p.join(timeout=150) for p in procs]
    printed = capfd.readouterr()
    assert [p.exitcode for p in procs] == [0, 0], printed.err[-3000:]
    got = {(run, r): torch.load(tmp_path / f"run{run}.rank{r}.pt", weights_only=True)
           for run in (0, 1) for r in (0, 1)}
    for run in (0, 1):
        r0, r1 = got[run, 0], got[run, 1]
        assert r0["params"].keys() == r1["params"].keys()
        # DDP kept the ranks in step
        assert all(torch.equal(v, r1["params"][k]) for k, v in r0["params"].items())
        # one writer, one checkpoint (and the metrics file that rank 0 alone rewrites at the stage's start)
        assert r0["saves"] == [str(out / "metrics.jsonl"), str(out / "instruct.pt")] and r1["saves"] == []
    assert sorted(os.listdir(out)) == ["instruct.pt", "loss.png", "metrics.jsonl", "previews"]
    assert [r["step"] for r in train.read_metrics(str(out))] == [1, 2, 3, 4]  # rank 0 alone logs, once a step
    assert data.load_checkpoint(str(out / "instruct.pt"))["step"] == 4
    assert "stopped at step 2 of 4" in printed.out and "epoch 0: 1 unreadable file(s) skipped" in printed.out
    # 12 clips (one unreadable), global batch 4: 3 steps an epoch. Run 0 did steps 0-1, the resumed run steps
    # 2-3. Rank r must have encoded, in order, the captions of its shard: the positions r, r + 2, ... of each
    # epoch's order (the unreadable file's turn going to another clip of its modality), nothing twice or lost
    ds = data.VideoCSVDataset(csv_path, num_frames=5, size=16)
    modalities = [row["modality"] for row in data.read_csv(csv_path)]
    orders = [data.epoch_order(12, 0, e, modalities, "weight") for e in (0, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in (0, 1):
            keys = [(orders[0][p], 0, p) for p in range(r, 12, 2)]
            keys += [(orders[1][p], 1, p) for p in range(r, 4, 2)]
            # 2 micro-batches a run
            seen = [c for run in (0, 1) for call in got[run, r]["captions"][:2] for c in call]
            assert seen == [ds[k]["text"] for k in keys], r

# ----------------------------------------------------------------------------------------------
# Loaders: the real from_pretrained paths on tiny models the tests save

def test_text_encoder_loads_with_from_pretrained_and_masks_padding(bert):
    enc = dit.load_text_encoder(bert)
    assert enc.dim == 24
    emb, mask = enc(["heart video", "cell video fast slow hello"])
    assert emb.shape == (2, 7, 24) and mask.tolist()[0] == [True] * 4 + [False] * 3  # [CLS] heart video [SEP]
    assert not emb.requires_grad and all(not p.requires_grad for p in enc.parameters())
    alone, _ = dit.load_text_encoder(bert)(["heart video"])
    torch.testing.assert_close(alone[0], emb[0, :4])  # a caption's tokens do not depend on its batch-mates
    assert emb[0, 4:].abs().sum() == 0

def test_text_encoder_cache_keeps_the_most_recent_captions_and_gives_what_a_fresh_encoder_gives(bert):
    enc, fresh = dit.load_text_encoder(bert), dit.load_text_encoder(bert)
    enc.cache_size = 3
    words = ["heart", "cell", "video", "fast", "slow", "hello"]
    for i in range(4):  # [heart, heart cell], ..., [fast, fast slow]: each new caption evicts the oldest
        enc([words[i], words[i] + " " + words[i + 1]])
    assert list(enc.cache) == ["video fast", "fast", "fast slow"]  # the last three, oldest use first
    enc(["video fast"])  # a hit makes it the most recent
    assert list(enc.cache) == ["fast", "fast slow", "video fast"]
    captions = ["heart cell", "fast slow", "hello video slow", "cell"]  # more captions than the cache holds
    got, got_mask = enc(captions)
    want, want_mask = fresh(captions)
    torch.testing.assert_close(got, want)
    assert torch.equal(got_mask, want_mask)
    assert len(enc.cache) == 4 and all(v._base is None for v in enc.cache.values())  # owns its memory

def test_a_checkpoint_with_dit_options_this_version_does_not_know_is_a_one_line_error():
    model = tiny_dit()
    ck = {"model_args": {**dataclasses.asdict(model.cfg), "warp": 2}, "ema": model.state_dict()}
    with pytest.raises(SystemExit, match=r"options this version does not know \(warp\): use the version"):
        dit.DiT.from_checkpoint(ck)
    del ck["model_args"]["warp"]  # without it, the same checkpoint loads
    torch.testing.assert_close(dit.DiT.from_checkpoint(ck).state_dict(), model.state_dict())

def test_t5_folder_loads_its_encoder_only(bert, tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration
    path = shutil.copytree(bert, tmp_path / "t5")  # a word-piece tokenizer is enough for the test
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

def test_unloadable_or_wrong_teacher_is_a_one_line_error(tmp_path):
    for bad, what in [(str(tmp_path / "nothing-here"), "cannot load DINO teacher"), (None, "not a ViT")]:
        if bad is None:
            from transformers import BertConfig, BertModel
            bad = str(tmp_path / "bert")
            BertModel(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=8)).save_pretrained(bad)
        with pytest.raises(SystemExit) as e:
            priors.load_dino(bad)
        assert what in str(e.value) and "--dino=none" in str(e.value) and "\n" not in str(e.value)

# ----------------------------------------------------------------------------------------------
# Command lines: options, checkpoints and prompts that are wrong are one-line errors

def test_parse_args_types_presets_and_errors():
    argv = ["--lr=1e-3", "--batch_size=4", "--stage=align", "--resume=True"]
    cfg = data.parse_args(train.TrainConfig, argv, train.PRESETS)
    assert (cfg.lr, cfg.batch_size, cfg.stage, cfg.resume) == (1e-3, 4, "align", True)
    assert data.parse_args(train.TrainConfig, ["--preset=small"], train.PRESETS).size == 128
    for text, want in (("true", True), ("FALSE", False), ("1", True), ("0", False), ("False", False)):
        assert data.parse_args(train.TrainConfig, [f"--resume={text}"], train.PRESETS).resume is want
    for bad in (["--nope=1"], ["--batch_size=four"], ["--batch_size=1.5"], ["stage"], ["--preset=huge"],
                ["--resume=yes"], ["--resume=2"]):
        with pytest.raises(SystemExit):
            data.parse_args(train.TrainConfig, bad, train.PRESETS)
    # --vae_args: typed VAEConfig overrides on top of a preset (the frequency-compensation ablation)
    v = train.vae_config("tiny-fc", "freq_comp=False,base_channels=18,norm_groups=6")
    assert (v.freq_comp, v.base_channels, v.norm_groups, v.z_channels) == (False, 18, 6, 16)
    assert train.vae_config("tiny", "") == VAEConfig(**VAE_PRESETS["tiny"])
    v = train.vae_config("tiny", "channel_mult=(1,),z_channels=4")  # a tuple's commas stay in its value
    assert (v.channel_mult, v.z_channels, v.spatial_factor) == ((1,), 4, 2)
    tiny = SimpleNamespace(cfg=train.vae_config("tiny"))  # x4: 32 px -> 8 latents, whole patches of 2 and 4
    for size, patch in ((32, 2), (32, 4)):
        train.check_size(SimpleNamespace(size=size), tiny, patch)
    with pytest.raises(SystemExit, match="--size=32: use a multiple of 12"):
        train.check_size(SimpleNamespace(size=32), tiny, 3)
    for name, bad in (("tiny", "freq=1"), ("tiny", "z_channels=1.5"), ("tiny", "freq_comp"), ("huge", "")):
        with pytest.raises(SystemExit):
            train.vae_config(name, bad)
    for bad, msg in ((["--compile=maybe"], "--compile=maybe"), (["--stage=vea"], "--stage=vea"),
                     (["--num_frames=8"], "1\\+4k"), (["--balance=equal", "--stage=vae"], "--balance"),
                     (["--patch_size=0"], "--patch_size")):
        with pytest.raises(SystemExit, match=msg):
            train.main(bad + ["--out_dir=/nonexistent/never-written"])

def test_help_of_every_script_lists_every_option_with_its_comment_and_exits_0(capsys):
    for main, cls in ((train.main, train.TrainConfig), (sample.main, sample.SampleConfig),
                      (evaluate.main, evaluate.EvalConfig), (bench.main, bench.BenchConfig)):
        for flag in ("--help", "-h"):
            with pytest.raises(SystemExit) as e:
                main([flag, "--lr=not even parsed"])
            assert e.value.code == 0
            out = capsys.readouterr().out
            assert all(f"  --{f.name}=" in out for f in dataclasses.fields(cls)), cls
    # train.py's: the comment beside a field and the line under it, the group headings, the presets
    train_help = data.config_help(train.TrainConfig, train.PRESETS)
    assert "  --lr=0.001" in train_help and "DiT peak lr; each preset sets its own" in train_help
    lines = train_help.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("  --data="))
    assert "CSV of videos" in lines[i] and lines[i + 1].strip() == "'' = the synthetic benchmark"
    assert "  # I/O\n  --out_dir=" in train_help and "  # optimisation (per stage)\n" in train_help
    assert "  small  size=128 num_frames=17" in train_help
    # and as a command: the dataclass's source is read from the script run as __main__
    run = subprocess.run([sys.executable, "train.py", "--help"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)), timeout=120)
    assert run.returncode == 0 and "--vae_texture=0.0" in run.stdout and "presets" in run.stdout

def test_a_misspelled_option_suggests_the_closest_name():
    for wrong, right in (("lr_rate", "lr"), ("batchsize", "batch_size"), ("outdir", "out_dir"),
                         ("vae_step", "vae_steps")):
        with pytest.raises(SystemExit, match=f"^unknown option --{wrong} \\(did you mean --{right}\\?\\)$"):
            data.parse_args(train.TrainConfig, [f"--{wrong}=1"], train.PRESETS)
    with pytest.raises(SystemExit, match="unknown option --xyzzy; valid options: out_dir, stage"):
        data.parse_args(train.TrainConfig, ["--xyzzy=1"], train.PRESETS)

def test_metrics_log_has_each_step_once_across_a_stop_and_resume(tiny_run, tmp_path):
    root, args, _ = tiny_run
    base = [a for a in args if not a.startswith(("--out_dir", "--instruct_steps"))]
    base += ["--stage=instruct", f"--init_from={root / 'out' / 'align.pt'}", "--instruct_steps=4",
             "--val_clips=2", f"--out_dir={tmp_path}"]
    assert train.main(base + ["--max_run_steps=2"]) is None
    # as if killed after logging step 3 past the checkpoint at step 2, in the middle of the next line
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps(dict(stage="instruct", step=3, loss=9.0)) + "\n" + '{"stage": "instr')
    train.main(base + ["--resume=True"])
    rows = train.read_metrics(str(tmp_path))
    assert [(r["stage"], r["step"]) for r in rows] == [("instruct", s) for s in (1, 2, 3, 4)]
    assert all(r["loss"] != 9.0 for r in rows)
    assert set(rows[-1]) == {"stage", "step", "loss", "val", "lr", "grad_norm", "ms_per_step", "clips_per_s"}

def test_loss_png_is_drawn_at_the_end_of_each_stage_and_by_plot(tiny_run, tmp_path):
    root, _, _ = tiny_run
    rows = train.read_metrics(str(root / "out"))
    assert [(r["stage"], r["step"]) for r in rows] == [("vae", 1), ("vae", 2), ("align", 1), ("align", 2),
                                                       ("align", 3), ("instruct", 1), ("instruct", 2)]
    assert all("val" in r for r in rows if r["stage"] != "vae")
    png = root / "out" / "loss.png"
    with Image.open(png) as im:
        im.verify()
    assert os.path.getsize(png) > 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (3 * 420, 300)  # a panel per stage
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 10  # not blank
    os.remove(png)
    assert train.main([f"--plot={root / 'out'}"]) == str(png) and png.exists()
    with pytest.raises(SystemExit, match="nothing to draw"):
        train.main([f"--plot={tmp_path}"])

def test_vae_config_errors():
    with pytest.raises(ValueError, match="temporal_downsample"):
        VAEConfig(channel_mult=(1, 2), temporal_downsample=3)
    with pytest.raises(ValueError, match="fc_fold"):
        VAEConfig(fc_fold=0)

def test_a_missing_previous_stage_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at .*vae.pt"):
        train.main(["--stage=align", f"--out_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="--stage=vae "):  # a VAE run from a missing VAE: make one first
        train.main(["--stage=vae", f"--init_from={tmp_path}/none.pt", f"--out_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="--stage=align "):
        train.main(["--stage=instruct", f"--out_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="--snr_floor=6.0 is above --snr_gamma=5.0"):
        train.main(["--stage=instruct", "--snr_gamma=5", "--snr_floor=6", f"--out_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="--snr_floor=1.0 needs --prediction=v.* --snr_floor=0"):
        train.main(["--stage=instruct", "--prediction=eps", f"--out_dir={tmp_path}"])  # tiny preset floor

def test_sample_end_to_end_writes_readable_videos(tiny_run, tmp_path, capsys):
    _, _, path = tiny_run
    sample.main(["an echocardiogram of a heart beating fast", f"--ckpt={path}", f"--out_dir={tmp_path}",
                 "--steps=3"])
    printed = capsys.readouterr().out
    mp4 = tmp_path / "an-echocardiogram-of-a-heart-beating-fast.mp4"
    assert str(mp4) in printed
    frames = data.read_video(str(mp4))
    assert frames.shape[0] == 5 and frames.shape[-1] == 3 and frames.dtype == np.uint8
    assert (tmp_path / "an-echocardiogram-of-a-heart-beating-fast.png").exists()
    assert (tmp_path / "an-echocardiogram-of-a-heart-beating-fast.gif").exists()

def test_sample_bad_inputs_are_one_line_errors(tiny_run, tmp_path):
    _, _, path = tiny_run
    for argv, msg in ((["x", f"--ckpt={tmp_path}/none.pt"], "no checkpoint at"),
                      ([f"--ckpt={path}", "--prompt= "], "empty prompt"),
                      (["--prompt=FILE:/no.txt", f"--ckpt={path}"], "--prompt=FILE:/no.txt: no such file"),
                      (["x", f"--ckpt={path}", "--num_frames=6"], "1\\+4k")):
        with pytest.raises(SystemExit, match=msg):
            sample.main(argv)

def test_text_encoder_under_bf16_autocast_gives_float32_tokens_near_the_float32_ones(bert):
    """train.py's --frozen_dtype=bfloat16: the frozen text encoder's tokens stay float32, to bf16 rounding."""
    captions = ["heart video", "cell video fast slow hello"]
    want, want_mask = dit.load_text_encoder(bert)(captions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_mask = dit.load_text_encoder(bert)(captions)
    assert got.dtype == torch.float32 and torch.equal(got_mask, want_mask)
    err = (got - want).norm() / want.norm()
    assert 0 < err < 3e-2, err

def test_vae_dtype_autocasts_the_vae_stage_only_and_keeps_its_loss_to_bf16_rounding():
    """--vae_dtype picks the VAE stage's autocast dtype (auto: --dtype's); the DiT stages keep --dtype."""
    cfg = data.parse_args(train.TrainConfig, [], train.PRESETS)  # the tiny preset: a bf16 VAE stage
    assert [train.stage_dtype(cfg, s, "cpu") for s in ("vae", "align", "instruct")] == ["bfloat16", "float32",
                                                                                      "float32"]
    cfg = data.parse_args(train.TrainConfig, ["--vae_dtype=auto", "--dtype=float16"], train.PRESETS)
    assert [train.stage_dtype(cfg, s, "cpu") for s in ("vae", "align")] == ["float16", "float16"]
    cfg = data.parse_args(train.TrainConfig, ["--vae_dtype=auto"], train.PRESETS)
    assert [train.stage_dtype(cfg, "vae", d) for d in ("cuda", "cpu")] == ["bfloat16", "float32"]
    torch.manual_seed(0)
    vae = train.CausalVideoVAE(train.vae_config("tiny"))
    video = torch.rand(2, 5, 3, 16, 16) * 2 - 1  # (B, F, 3, H, W)
    losses = []
    for ctx in (torch.autocast("cpu", enabled=False), torch.autocast("cpu", dtype=torch.bfloat16)):
        torch.manual_seed(1)  # the same posterior sample in both
        with ctx:
            losses.append(vae.loss(video)[0].float().item())
    rel = abs(losses[1] - losses[0]) / losses[0]
    assert 0 < rel < 2e-2, losses

def test_bf16_options_fall_back_to_float32_on_a_cpu_without_native_bf16(monkeypatch, capsys):
    """The tiny preset's bf16 VAE stage and frozen encoders: kept where the CPU runs bf16 natively (and on
    CUDA), float32 with a one-line note on an AVX2-only CPU, where emulated bf16 is ~20x slower."""
    cfg = data.parse_args(train.TrainConfig, ["--dtype=bfloat16"], train.PRESETS)
    monkeypatch.setattr(train, "cpu_has_fast_bf16", lambda: True)
    assert train.bf16_fallback(cfg, "cpu") == cfg
    monkeypatch.setattr(train, "cpu_has_fast_bf16", lambda: False)
    assert train.bf16_fallback(cfg, "cuda:0") == cfg
    got = train.bf16_fallback(cfg, "cpu")
    assert (got.dtype, got.vae_dtype, got.frozen_dtype) == ("float32", "float32", "float32")
    assert train.stage_dtype(got, "vae", "cpu") == "float32"
    changed = {k for k in vars(cfg) if getattr(cfg, k) != getattr(got, k)}
    assert changed == {"dtype", "vae_dtype", "frozen_dtype"}  # nothing else touched
    assert capsys.readouterr().out.count("no native bfloat16") == 1

def test_frozen_bf16_gives_the_float32_training_loss_to_rounding(tiny_run):
    """--frozen_dtype=bfloat16 changes only the precision of the DiT's inputs: on one batch, the same t and
    noise, the loss is the float32 one to bf16 rounding, and still differs from it (it did run in bf16)."""
    root, args, ckpt_path = tiny_run
    init = data.load_checkpoint(ckpt_path)
    losses = {}
    for frozen in ("float32", "bfloat16"):
        cfg = data.parse_args(train.TrainConfig, args + ["--stage=instruct", f"--frozen_dtype={frozen}"],
                              train.PRESETS)
        s = train.setup_dit(cfg, "instruct", init, "cpu")
        ds = train.make_dataset(cfg, "instruct")
        items = [ds[i] for i in range(4)]
        batch = dict(video=torch.stack([it["video"] for it in items]), text=[it["text"] for it in items])
        torch.manual_seed(0)  # the same posterior sample, t and noise in both
        losses[frozen] = s.loss(s.model, s.heads, batch)[0].item()
    rel = abs(losses["bfloat16"] - losses["float32"]) / losses["float32"]
    assert 0 < rel < 2e-2, losses
