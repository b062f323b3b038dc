"""Tiny models and paths the tests share (importable; the fixtures built on them live in conftest.py)."""

import os
from pathlib import Path

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(**overrides):
    from losam_peft import sam_vision_config

    values = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=64,
        global_attn_indexes=[1],
        image_size=64,
        patch_size=8,
        window_size=4,
        output_channels=32,
        num_pos_feats=16,
        initializer_range=0.02,
    )
    values.update(overrides)
    return sam_vision_config("tiny", **values)


def tiny_model(seed=0, **overrides):
    from losam_peft import SamForSemanticSegmentation

    torch.manual_seed(seed)
    model = SamForSemanticSegmentation(tiny_config(**overrides))
    # SAM initialises its position tables to zero; give them values so that resizing and exactness tests see them
    with torch.no_grad():
        encoder = model.vision_encoder
        encoder.pos_embed.normal_(0, 0.02)
        for layer in encoder.layers:
            layer.attn.rel_pos_h.normal_(0, 0.02)
            layer.attn.rel_pos_w.normal_(0, 0.02)
    return model.eval()
