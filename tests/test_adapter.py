"""The LoSAM adapter, the segmentation model and their loading paths (issue 2)."""

import json
import logging
import warnings

import peft
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config, tiny_model
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

import losam_peft
from losam_peft import (
    LoSamConfig,
    LoSamPromptLayer,
    SamForSemanticSegmentation,
    count_parameters,
    sam_vision_config,
)
from losam_peft.adapters import load_adapter
from losam_peft.loading import CheckpointError
from losam_peft.modeling_losam import LoSamSegmentationHead
from losam_peft.tuner import LoSamLayer


def _peft(seed=0, **config):
    torch.manual_seed(seed + 100)
    return get_peft_model(tiny_model(seed), LoSamConfig(**config))


def _randomise_adapter(model, seed):
    """Trained-looking adapter weights (BatchNorm statistics included) so that comparisons are not trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if ("losam_" in name or "segmentation_head" in name) and tensor.dtype.is_floating_point:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
                if "running_var" in name:
                    tensor.abs_()


# -- faithfulness ----------------------------------------------------------------------------------------------------
def test_vit_b_trainable_parameter_count_matches_reference():
    config = sam_vision_config("vit_b", num_labels=2)
    with torch.device("meta"):
        model = get_peft_model(SamForSemanticSegmentation(config), LoSamConfig())
    prompt = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "losam_prompt" in n)
    head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "segmentation_head" in n)
    assert prompt == 3_598_848
    assert head == 165_426
    assert count_parameters(model, trainable_only=True) == 3_764_274
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == 3_764_274


@pytest.mark.parametrize("name, expected", [("vit_l", 12_908_082), ("vit_h", 26_646_066)])
def test_larger_sam_trainable_parameter_counts(name, expected):
    """The counts in README.md's table of bases, on the meta device (no weights are allocated)."""
    with torch.device("meta"):
        model = get_peft_model(SamForSemanticSegmentation(sam_vision_config(name, num_labels=2)), LoSamConfig())
    assert count_parameters(model, trainable_only=True) == expected


def _reference_prompt(x_cf, layer):
    """Eq. 2 written channels-first with convolutions, independent of the channels-last implementation."""
    c_in, c_mid = layer.down.in_features, layer.down.out_features

    def ln(t, norm):
        mean = t.mean(dim=1, keepdim=True)
        var = ((t - mean) ** 2).mean(dim=1, keepdim=True)
        t = (t - mean) / torch.sqrt(var + norm.eps)
        return t * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]

    y = F.conv2d(x_cf, layer.down.weight.view(c_mid, c_in, 1, 1), layer.down.bias)
    y = F.gelu(ln(y, layer.norm1))
    y = F.conv2d(y, layer.dwconv.weight, None, padding=1, groups=c_mid)
    y = F.gelu(ln(y, layer.norm2))
    y = F.conv2d(y, layer.up.weight.view(c_in, c_mid, 1, 1), layer.up.bias)
    return F.gelu(ln(y, layer.norm3))


def test_prompt_layer_matches_paper_equation():
    torch.manual_seed(0)
    layer = LoSamPromptLayer(32, reduction=4)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    tokens = torch.randn(2, 5, 7, 32)  # channels-last grid (B, H, W, C)
    expected = _reference_prompt(tokens.permute(0, 3, 1, 2), layer).permute(0, 2, 3, 1)
    torch.testing.assert_close(layer(tokens), expected, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in LoSamPromptLayer(768, 4).parameters()) == 299_904


def test_head_matches_paper_description():
    torch.manual_seed(0)
    head = LoSamSegmentationHead(64, num_labels=3).eval()
    with torch.no_grad():
        head.norm3.running_mean.normal_()
        head.norm3.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 64, 5, 6)

    def ln(t, norm):
        return F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)

    y = F.gelu(ln(F.conv_transpose2d(x, head.up1.weight, head.up1.bias, stride=2), head.norm1))
    y = F.gelu(ln(F.conv_transpose2d(y, head.up2.weight, head.up2.bias, stride=2), head.norm2))
    groups = torch.chunk(y, 4, dim=1)
    parts = [F.conv2d(groups[0], head.multiscale.branches[0].weight, head.multiscale.branches[0].bias)]
    for i in range(1, 4):
        conv = head.multiscale.branches[i]
        parts.append(F.conv2d(groups[i], conv.weight, conv.bias, padding=i, dilation=i, groups=groups[i].shape[1]))
    y = torch.cat(parts, 1)
    bn = head.norm3
    y = (y - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    y = F.gelu(y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
    y = F.conv2d(y, head.classifier.weight, head.classifier.bias)
    torch.testing.assert_close(head(x), y, rtol=1e-5, atol=1e-5)
    assert y.shape == (2, 3, 20, 24)


# -- the model -------------------------------------------------------------------------------------------------------
def test_forward_shapes_and_loss_at_label_resolution():
    model = tiny_model()
    pixels = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 2, (2, 32, 48))
    labels[0, :4] = 255
    out = model(pixel_values=pixels, labels=labels)
    assert out.logits.shape == (2, 2, 64, 64)
    # one resampling of the head's 1/4-resolution logits to the labels' size (not input size first, then again)
    with torch.no_grad():
        low = model.segmentation_head(model.vision_encoder(pixels).last_hidden_state)
    assert low.shape == (2, 2, 32, 32)  # patch 8: an 8x8 token grid, x4 in the head
    align = model.config.align_corners
    torch.testing.assert_close(out.logits, F.interpolate(low, size=(64, 64), mode="bilinear", align_corners=align))
    up = F.interpolate(low, size=(32, 48), mode="bilinear", align_corners=align)
    torch.testing.assert_close(out.loss, F.cross_entropy(up, labels, ignore_index=255))
    # labels at the input size: the loss is computed on the returned logits themselves
    full = torch.randint(0, 2, (2, 64, 64))
    out = model(pixel_values=pixels, labels=full)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, full, ignore_index=255))


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 3, 32, 32), (1, 1, 64, 64), (1, 3, 64, 65)])
def test_wrong_pixel_values_shape_is_a_clear_error(shape):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, 64, 64\).*got"):
        model(pixel_values=torch.randn(*shape))


def test_get_peft_model_wraps_blocks_freezes_encoder_and_trains_prompts_and_head():
    model = _peft()
    blocks = [m for m in model.modules() if isinstance(m, LoSamLayer)]
    assert len(blocks) == 2
    for name, param in model.named_parameters():
        trainable = "losam_prompt" in name or "modules_to_save" in name
        assert param.requires_grad == trainable, name
    # the block receives f + prompt(f)
    block = blocks[0]
    seen = {}
    handle = block.base_layer.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    captured = {}
    hook2 = block.register_forward_pre_hook(lambda m, args: captured.setdefault("f", args[0].detach()))
    model(pixel_values=torch.randn(1, 3, 64, 64))
    handle.remove()
    hook2.remove()
    f = captured["f"]
    torch.testing.assert_close(seen["x"], f + block.losam_prompt["default"](f))
    # gradients reach prompt layers and head only
    out = model(pixel_values=torch.randn(1, 3, 64, 64), labels=torch.randint(0, 2, (1, 64, 64)))
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("losam_prompt" in n or "modules_to_save" in n for n in grads)


def test_save_and_reload_adapter_roundtrip_is_exact(tmp_path):
    model = _peft()
    _randomise_adapter(model, 1)
    model.eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
    model.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all("losam_prompt" in k or "segmentation_head" in k for k in saved)
    assert not any("qkv" in k or "patch_embed" in k or "neck" in k for k in saved)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LOSAM" and config["encoder_hidden_size"] == 32 and config["num_labels"] == 2

    assert isinstance(PeftConfig.from_pretrained(tmp_path / "adapter"), LoSamConfig)
    reloaded = PeftModel.from_pretrained(tiny_model(), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=pixels).logits, expected)
    via_helper = load_adapter(tiny_model(), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(via_helper(pixel_values=pixels).logits, expected)


def test_peft_registration_roundtrip_guards_peft_releases(tmp_path):
    """Fails loudly if a PEFT release stops dispatching on the registered "LOSAM" type."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    assert PEFT_TYPE_TO_CONFIG_MAPPING["LOSAM"] is LoSamConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING["LOSAM"] is losam_peft.LoSamModel
    model = _peft()
    state = get_peft_model_state_dict(model)
    assert state and all("losam_prompt" in k or "segmentation_head" in k for k in state)
    assert not any(".default." in k for k in state)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path)
    assert isinstance(loaded.peft_config["default"], LoSamConfig)
    assert isinstance(loaded.base_model, losam_peft.LoSamModel)
    assert peft.__version__.startswith("0.21")


def test_several_adapters_switch_without_reloading_encoder_and_unload_restores_base(tmp_path):
    pixels = torch.randn(1, 3, 64, 64)
    outputs = {}
    for index, name in enumerate(["vessels", "lesions"]):
        model = _peft(seed=0)
        _randomise_adapter(model, 10 + index)
        model.eval()
        with torch.no_grad():
            outputs[name] = model(pixel_values=pixels).logits
        model.save_pretrained(tmp_path / name)

    base = tiny_model()
    with torch.no_grad():
        base_logits = base(pixel_values=pixels).logits
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = load_adapter(base, tmp_path / "vessels", adapter_name="vessels")
    load_adapter(model, tmp_path / "lesions", adapter_name="lesions")
    encoder_weight = model.base_model.model.vision_encoder.patch_embed.projection.weight
    model.eval()
    for name in ["vessels", "lesions", "vessels"]:
        model.set_adapter(name)
        with torch.no_grad():
            assert torch.equal(model(pixel_values=pixels).logits, outputs[name])
    assert model.base_model.model.vision_encoder.patch_embed.projection.weight is encoder_weight
    unloaded = model.unload()
    assert isinstance(unloaded, SamForSemanticSegmentation)
    assert not any(isinstance(m, LoSamLayer) for m in unloaded.modules())
    assert unloaded.state_dict().keys() == base_state.keys()
    for key, value in unloaded.state_dict().items():
        assert torch.equal(value, base_state[key]), key
    with torch.no_grad():
        assert torch.equal(unloaded(pixel_values=pixels).logits, base_logits)


# -- loading base checkpoints ----------------------------------------------------------------------------------------
def _save_full_sam(tmp_path, image_size=64):
    from transformers import SamConfig, SamModel

    torch.manual_seed(3)
    vision = tiny_config(image_size=image_size).to_dict()
    config = SamConfig(vision_config=vision)
    sam = SamModel(config).eval()
    with torch.no_grad():
        sam.vision_encoder.pos_embed.normal_(0, 0.02)
        for layer in sam.vision_encoder.layers:
            layer.attn.rel_pos_h.normal_(0, 0.02)
    sam.save_pretrained(tmp_path / "sam")
    return sam


def test_from_pretrained_full_sam_checkpoint_skips_prompt_encoder_quietly(tmp_path, caplog):
    sam = _save_full_sam(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            model = SamForSemanticSegmentation.from_pretrained(
                tmp_path / "sam", num_labels=3, id2label={0: "background", 1: "vessel", 2: "disc"}
            )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert model.config.num_labels == 3 and model.config.id2label[1] == "vessel"
    for key, value in sam.vision_encoder.state_dict().items():
        assert torch.equal(model.vision_encoder.state_dict()[key], value), key
    assert model(pixel_values=torch.randn(1, 3, 64, 64)).logits.shape == (1, 3, 64, 64)


def test_from_pretrained_own_checkpoint_and_auto_class(tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    model = tiny_model()
    _randomise_adapter(model, 2)
    model.eval()
    model.save_pretrained(tmp_path / "mine")
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        again = SamForSemanticSegmentation.from_pretrained(tmp_path / "mine")
        assert torch.equal(again(pixel_values=pixels).logits, expected)
        auto = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "mine")
        assert isinstance(auto, SamForSemanticSegmentation)
        assert torch.equal(auto(pixel_values=pixels).logits, expected)


def test_from_pretrained_refuses_pickled_weights_and_non_sam(tmp_path):
    from transformers import BertConfig

    model = tiny_model()
    model.config.save_pretrained(tmp_path / "pickled")
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors"):
        SamForSemanticSegmentation.from_pretrained(tmp_path / "pickled")
    BertConfig().save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        SamForSemanticSegmentation.from_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="neither a local folder"):
        SamForSemanticSegmentation.from_pretrained(str(tmp_path / "missing-folder"), local_files_only=True)


@pytest.mark.parametrize("size", [256, 384])
def test_other_image_sizes_resize_position_tables(tmp_path, size):
    sam = _save_full_sam(tmp_path, image_size=128)
    model = SamForSemanticSegmentation.from_pretrained(tmp_path / "sam", image_size=size)
    grid = size // 8
    encoder = model.vision_encoder
    assert encoder.pos_embed.shape == (1, grid, grid, 32)
    assert encoder.layers[1].attn.rel_pos_h.shape == (2 * grid - 1, 16)  # global layer follows the grid
    assert encoder.layers[0].attn.rel_pos_h.shape == (7, 16)  # windowed layer keeps its window
    expected = F.interpolate(sam.vision_encoder.pos_embed.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic")
    torch.testing.assert_close(encoder.pos_embed.permute(0, 3, 1, 2), expected)
    assert model(pixel_values=torch.randn(1, 3, size, size)).logits.shape == (1, 2, size, size)
    same = SamForSemanticSegmentation.from_pretrained(tmp_path / "sam")
    assert torch.equal(same.vision_encoder.pos_embed, sam.vision_encoder.pos_embed)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        SamForSemanticSegmentation.from_pretrained(tmp_path / "sam", image_size=100)


# -- bad input -------------------------------------------------------------------------------------------------------
def test_num_labels_mismatch_on_load_is_clear(tmp_path):
    _peft().save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="num_labels = 2, but the model has 3"):
        load_adapter(tiny_model(num_labels=3), tmp_path / "two")


@pytest.mark.parametrize("other", [dict(hidden_size=48, num_attention_heads=2, mlp_dim=96), dict(num_hidden_layers=3)])
def test_adapter_for_another_encoder_size_is_refused(tmp_path, other):
    _peft().save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match="was made for an encoder"):
        load_adapter(tiny_model(**other), tmp_path / "a")
    with pytest.raises(ValueError, match="was made for an encoder"):
        PeftModel.from_pretrained(tiny_model(**other), tmp_path / "a")


def test_target_matching_no_block_or_a_non_block_is_refused():
    with pytest.raises(ValueError, match="matches no module; expected encoder blocks"):
        get_peft_model(tiny_model(), LoSamConfig(target_modules=["does_not_exist"]))
    with pytest.raises(ValueError, match="SamVisionLayer blocks only"):
        get_peft_model(tiny_model(), LoSamConfig(target_modules=r".*attn\.qkv"))


def test_adapter_weights_load_only_from_safetensors(tmp_path):
    model = _peft()
    model.save_pretrained(tmp_path / "a")
    weights = tmp_path / "a" / "adapter_model.safetensors"
    torch.save(load_file(weights), tmp_path / "a" / "adapter_model.bin")
    weights.unlink()
    with pytest.raises(CheckpointError, match="no adapter_model.safetensors.*does not unpickle"):
        load_adapter(tiny_model(), tmp_path / "a")


def test_subset_of_blocks_and_reduction(tmp_path):
    model = get_peft_model(tiny_model(), LoSamConfig(target_modules=["vision_encoder.layers.1"], reduction=2))
    blocks = [m for m in model.modules() if isinstance(m, LoSamLayer)]
    assert len(blocks) == 1 and blocks[0].losam_prompt["default"].down.out_features == 16
    save_file({"x": torch.zeros(1)}, tmp_path / "unused.safetensors")


def test_the_head_upsampling_travels_with_the_adapter(tmp_path):
    import json

    from peft import get_peft_model

    from losam_peft import LoSamConfig, load_adapter

    model = get_peft_model(tiny_model(), LoSamConfig())
    assert model.peft_config["default"].align_corners is True  # new models: the reference's upsampling
    model.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "adapter_config.json").read_text())["align_corners"] is True
    # an adapter saved before the field existed was trained with align_corners=False and keeps it
    path = tmp_path / "new" / "adapter_config.json"
    data = json.loads(path.read_text())
    data.pop("align_corners")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "adapter_config.json").write_text(json.dumps(data))
    (tmp_path / "old" / "adapter_model.safetensors").write_bytes((tmp_path / "new" / "adapter_model.safetensors").read_bytes())
    loaded = load_adapter(tiny_model(), tmp_path / "old")
    assert loaded.base_model.model.config.align_corners is False
    assert load_adapter(tiny_model(), tmp_path / "new").base_model.model.config.align_corners is True


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_damaged_adapter_weights_are_one_clear_error(tmp_path, damage):
    import shutil

    from peft import get_peft_model

    from losam_peft import LoSamConfig, load_adapter
    from losam_peft.errors import CheckpointError

    folder = tmp_path / "adapter"
    get_peft_model(tiny_model(), LoSamConfig()).save_pretrained(folder)
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x00garbage" * 64}[damage])
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        load_adapter(tiny_model(), folder)
    shutil.rmtree(folder)
