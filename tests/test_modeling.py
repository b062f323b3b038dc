"""The model folder (config class, Auto classes, transformers' loading machinery), the reference's forward, and
transformers' conventions (pipeline, image processor, load_adapter)."""

import json
import logging
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config, tiny_model
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForSemanticSegmentation,
    SamConfig,
    SamModel,
    SamVisionConfig,
    SamVisionModel,
)
from transformers.models.sam.modeling_sam import SamLayerNorm, SamVisionAttention

import losam_peft
from losam_peft import (
    LoSamConfig,
    LoSamImageProcessor,
    LoSamSegmentationConfig,
    SamForSemanticSegmentation,
)
from losam_peft.convert_reference import reference_config, reference_reduction, reference_state_dict_to_losam
from losam_peft.errors import CheckpointError, LoSamError
from losam_peft.modeling_losam import LoSamSegmentationHead


def _randomise_head(model, seed=7):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.segmentation_head.state_dict(keep_vars=True).items():
            if tensor.dtype.is_floating_point:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
                if "running_var" in name:
                    tensor.abs_()
    return model


def _vision_fields(config):
    return {k: v for k, v in config.to_dict().items() if k in SamVisionConfig.__dataclass_fields__}


def _save_legacy_folder(model, folder):
    """A folder as losam-peft wrote it before LoSamSegmentationConfig: a SamVisionConfig with id2label and
    use_fast_path, architectures SamForSemanticSegmentation, keys vision_encoder.* and segmentation_head.*."""
    config = SamVisionConfig(**_vision_fields(model.config))
    config.use_fast_path = True
    config.architectures = ["SamForSemanticSegmentation"]
    config.save_pretrained(folder)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    data = json.loads((folder / "config.json").read_text())
    assert data["model_type"] == "sam_vision_model" and "align_corners" not in data and "auto_map" not in data


# -- the config class and the model folder ---------------------------------------------------------------------------
def test_saved_config_has_its_own_model_type_fields_and_auto_map(tmp_path):
    model = tiny_model()
    assert isinstance(model.config, LoSamSegmentationConfig) and isinstance(model.config, SamVisionConfig)
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "losam_sam_segmentation"
    assert data["architectures"] == ["SamForSemanticSegmentation"]
    assert data["align_corners"] is True and data["use_fast_path"] is True
    assert data["semantic_loss_ignore_index"] == 255
    assert data["auto_map"] == {
        "AutoConfig": "losam_peft.configuration_losam.LoSamSegmentationConfig",
        "AutoModelForSemanticSegmentation": "losam_peft.modeling_losam.SamForSemanticSegmentation",
    }
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LoSamSegmentationConfig)


@pytest.mark.parametrize("trust_remote_code", [None, False, True])
def test_auto_model_loads_a_saved_folder_without_remote_code(tmp_path, trust_remote_code):
    model = _randomise_head(tiny_model())
    model.save_pretrained(tmp_path)
    pixels = torch.randn(1, 3, 64, 64)
    kwargs = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
    with torch.no_grad():
        auto = AutoModelForSemanticSegmentation.from_pretrained(tmp_path, **kwargs)
        assert type(auto) is SamForSemanticSegmentation
        assert torch.equal(auto(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_transformers_sam_vision_config_is_not_registered_for_segmentation():
    with pytest.raises(ValueError):
        AutoModelForSemanticSegmentation.from_config(SamVisionConfig())
    model = AutoModelForSemanticSegmentation.from_config(tiny_config())
    assert type(model) is SamForSemanticSegmentation


def test_a_plain_sam_vision_config_becomes_the_package_config():
    config = SamVisionConfig(**_vision_fields(tiny_config()))
    model = SamForSemanticSegmentation(config)
    assert isinstance(model.config, LoSamSegmentationConfig)
    assert model.config.align_corners is True and model.config.use_fast_path is True
    assert model.config.hidden_size == 32 and model.vision_encoder.config is model.config


def test_legacy_folder_loads_with_align_corners_false_and_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    old = _randomise_head(tiny_model(align_corners=False, id2label={0: "background", 1: "vessel"}))
    _save_legacy_folder(old, tmp_path / "old")
    pixels = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = SamForSemanticSegmentation.from_pretrained(tmp_path / "old")
    assert loaded.config.align_corners is False and loaded.config.id2label == {0: "background", 1: "vessel"}
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixels).logits, old(pixel_values=pixels).logits)
    # saved again, it is a new-format folder that keeps align_corners=False
    loaded.save_pretrained(tmp_path / "again")
    data = json.loads((tmp_path / "again" / "config.json").read_text())
    assert data["model_type"] == "losam_sam_segmentation" and data["align_corners"] is False
    assert AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "again").config.align_corners is False


def test_sam_vision_model_checkpoint_loads_with_a_fresh_head(tmp_path):
    torch.manual_seed(2)
    vision = SamVisionModel(SamVisionConfig(**_vision_fields(tiny_config())))
    vision.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "sam_vision_model"
    model = SamForSemanticSegmentation.from_pretrained(tmp_path, num_labels=3)
    assert model.config.align_corners is True and model.config.num_labels == 3
    for key, value in vision.vision_encoder.state_dict().items():
        assert torch.equal(model.vision_encoder.state_dict()[key], value), key


def _assert_pytorch_default_head(head):
    for module in head.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and the bias share this bound
            assert module.weight.abs().max() <= bound + 1e-7 and module.weight.abs().max() > 0.3 * bound
            assert module.bias.abs().max() <= bound + 1e-7 and module.bias.abs().max() > 0
    assert torch.equal(head.norm1.weight, torch.ones_like(head.norm1.weight))
    assert torch.equal(head.norm3.running_var, torch.ones_like(head.norm3.running_var))
    assert torch.equal(head.norm3.running_mean, torch.zeros_like(head.norm3.running_mean))


def test_fresh_head_uses_pytorch_default_init_not_sams_initializer_range(tmp_path):
    # transformers' SAM configs say initializer_range=1e-10, which would start the head at ~0
    _assert_pytorch_default_head(SamForSemanticSegmentation(tiny_config(initializer_range=1e-10)).segmentation_head)
    sam = SamModel(SamConfig(vision_config=tiny_config(initializer_range=1e-10).to_dict()))
    sam.save_pretrained(tmp_path / "sam")
    loaded = SamForSemanticSegmentation.from_pretrained(tmp_path / "sam")
    _assert_pytorch_default_head(loaded.segmentation_head)
    for key, value in sam.vision_encoder.state_dict().items():
        assert torch.equal(loaded.vision_encoder.state_dict()[key], value), key


def test_labels_changed_drop_the_saved_head_with_a_warning(tmp_path, caplog):
    model = _randomise_head(tiny_model(id2label={0: "background", 1: "vessel"}))
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO), pytest.warns(UserWarning, match="made for other labels") as caught:
        renamed = SamForSemanticSegmentation.from_pretrained(tmp_path, id2label={0: "background", 1: "disc"})
    assert len([w for w in caught if "made for other labels" in str(w.message)]) == 1
    assert not any("made for other labels" in r.getMessage() for r in caplog.records if r.levelno < logging.WARNING)
    assert renamed.config.id2label == {0: "background", 1: "disc"}
    assert not torch.equal(renamed.segmentation_head.up1.weight, model.segmentation_head.up1.weight)
    _assert_pytorch_default_head(renamed.segmentation_head)
    with pytest.warns(UserWarning, match="made for other labels"):
        three = SamForSemanticSegmentation.from_pretrained(tmp_path, num_labels=3)
    assert three.segmentation_head.classifier.weight.shape[0] == 3
    # transformers' own behaviour on request: only the weights whose shapes changed are re-initialised
    kept = SamForSemanticSegmentation.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True)
    assert torch.equal(kept.segmentation_head.up1.weight, model.segmentation_head.up1.weight)
    assert kept.segmentation_head.classifier.weight.shape[0] == 3
    # the same labels: the saved head, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = SamForSemanticSegmentation.from_pretrained(tmp_path, num_labels=2)
        assert torch.equal(same.segmentation_head.up1.weight, model.segmentation_head.up1.weight)
        # naming the labels of a head saved with transformers' generic LABEL_i names keeps the head too
        generic = _randomise_head(tiny_model())
        generic.save_pretrained(tmp_path / "generic")
        named = SamForSemanticSegmentation.from_pretrained(tmp_path / "generic", id2label={0: "bg", 1: "vessel"})
    assert named.config.id2label == {0: "bg", 1: "vessel"} and named.config.label2id == {"bg": 0, "vessel": 1}
    assert torch.equal(named.segmentation_head.up1.weight, generic.segmentation_head.up1.weight)


def test_transformers_loading_arguments(tmp_path):
    model = _randomise_head(tiny_model())
    model.save_pretrained(tmp_path / "repo" / "sub")
    folder = tmp_path / "repo" / "sub"
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        for kwargs in (dict(dtype=torch.bfloat16), dict(torch_dtype="bfloat16")):
            low = SamForSemanticSegmentation.from_pretrained(folder, **kwargs)
            assert all(p.dtype == torch.bfloat16 for p in low.parameters())
        low.save_pretrained(tmp_path / "bf16")
        assert SamForSemanticSegmentation.from_pretrained(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16
        assert SamForSemanticSegmentation.from_pretrained(folder, dtype="auto").dtype == torch.float32
        on_cpu = SamForSemanticSegmentation.from_pretrained(folder, device_map="cpu")
        assert torch.equal(on_cpu(pixel_values=pixels).logits, expected)
        eager = SamForSemanticSegmentation.from_pretrained(folder, attn_implementation="eager", use_fast_path=False)
        assert type(eager.vision_encoder.layers[0].attn) is SamVisionAttention
        torch.testing.assert_close(eager(pixel_values=pixels).logits, expected, rtol=1e-4, atol=1e-5)
        nested = SamForSemanticSegmentation.from_pretrained(tmp_path / "repo", subfolder="sub")
        assert torch.equal(nested(pixel_values=pixels).logits, expected)
        loaded, info = SamForSemanticSegmentation.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        # a config field given as keyword argument
        assert SamForSemanticSegmentation.from_pretrained(folder, align_corners=False).config.align_corners is False


def test_explicit_config_with_another_image_size_resizes_after_loading(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    config = tiny_config(image_size=128)
    loaded = SamForSemanticSegmentation.from_pretrained(tmp_path, config=config)
    assert loaded.config.image_size == 128 and loaded.vision_encoder.pos_embed.shape == (1, 16, 16, 32)
    expected = F.interpolate(model.vision_encoder.pos_embed.permute(0, 3, 1, 2), size=(16, 16), mode="bicubic")
    torch.testing.assert_close(loaded.vision_encoder.pos_embed.permute(0, 3, 1, 2), expected)
    assert loaded(pixel_values=torch.randn(1, 3, 128, 128)).logits.shape == (1, 2, 128, 128)


def test_safetensors_only(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors") as caught:
        SamForSemanticSegmentation.from_pretrained(tmp_path / "bin")
    assert str(tmp_path / "bin") in str(caught.value) and "pytorch_model.bin" in str(caught.value)
    assert caught.value.path == tmp_path / "bin"
    model.save_pretrained(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="safetensors files only"):
        SamForSemanticSegmentation.from_pretrained(tmp_path / "ok", use_safetensors=False)


def test_head_layer_norms_are_transformers_sam_layer_norm_with_unchanged_keys():
    head = LoSamSegmentationHead(64, num_labels=2)
    for norm in (head.norm1, head.norm2):
        assert isinstance(norm, SamLayerNorm) and norm.data_format == "channels_first" and norm.eps == 1e-6
    x = torch.randn(2, 32, 5, 6)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (32,), head.norm1.weight, head.norm1.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(head.norm1(x), expected)
    assert sorted(head.state_dict()) == sorted(
        [f"up{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
        + [f"norm{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
        + ["norm3.running_mean", "norm3.running_var", "norm3.num_batches_tracked"]
        + [f"multiscale.branches.{i}.{p}" for i in range(4) for p in ("weight", "bias")]
        + ["classifier.weight", "classifier.bias"]
    )


# -- the reference's forward -----------------------------------------------------------------------------------------
REF = dict(embed=32, depth=3, heads=2, patch=8, image=64, window=3, global_layers=(1,), neck=32, classes=3, r=4)


def _reference_state_dict(seed=0, **overrides):
    """A random PromptSAM state dict with the reference's key names (CHECKPOINTS.md) at a small size."""
    spec = dict(REF, **overrides)
    c, d, r, n = spec["embed"], spec["embed"] // spec["heads"], spec["r"], spec["neck"]
    grid = spec["image"] // spec["patch"]
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def norm(channels):
        return 1 + rnd(channels, scale=0.1), rnd(channels, scale=0.1)

    sd = {}
    e = "sam.image_encoder."
    sd[e + "pos_embed"] = rnd(1, grid, grid, c)
    sd[e + "patch_embed.proj.weight"] = rnd(c, 3, spec["patch"], spec["patch"], scale=0.05)
    sd[e + "patch_embed.proj.bias"] = rnd(c)
    for i in range(spec["depth"]):
        b = f"{e}blocks.{i}."
        size = grid if i in spec["global_layers"] else spec["window"]
        sd[b + "block.norm1.weight"], sd[b + "block.norm1.bias"] = norm(c)
        sd[b + "block.attn.rel_pos_h"] = rnd(2 * size - 1, d, scale=0.5)
        sd[b + "block.attn.rel_pos_w"] = rnd(2 * size - 1, d, scale=0.5)
        sd[b + "block.attn.qkv.weight"], sd[b + "block.attn.qkv.bias"] = rnd(3 * c, c), rnd(3 * c)
        sd[b + "block.attn.proj.weight"], sd[b + "block.attn.proj.bias"] = rnd(c, c), rnd(c)
        sd[b + "block.norm2.weight"], sd[b + "block.norm2.bias"] = norm(c)
        sd[b + "block.mlp.lin1.weight"], sd[b + "block.mlp.lin1.bias"] = rnd(4 * c, c), rnd(4 * c)
        sd[b + "block.mlp.lin2.weight"], sd[b + "block.mlp.lin2.bias"] = rnd(c, 4 * c, scale=0.1), rnd(c)
        sd[b + "prompt_learn.0.weight"], sd[b + "prompt_learn.0.bias"] = rnd(c // r, c, 1, 1), rnd(c // r)
        sd[b + "prompt_learn.1.weight"], sd[b + "prompt_learn.1.bias"] = norm(c // r)
        sd[b + "prompt_learn.3.weight"] = rnd(c // r, 1, 3, 3)
        sd[b + "prompt_learn.4.weight"], sd[b + "prompt_learn.4.bias"] = norm(c // r)
        sd[b + "prompt_learn.6.weight"], sd[b + "prompt_learn.6.bias"] = rnd(c, c // r, 1, 1), rnd(c)
        sd[b + "prompt_learn.7.weight"], sd[b + "prompt_learn.7.bias"] = norm(c)
    sd[e + "neck.0.weight"] = rnd(n, c, 1, 1)
    sd[e + "neck.1.weight"], sd[e + "neck.1.bias"] = norm(n)
    sd[e + "neck.2.weight"] = rnd(n, n, 3, 3, scale=0.1)
    sd[e + "neck.3.weight"], sd[e + "neck.3.bias"] = norm(n)
    mid, low = n // 2, n // 4
    sd["up_conv.up_1.0.weight"], sd["up_conv.up_1.0.bias"] = rnd(n, mid, 2, 2), rnd(mid)
    sd["up_conv.up_1.1.weight"], sd["up_conv.up_1.1.bias"] = norm(mid)
    sd["up_conv.up_2.0.weight"], sd["up_conv.up_2.0.bias"] = rnd(mid, low, 2, 2), rnd(low)
    sd["up_conv.up_2.1.weight"], sd["up_conv.up_2.1.bias"] = norm(low)
    q = low // 4
    sd["ms_conv.convs.0.weight"], sd["ms_conv.convs.0.bias"] = rnd(q, q, 1, 1), rnd(q)
    for i in (1, 2, 3):
        sd[f"ms_conv.convs.{i}.weight"], sd[f"ms_conv.convs.{i}.bias"] = rnd(q, 1, 3, 3), rnd(q)
    sd["ms_conv.norm.weight"], sd["ms_conv.norm.bias"] = norm(low)
    sd["ms_conv.norm.running_mean"] = rnd(low, scale=0.1)
    sd["ms_conv.norm.running_var"] = 0.5 + torch.rand(low, generator=g)
    sd["ms_conv.norm.num_batches_tracked"] = torch.tensor(10)
    sd["decoder.0.weight"], sd["decoder.0.bias"] = rnd(spec["classes"], low, 1, 1), rnd(spec["classes"])
    return sd, spec


def _layer_norm_2d(x, weight, bias, eps=1e-6):
    mean = x.mean(dim=1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def _reference_attention(x, p, heads):
    """Global multi-head attention with SAM's decomposed relative positions, on (B, H, W, C) tokens."""
    batch, height, width, _ = x.shape
    qkv = F.linear(x, p["attn.qkv.weight"], p["attn.qkv.bias"]).reshape(batch, height * width, 3, heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, batch * heads, height * width, -1).unbind(0)
    dim = q.shape[-1]
    logits = (q * dim**-0.5) @ k.transpose(-2, -1)
    # relative position r_h[i - j + (H - 1)] between query row i and key row j (and the same for columns)
    rows = p["attn.rel_pos_h"][torch.arange(height)[:, None] - torch.arange(height)[None, :] + height - 1]
    cols = p["attn.rel_pos_w"][torch.arange(width)[:, None] - torch.arange(width)[None, :] + width - 1]
    grid_q = q.reshape(batch * heads, height, width, dim)
    rel_rows = torch.einsum("bhwc,hkc->bhwk", grid_q, rows)
    rel_cols = torch.einsum("bhwc,wkc->bhwk", grid_q, cols)
    logits = logits.view(batch * heads, height, width, height, width)
    logits = logits + rel_rows[:, :, :, :, None] + rel_cols[:, :, :, None, :]
    probs = logits.view(batch * heads, height * width, height * width).softmax(dim=-1)
    out = (probs @ v).view(batch, heads, height, width, dim).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return F.linear(out, p["attn.proj.weight"], p["attn.proj.bias"])


def _reference_block(x, p, heads, window):
    shortcut = x
    x = F.layer_norm(x, (x.shape[-1],), p["norm1.weight"], p["norm1.bias"], 1e-6)
    if window:
        batch, height, width, channels = x.shape
        pad_h, pad_w = -height % window, -width % window
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = height + pad_h, width + pad_w
        x = x.view(batch, hp // window, window, wp // window, window, channels).permute(0, 1, 3, 2, 4, 5)
        x = _reference_attention(x.reshape(-1, window, window, channels), p, heads)
        x = x.view(batch, hp // window, wp // window, window, window, channels).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch, hp, wp, channels)[:, :height, :width]
    else:
        x = _reference_attention(x, p, heads)
    x = shortcut + x
    y = F.layer_norm(x, (x.shape[-1],), p["norm2.weight"], p["norm2.bias"], 1e-6)
    y = F.linear(
        F.gelu(F.linear(y, p["mlp.lin1.weight"], p["mlp.lin1.bias"])), p["mlp.lin2.weight"], p["mlp.lin2.bias"]
    )
    return x + y


def _reference_prompt(x, p):
    """The reference's prompt_learn Sequential on channels-first features."""
    y = F.gelu(_layer_norm_2d(F.conv2d(x, p["0.weight"], p["0.bias"]), p["1.weight"], p["1.bias"]))
    y = F.conv2d(y, p["3.weight"], None, padding=1, groups=y.shape[1])
    y = F.gelu(_layer_norm_2d(y, p["4.weight"], p["4.bias"]))
    return F.gelu(_layer_norm_2d(F.conv2d(y, p["6.weight"], p["6.bias"]), p["7.weight"], p["7.bias"]))


def _reference_forward(sd, spec, pixels):
    """PromptSAM's forward written from REFERENCE.md/CHECKPOINTS.md: SAM's encoder with a prompt before every block,
    the neck, the head, and bilinear upsampling to the input size with align_corners=True."""
    e = "sam.image_encoder."

    def sub(prefix):
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    x = F.conv2d(pixels, sd[e + "patch_embed.proj.weight"], sd[e + "patch_embed.proj.bias"], stride=spec["patch"])
    x = x.permute(0, 2, 3, 1) + sd[e + "pos_embed"]
    for i in range(spec["depth"]):
        x = x + _reference_prompt(x.permute(0, 3, 1, 2), sub(f"{e}blocks.{i}.prompt_learn.")).permute(0, 2, 3, 1)
        window = 0 if i in spec["global_layers"] else spec["window"]
        x = _reference_block(x, sub(f"{e}blocks.{i}.block."), spec["heads"], window)
    x = F.conv2d(x.permute(0, 3, 1, 2), sd[e + "neck.0.weight"])
    x = _layer_norm_2d(x, sd[e + "neck.1.weight"], sd[e + "neck.1.bias"])
    x = F.conv2d(x, sd[e + "neck.2.weight"], padding=1)
    x = _layer_norm_2d(x, sd[e + "neck.3.weight"], sd[e + "neck.3.bias"])
    for stage in ("up_1", "up_2"):
        x = F.conv_transpose2d(x, sd[f"up_conv.{stage}.0.weight"], sd[f"up_conv.{stage}.0.bias"], stride=2)
        x = F.gelu(_layer_norm_2d(x, sd[f"up_conv.{stage}.1.weight"], sd[f"up_conv.{stage}.1.bias"]))
    quarter = x.shape[1] // 4
    parts = [F.conv2d(x[:, :quarter], sd["ms_conv.convs.0.weight"], sd["ms_conv.convs.0.bias"])]
    for i in (1, 2, 3):
        chunk = x[:, i * quarter : (i + 1) * quarter]
        w, b = sd[f"ms_conv.convs.{i}.weight"], sd[f"ms_conv.convs.{i}.bias"]
        parts.append(F.conv2d(chunk, w, b, padding=i, dilation=i, groups=quarter))
    x = torch.cat(parts, dim=1)
    x = F.batch_norm(
        x, sd["ms_conv.norm.running_mean"], sd["ms_conv.norm.running_var"], sd["ms_conv.norm.weight"],
        sd["ms_conv.norm.bias"], training=False, eps=1e-5,
    )  # fmt: skip
    x = F.conv2d(F.gelu(x), sd["decoder.0.weight"], sd["decoder.0.bias"])
    return F.interpolate(x, size=pixels.shape[-2:], mode="bilinear", align_corners=True)


def _max_rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _model_from_reference(sd, tmp_path, use_fast_path=True):
    """What `losam convert reference-adapter` will do: base model weights plus a saved LoSAM adapter folder."""
    encoder_state, adapter_state = reference_state_dict_to_losam(sd)
    config = reference_config(sd, use_fast_path=use_fast_path, initializer_range=0.02)
    base = SamForSemanticSegmentation(config)
    result = base.load_state_dict(encoder_state, strict=False)
    assert not result.unexpected_keys
    assert {k.split(".")[0] for k in result.missing_keys} == {"segmentation_head"}
    adapter_dir = tmp_path / f"adapter-{use_fast_path}"
    adapter_dir.mkdir()
    save_file({k: v.contiguous() for k, v in adapter_state.items()}, str(adapter_dir / "adapter_model.safetensors"))
    LoSamConfig(reduction=reference_reduction(sd), base_model_name_or_path="reference", align_corners=True).save_pretrained(
        adapter_dir
    )  # the reference upsamples with align_corners=True; the adapter records it
    return losam_peft.load_adapter(base, adapter_dir).eval()


def test_reference_config_and_parameter_layout_are_read_from_the_shapes():
    sd, spec = _reference_state_dict()
    config = reference_config(sd)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 3, 2)
    assert (config.image_size, config.patch_size, config.window_size) == (64, 8, 3)
    assert list(config.global_attn_indexes) == [1] and config.mlp_dim == 128 and config.output_channels == 32
    assert config.num_labels == 3 and config.align_corners is True and reference_reduction(sd) == 4
    encoder_state, adapter_state = reference_state_dict_to_losam(sd)
    assert len(encoder_state) + len(adapter_state) == len(sd)
    assert adapter_state["base_model.model.vision_encoder.layers.0.losam_prompt.down.weight"].shape == (8, 32)
    assert "base_model.model.segmentation_head.multiscale.branches.3.weight" in adapter_state
    # a bias-free classifier is a zero bias; unknown keys and PromptDiNo checkpoints are refused
    no_bias = {k: v for k, v in sd.items() if k != "decoder.0.bias"}
    assert not reference_state_dict_to_losam(no_bias)[1]["base_model.model.segmentation_head.classifier.bias"].any()
    with pytest.raises(CheckpointError, match="no counterpart"):
        reference_state_dict_to_losam({**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="PromptDiNo"):
        reference_state_dict_to_losam({"encoder.cls_token": torch.zeros(1, 1, 4), "encoder.blocks.0.x": torch.zeros(1)})


@pytest.mark.parametrize("use_fast_path", [True, False])
def test_full_resolution_logits_equal_the_reference_forward(tmp_path, use_fast_path):
    sd, spec = _reference_state_dict()
    model = _model_from_reference(sd, tmp_path, use_fast_path=use_fast_path)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _reference_forward(sd, spec, pixels)
        logits = model(pixel_values=pixels).logits
    assert logits.shape == expected.shape == (2, 3, 64, 64)
    assert _max_rel_err(logits, expected) < 1e-4
    # the comparison is sensitive to the upsampling: align_corners=False is visibly different
    model.base_model.model.config.align_corners = False
    with torch.no_grad():
        assert _max_rel_err(model(pixel_values=pixels).logits, expected) > 1e-3


# -- transformers' conventions ---------------------------------------------------------------------------------------
def test_registration_without_a_usable_auto_image_processor(monkeypatch):
    """transformers 5.17 without torchvision exposes AutoImageProcessor as a placeholder that raises ImportError:
    importing the package must still register the config and model classes."""
    import transformers

    class Placeholder:
        @staticmethod
        def register(*args, **kwargs):
            raise ImportError("AutoImageProcessor requires the Torchvision library")

    monkeypatch.setattr(transformers, "AutoImageProcessor", Placeholder)
    losam_peft._register_auto_classes()  # no error
    config = tiny_config()
    assert type(AutoConfig.for_model(config.model_type)) is type(config)
    assert type(AutoModelForSemanticSegmentation.from_config(config)) is SamForSemanticSegmentation


def test_auto_image_processor_from_a_saved_folder(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    LoSamImageProcessor(image_size=64).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is LoSamImageProcessor and processor.image_size == 64
    assert type(AutoModelForSemanticSegmentation.from_pretrained(tmp_path)) is SamForSemanticSegmentation


def test_transformers_image_segmentation_pipeline_gives_the_models_masks():
    from transformers import pipeline

    model = _randomise_head(tiny_model(id2label={0: "background", 1: "vessel"}), seed=3)
    with torch.no_grad():  # a bias that makes both classes appear
        model.segmentation_head.classifier.bias.copy_(torch.tensor([0.0, 0.0]))
    processor = LoSamImageProcessor(image_size=64)
    pipe = pipeline("image-segmentation", model=model, image_processor=processor)
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8))
    results = pipe(image)
    with torch.no_grad():
        inputs = processor(image)
        outputs = model(pixel_values=inputs["pixel_values"])
    label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[(50, 70)])[0].numpy()
    assert sorted(r["label"] for r in results) == sorted(model.config.id2label[int(i)] for i in np.unique(label_map))
    for result in results:
        class_id = model.config.label2id[result["label"]]
        assert result["mask"].size == (70, 50)
        np.testing.assert_array_equal(np.asarray(result["mask"]), (label_map == class_id).astype(np.uint8) * 255)


def test_model_load_adapter_points_to_the_losam_loaders(tmp_path):
    from peft import get_peft_model

    tiny_model().save_pretrained(tmp_path / "base")
    model = get_peft_model(tiny_model(), LoSamConfig())
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(LoSamError, match=r"losam_peft\.load_adapter.*PeftModel\.from_pretrained"):
        tiny_model().load_adapter(str(tmp_path / "adapter"))
    # transformers' own "an adapter folder given to from_pretrained" path ends in load_adapter too
    with pytest.raises(LoSamError, match=r"losam_peft\.load_adapter"):
        AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "adapter")
    loaded = losam_peft.load_adapter(tiny_model(), tmp_path / "adapter")
    assert isinstance(loaded.base_model, losam_peft.LoSamModel)
