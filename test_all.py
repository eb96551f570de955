"""
medvid's claims about the whole chain, as executable checks: a checkpoint round-trips bit for bit, and one
tiny vae -> align -> instruct run (conftest.tiny_run) writes checkpoints, freezes what Bora freezes and
resumes bit for bit. CPU only.
"""
import math
import os

import pytest
import torch

import data
import dit
import train
from conftest import randomize_, save_tiny_teacher, tiny_dit

# ----------------------------------------------------------------------------------------------
# train.py: one tiny chain (conftest.tiny_run) writes checkpoints, freezes what align freezes, resumes exactly

def test_checkpoint_round_trip_is_bit_identical_and_atomic(tmp_path):
    model = randomize_(tiny_dit())
    path = str(tmp_path / "ck.pt")
    data.save_checkpoint(dict(model=model.state_dict(), step=7, model_args={"a": 1}), path)
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temp file left behind
    back = data.load_checkpoint(path)
    assert back["step"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(v, back["model"][k]), k
    with pytest.raises(SystemExit, match="no checkpoint at"):
        data.load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="corrupt"):
        data.load_checkpoint(str(tmp_path / "junk.pt"))

def test_full_chain_writes_checkpoints_and_previews(tiny_run):
    root, _, path = tiny_run
    assert path == str(root / "out" / "instruct.pt")
    for stage in ("vae", "align", "instruct"):
        ck = data.load_checkpoint(str(root / "out" / f"{stage}.pt"))
        assert ck["stage"] == stage and ck["step"] == {"vae": 2, "align": 3, "instruct": 2}[stage]
        assert os.path.getsize(root / "out" / "previews" / f"{stage}.gif") > 0
    ck = data.load_checkpoint(path)
    assert set(ck) >= {"model", "ema", "optimizer", "model_args", "step", "config", "vae", "vae_args"}
    assert ck["model_args"]["num_frames"] == 3 and ck["model_args"]["input_size"] == 4  # 5 frames, x2 in time

def test_align_stage_leaves_temporal_parameters_unchanged(tiny_run, tmp_path):
    # start an align run from the finished align checkpoint: after its optimizer steps, every temporal-block
    # tensor is bit-identical to the start, and the spatial ones have moved
    root, args, _ = tiny_run
    start = data.load_checkpoint(str(root / "out" / "align.pt"))
    args = [a for a in args if not a.startswith("--out_dir")] + [f"--out_dir={tmp_path}", "--stage=align",
                                                                   f"--init_from={root / 'out' / 'align.pt'}"]
    end = data.load_checkpoint(train.main(args))
    temporal = [k for k in start["model"] if k.startswith("blocks.") and int(k.split(".")[1]) % 2 == 1]
    spatial = [k for k in start["model"] if k.startswith("blocks.") and int(k.split(".")[1]) % 2 == 0]
    assert temporal and all(torch.equal(start["model"][k], end["model"][k]) for k in temporal)
    assert any(not torch.equal(start["model"][k], end["model"][k]) for k in spatial)
    # frozen tensors are not in the optimizer at all: its state covers only the trainable ones
    n_trainable = sum(v.numel() for k, v in start["model"].items() if k not in temporal)
    n_state = sum(s["exp_avg"].numel() for s in end["optimizer"]["state"].values())
    assert n_state == n_trainable

def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(tiny_run, tmp_path):
    root, args, _ = tiny_run
    base = [a for a in args if not a.startswith("--out_dir") and not a.startswith("--instruct_steps")]
    base += ["--stage=instruct", f"--init_from={root / 'out' / 'align.pt'}", "--instruct_steps=4"]
    straight = data.load_checkpoint(train.main(base + [f"--out_dir={tmp_path / 'a'}"]))
    # stopped at step 2
    assert train.main(base + [f"--out_dir={tmp_path / 'b'}", "--max_run_steps=2"]) is None
    assert data.load_checkpoint(str(tmp_path / "b" / "instruct.pt"))["step"] == 2
    resumed = data.load_checkpoint(train.main(base + [f"--out_dir={tmp_path / 'b'}", "--resume=True"]))
    assert resumed["step"] == 4
    for key in ("model", "ema"):
        for k, v in straight[key].items():
            assert torch.equal(v, resumed[key][k]), (key, k)

def test_train_with_priors_logs_them_saves_the_heads_and_resumes_bit_identically(tiny_run, tmp_path, capsys):
    root, args, _ = tiny_run
    vit = save_tiny_teacher(tmp_path / "vit", "vit")
    base = [a for a in args if not a.startswith("--out_dir")] + [
        "--stage=instruct", f"--init_from={root / 'out' / 'vae.pt'}", "--instruct_steps=3", f"--dino={vit}",
        "--flow=hs", "--dino_mode=token"]
    straight = data.load_checkpoint(train.main(base + [f"--out_dir={tmp_path / 'a'}"]))
    log = capsys.readouterr().out + capsys.readouterr().err
    assert "| dino " in log and "| flow " in log and "priors: DINO" in log
    assert straight["prior_args"]["dino_mode"] == "token" and straight["priors"]
    assert train.main(base + [f"--out_dir={tmp_path / 'b'}", "--max_run_steps=2"]) is None
    resumed = data.load_checkpoint(train.main(base + [f"--out_dir={tmp_path / 'b'}", "--resume=True"]))
    for key in ("model", "ema", "priors"):
        for k, v in straight[key].items():
            assert torch.equal(v, resumed[key][k]), (key, k)
    model = dit.DiT.from_checkpoint(straight)  # what sample.py does: the projector heads are not part of it
    assert not any(k.startswith(("dino_proj", "flow_proj")) for k in model.state_dict())

def test_v_prediction_trains_logs_a_validation_loss_and_its_objective_travels_with_the_dit(tiny_run, tmp_path,
                                                                                          capsys):
    root, args, _ = tiny_run
    base = [a for a in args if not a.startswith("--out_dir")] + ["--val_clips=2", "--snr_gamma=5.0"]
    align = base + ["--stage=align", f"--init_from={root / 'out' / 'vae.pt'}", f"--out_dir={tmp_path}",
                    "--prediction=v", "--noise_corr=0.5", "--motion_scale=3"]
    ck = data.load_checkpoint(train.main(align))
    assert ck["model_args"]["prediction"] == "v" and ck["model_args"]["noise_corr"] == 0.5
    assert ck["model_args"]["motion_scale"] == 3.0
    vals = [float(line.split("| val ")[1].split()[0]) for line in capsys.readouterr().out.splitlines()
            if "| val " in line]
    assert len(vals) == 3 and all(math.isfinite(v) for v in vals)
    # the next stage cannot silently switch what the network predicts
    instruct = base + ["--stage=instruct", f"--init_from={tmp_path / 'align.pt'}", f"--out_dir={tmp_path}",
                       "--prediction=eps", "--snr_floor=0"]
    with pytest.raises(SystemExit, match="prediction=eps but the DiT .* was trained with prediction=v"):
        train.main(instruct)
    with pytest.raises(SystemExit, match="motion_scale=.* was trained with motion_scale=3.0"):
        train.main(instruct[:-2] + ["--prediction=v", "--noise_corr=0.5"])

if __name__ == "__main__":
    raise SystemExit(pytest.main(["-q", __file__]))

def test_dit_args_set_the_new_dit_and_a_bad_one_is_a_one_line_error(tiny_run, tmp_path):
    root, args, _ = tiny_run
    args = [a for a in args if not a.startswith("--out_dir")] + [
        f"--out_dir={tmp_path}", "--stage=align", "--align_steps=1", f"--init_from={root / 'out' / 'vae.pt'}"]
    ck = data.load_checkpoint(train.main(args + ["--dit_args=hidden_size=48,num_heads=2,depth=2"]))
    assert [ck["model_args"][k] for k in ("hidden_size", "num_heads", "depth")] == [48, 2, 2]
    assert ck["model"]["x_embedder.weight"].shape[0] == 48  # the weights are that DiT's, not the preset's
    assert not any(k.startswith("blocks.2.") for k in ck["model"])  # two blocks, not the preset's eight
    with pytest.raises(SystemExit, match="hidden_size=50: hidden_size must be a multiple of num_heads"):
        train.main(args + ["--dit_args=hidden_size=50"])
    with pytest.raises(SystemExit, match="--dit_args=depth=3: depth counts blocks"):
        train.main(args + ["--dit_args=depth=3"])
    with pytest.raises(SystemExit, match="--dit_args=depth: give key=value pairs"):
        train.main(args + ["--dit_args=depth"])
