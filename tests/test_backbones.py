"""DINOv2 / DINOv2-with-registers / ViT / ViT-MAE bases (issue 12): exact parameter counts, the prompt on the patch
grid only, save/load and Auto classes, the one base loader, and training + the pipeline on a DINOv2 base."""

import json

import pytest
import torch
from helpers import tiny_model
from peft import get_peft_model
from torch import nn
from transformers import AutoModelForSemanticSegmentation, Dinov2Config, Dinov2Model, ViTMAEConfig, ViTMAEModel

from losam_peft import (
    Dinov2ForLoSamSegmentation,
    Dinov2WithRegistersForLoSamSegmentation,
    LoSamConfig,
    LoSamDinov2SegmentationConfig,
    LoSamDinov2WithRegistersSegmentationConfig,
    LoSamLayer,
    LoSamPipeline,
    LoSamViTMAESegmentationConfig,
    LoSamViTSegmentationConfig,
    SamForSemanticSegmentation,
    ViTForLoSamSegmentation,
    ViTMAEForLoSamSegmentation,
    load_base_model,
)
from losam_peft.errors import CheckpointError, LoSamError, LoSamValueError
from losam_peft.tuner.model import TOKEN_GRID_ATTR

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, initializer_range=0.02)
FAMILIES = {
    "dinov2": (Dinov2ForLoSamSegmentation, LoSamDinov2SegmentationConfig, dict(image_size=56, patch_size=14)),
    "registers": (
        Dinov2WithRegistersForLoSamSegmentation,
        LoSamDinov2WithRegistersSegmentationConfig,
        dict(image_size=56, patch_size=14, num_register_tokens=3),
    ),
    "vit": (ViTForLoSamSegmentation, LoSamViTSegmentationConfig, dict(image_size=64, patch_size=16, intermediate_size=64)),
    "vit_mae": (
        ViTMAEForLoSamSegmentation,
        LoSamViTMAESegmentationConfig,
        dict(image_size=64, patch_size=16, intermediate_size=64),
    ),
}


def _tiny(family, seed=0, num_labels=2, **overrides):
    model_class, config_class, extra = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_class(config_class(**TINY, **extra, num_labels=num_labels, **overrides))
    with torch.no_grad():  # give the zero-initialised tokens values, so that "untouched" is a real check
        embeddings = model.token_encoder.embeddings
        embeddings.cls_token.normal_(0, 1)
        if getattr(embeddings, "register_tokens", None) is not None:
            embeddings.register_tokens.normal_(0, 1)
    return model.eval()


# -- parameter counts at full size (parameters only, on the meta device) --------------------------------------------
@pytest.mark.parametrize(
    "name, hidden, depth, heads, prompt, head",
    [
        ("vit_s", 384, 12, 6, 914_688, 371_210),
        ("vit_b", 768, 12, 12, 3_598_848, 1_480_850),
        ("vit_l", 1024, 24, 16, 12_742_656, 2_630_850),
    ],
)
def test_trainable_parameters_equal_the_reference_prompt_dino(name, hidden, depth, heads, prompt, head):
    config = LoSamDinov2SegmentationConfig(
        hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads, num_labels=2, layerscale_value=1e-5
    )
    with torch.device("meta"):
        model = get_peft_model(Dinov2ForLoSamSegmentation(config), LoSamConfig())
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == prompt + head
    assert sum(v for n, v in trainable.items() if "losam_prompt" in n) == prompt
    assert sum(v for n, v in trainable.items() if "segmentation_head" in n) == head
    assert config.image_size == 518 and config.patch_size == 14


# -- the prompt layer on the patch grid -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prompt_runs_on_the_patch_grid_and_leaves_cls_and_registers_untouched(family):
    model = get_peft_model(_tiny(family), LoSamConfig())
    layers = [m for m in model.modules() if isinstance(m, LoSamLayer)]
    assert len(layers) == 2
    layer = layers[1]
    prefix = 1 + (3 if family == "registers" else 0)
    assert layer.token_grid.num_prefix_tokens == prefix
    with torch.no_grad():  # a non-trivial prompt
        for p in layer.losam_prompt["default"].parameters():
            p.add_(torch.randn_like(p) * 0.3)
    seen = {}
    layer.register_forward_pre_hook(lambda m, args: seen.__setitem__("outer", args[0].clone()))
    layer.base_layer.register_forward_pre_hook(lambda m, args: seen.__setitem__("inner", args[0].clone()))
    patch = model.base_model.model.patch_size[0]
    height, width = 4 * patch, 3 * patch  # non-square: the grid comes from the recorded pixel_values
    pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
        outer, inner = seen["outer"], seen["inner"]
        assert torch.equal(inner[:, :prefix], outer[:, :prefix])  # CLS and registers pass unchanged
        grid = outer[:, prefix:].reshape(2, 4, 3, -1)  # row-major patch grid
        expected = grid + layer.losam_prompt["default"](grid)
    assert logits.shape == (2, 2, height, width)
    assert torch.allclose(inner[:, prefix:].reshape(2, 4, 3, -1), expected, atol=1e-6)
    assert not torch.allclose(inner[:, prefix:], outer[:, prefix:])
    assert layer.token_grid.shape == (4, 3)


def test_sam_blocks_keep_the_channels_last_grid(tiny):
    model = get_peft_model(tiny, LoSamConfig())
    layers = [m for m in model.modules() if isinstance(m, LoSamLayer)]
    assert layers and all(layer.token_grid is None for layer in layers)


def test_mixed_adapter_batches_on_a_token_encoder(tmp_path):
    model = get_peft_model(_tiny("dinov2"), LoSamConfig(), adapter_name="one")
    model.add_adapter("two", LoSamConfig())
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "losam_prompt" in name:
                p.add_(torch.randn_like(p) * 0.2)
    pixels = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mixed = model(pixel_values=pixels, adapter_names=["one", "two", "__base__"]).logits
        model.set_adapter("one")
        only_a = model(pixel_values=pixels[:1]).logits
        model.set_adapter("two")
        only_b = model(pixel_values=pixels[1:2]).logits
        with model.disable_adapter():
            base = model(pixel_values=pixels[2:]).logits
    assert torch.allclose(mixed[:1], only_a, atol=1e-5)
    assert torch.allclose(mixed[1:2], only_b, atol=1e-5)
    assert torch.allclose(mixed[2:], base, atol=1e-5)


def test_unload_removes_the_grid_hook_and_gives_the_base_model_back():
    base = _tiny("dinov2")
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        before = base(pixel_values=pixels).logits
    model = get_peft_model(base, LoSamConfig())
    embeddings = model.base_model.model.dinov2.embeddings
    assert TOKEN_GRID_ATTR in embeddings.__dict__ and len(embeddings._forward_pre_hooks) == 1
    restored = model.unload()
    assert TOKEN_GRID_ATTR not in embeddings.__dict__ and len(embeddings._forward_pre_hooks) == 0
    assert not any(isinstance(m, LoSamLayer) for m in restored.modules())
    with torch.no_grad():
        assert torch.equal(restored(pixel_values=pixels).logits, before)


def test_raw_transformers_encoders_are_supported_and_vit_mae_keeps_every_token_in_order():
    dino = get_peft_model(Dinov2Model(Dinov2Config(**TINY, image_size=28, patch_size=14)).eval(), LoSamConfig())
    assert sum(isinstance(m, LoSamLayer) for m in dino.modules()) == 2
    assert dino(pixel_values=torch.randn(1, 3, 28, 42)).last_hidden_state.shape == (1, 7, 32)
    mae_config = ViTMAEConfig(**TINY, image_size=32, patch_size=16, intermediate_size=64, mask_ratio=0.0)
    mae = get_peft_model(ViTMAEModel(mae_config).eval(), LoSamConfig())
    with torch.no_grad():
        out = mae(pixel_values=torch.randn(1, 3, 32, 32))
    assert torch.equal(out.ids_restore, torch.arange(4)[None])  # the hook keeps the patches in grid order
    masked = get_peft_model(
        ViTMAEModel(ViTMAEConfig(**TINY, image_size=32, patch_size=16, intermediate_size=64)).eval(), LoSamConfig()
    )
    with pytest.raises(LoSamValueError, match="mask_ratio=0.75"):
        masked(pixel_values=torch.randn(1, 3, 32, 32))


def test_unsupported_encoders_get_one_error_listing_the_supported_ones():
    with pytest.raises(LoSamValueError, match="no supported encoder blocks") as info:
        get_peft_model(nn.Sequential(nn.Linear(4, 4)), LoSamConfig())
    for name in ("SamVisionLayer", "Dinov2Layer", "Dinov2WithRegistersLayer", "ViTLayer", "ViTMAELayer"):
        assert name in str(info.value)


def test_other_input_sizes_interpolate_the_position_embeddings():
    model = _tiny("dinov2")
    model.set_image_size(70)
    assert model.config.image_size == 70
    with torch.no_grad():
        assert model(pixel_values=torch.randn(1, 3, 70, 70)).logits.shape == (1, 2, 70, 70)
    with pytest.raises(LoSamValueError, match="multiple of the patch size 14"):
        model.set_image_size(60)
    with pytest.raises(LoSamValueError, match="multiples of the patch size 14"):
        model(pixel_values=torch.randn(1, 3, 60, 56))


# -- saving, loading, Auto classes, the one loader -------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_save_and_auto_load_give_the_same_logits(tmp_path, family):
    model = _tiny(family, num_labels=3)
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == type(model).config_class.model_type and data["align_corners"] is True
    pixels = torch.randn(1, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        auto = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
        loaded = load_base_model(tmp_path)
        assert type(auto) is type(model) and type(loaded) is type(model)
        assert torch.equal(auto(pixel_values=pixels).logits, expected)
        assert torch.equal(loaded(pixel_values=pixels).logits, expected)


def test_a_plain_dinov2_checkpoint_loads_as_the_encoder_with_a_fresh_head(tmp_path):
    torch.manual_seed(0)
    encoder = Dinov2Model(Dinov2Config(**TINY, image_size=56, patch_size=14))
    encoder.save_pretrained(tmp_path / "dinov2")
    model = load_base_model(tmp_path / "dinov2", id2label={0: "background", 1: "vessel"}, image_size=42)
    assert isinstance(model, Dinov2ForLoSamSegmentation) and model.config.image_size == 42
    assert model.config.id2label == {0: "background", 1: "vessel"}
    loaded = model.dinov2.state_dict()
    for key, value in encoder.state_dict().items():
        if key != "embeddings.position_embeddings":
            assert torch.equal(loaded[key], value), key
    assert loaded["embeddings.position_embeddings"].shape == (1, 1 + 3 * 3, 32)  # resized once to the 3x3 grid
    assert torch.equal(loaded["embeddings.position_embeddings"][:, 0], encoder.embeddings.position_embeddings[:, 0])
    # a saved head made for other labels is dropped with a warning
    model.save_pretrained(tmp_path / "seg")
    with pytest.warns(UserWarning, match="made for other labels"):
        again = Dinov2ForLoSamSegmentation.from_pretrained(tmp_path / "seg", num_labels=4)
    assert again.segmentation_head.classifier.out_channels == 4 and again.config.image_size == 42
    assert torch.equal(again.dinov2.embeddings.position_embeddings, loaded["embeddings.position_embeddings"])


def test_load_base_model_dispatches_and_refuses_other_models(tmp_path):
    from transformers import BertConfig

    tiny_model().save_pretrained(tmp_path / "sam")
    assert isinstance(load_base_model(tmp_path / "sam"), SamForSemanticSegmentation)
    BertConfig().save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="not a supported base model.*'bert'.*dinov2"):
        load_base_model(tmp_path / "bert")
    pickled = Dinov2Model(Dinov2Config(**TINY))
    pickled.config.save_pretrained(tmp_path / "pickled")
    torch.save(pickled.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_base_model(tmp_path / "pickled")


# -- training and the pipeline on a DINOv2 base -----------------------------------------------------------------------
def test_training_and_the_pipeline_work_on_a_dinov2_base(tmp_path):
    from losam_peft.data.samples import Sample
    from losam_peft.data.synthetic import make_samples
    from losam_peft.training import TrainingConfig, train

    _tiny("dinov2").save_pretrained(tmp_path / "base")
    samples = [Sample(s.image, s.mask, s.id, s.fov) for s in make_samples("fundus", 2, size=48, seed=1)]
    config = TrainingConfig(output_dir=str(tmp_path / "adapter"), base=str(tmp_path / "base"), max_steps=2,
                            log_with="none", image_size=56)  # fmt: skip
    result = train(config, samples, progress=False)
    assert result is not None
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["encoder_hidden_size"] == 32 and adapter_config["encoder_num_layers"] == 2
    assert adapter_config["image_size"] == 56
    pipe = LoSamPipeline.from_pretrained(tmp_path / "adapter", device="cpu", dtype=torch.float32)
    assert isinstance(pipe.model.base_model.model, Dinov2ForLoSamSegmentation)
    segmentation = pipe(samples[0].image)
    assert segmentation.label_map.shape == samples[0].image.shape[:2]


def test_errors_are_losam_errors():
    assert issubclass(CheckpointError, LoSamError) and issubclass(LoSamValueError, LoSamError)
