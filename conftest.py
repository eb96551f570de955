"""
What the test files share: a tiny BERT text encoder saved with save_pretrained (no model hub here), one tiny
training chain through train.main (once per session), and builders of small models, videos and CSV files
(import them: from conftest import tiny_dit).
"""
import csv
import os

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

import dit
import train

HERE = os.path.dirname(os.path.abspath(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))
TINY = dit.DIT_PRESETS["tiny"]  # the tiny preset's width and depth

# the smallest real pipeline: 5 frames at 16 px (2 latent frames of 4 x 4), the tiny preset's DiT
TINY_RUN = ["--size=16", "--num_frames=5", "--batch_size=2", "--vae_batch_size=2", "--num_clips=40",
            "--num_workers=0", "--log_every=1", "--preview_steps=2", "--warmup_steps=1", "--vae_steps=2",
            "--align_steps=3", "--instruct_steps=2"]

@pytest.fixture(scope="session")
def bert(tmp_path_factory):
    """A folder with a 1-layer BERT and its word-piece tokenizer, as from_pretrained reads them."""
    path = tmp_path_factory.mktemp("bert")
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "heart",
                                               "cell", "video", "fast", "slow"]) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=16, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(path)
    return str(path)

@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, bert):
    """vae -> align -> instruct, 2-3 steps each: (root, the arguments, root/out/instruct.pt)."""
    root = tmp_path_factory.mktemp("run")
    args = TINY_RUN + [f"--text_encoder={bert}", f"--out_dir={root / 'out'}"]
    return root, args, train.main(args)

# ----------------------------------------------------------------------------------------------
# Builders: one of each kind of small model, input, video and CSV file

def dit_cfg(**kw):
    """A DiT small enough for a unit test: 4 x 4 latents of 4 channels (2 x 2 tokens), 3 latent frames, 16-d
    text tokens; width 32 and 4 blocks unless kw says otherwise (e.g. **TINY)."""
    base = dict(input_size=4, num_frames=3, in_channels=4, patch_size=2, hidden_size=32, depth=4, num_heads=4,
                text_dim=16, max_text_len=8)
    return dit.DiTConfig(**{**base, **kw})

def tiny_dit(**kw):
    return dit.DiT(dit_cfg(**kw))

def dit_inputs(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.num_frames, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    text, mask = torch.randn(B, 5, cfg.text_dim, generator=g), torch.ones(B, 5, dtype=torch.bool)
    return x, torch.tensor([10, 700])[:B], text, mask

def randomize_(model, std=0.05):
    """Give every parameter random values, so zero-initialised gates stop hiding bugs."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model

def save_tiny_teacher(path, kind):
    # imported here: the registers model needs a newer transformers than the rest of the suite
    from transformers import (Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel,
                              ViTConfig, ViTModel)
    torch.manual_seed(0)
    kw = dict(hidden_size=24, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, patch_size=4,
              image_size=16)
    if kind == "vit":  # DINO v1 checkpoints on the hub are ViTModel without a pooler
        ViTModel(ViTConfig(**kw), add_pooling_layer=False).save_pretrained(path)
    elif kind == "dinov2":
        Dinov2Model(Dinov2Config(**kw)).save_pretrained(path)
    else:
        Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kw, num_register_tokens=2)).save_pretrained(path)
    return str(path)

def moving(T, H=20, W=24, seed=0, speed=0.7):
    """uint8 (T, H, W, 3): smooth colour waves drifting `speed` radians per frame (a video that moves)."""
    t, y, x = np.arange(T)[:, None, None], *np.mgrid[:H, :W]
    ph = np.random.default_rng(seed).uniform(0, 6, 3)
    chans = [np.sin(x / 3 + speed * t + ph[c]) * np.cos(y / 4 - 0.3 * speed * t + ph[c]) for c in range(3)]
    return (127 + 110 * np.stack(chans, -1)).astype(np.uint8)                # (T, H, W, 3)

def write_csv(path, rows, header=("path", "text", "modality")):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(([header] if header else []) + [list(r) for r in rows])
    return str(path)

def _npy_corpus(root, counts=(("endoscopy", 6), ("ultrasound", 3), ("cell", 2)), corrupt=True):
    rows = []
    for m, n in counts:
        os.makedirs(root / m, exist_ok=True)
        for k in range(n):
            np.save(root / m / f"{k}.npy", moving(8 + k, 20, 24, seed=len(rows)))
            rows.append((f"{m}/{k}.npy", f"{m} clip {k}", m, 8 + k))
    if corrupt:
        (root / "cell" / "bad.npy").write_bytes(b"\x93NUMPY garbage")
        rows.append(("cell/bad.npy", "bad", "cell", 8))
    return write_csv(root / "videos.csv", rows, header=("path", "text", "modality", "num_frames"))
