"""
What test_all.py and test_plumbing.py share: a tiny BERT text encoder saved with save_pretrained (no model
hub is reachable here), and one tiny training chain through train.main, run once per session.
"""
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

import train

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
