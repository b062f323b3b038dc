"""LoSamPipeline: loading from folders and from an offline Hub cache, inputs of every kind, bad adapters."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from helpers import tiny_model
from peft import PeftModel, get_peft_model
from PIL import Image

from losam_peft import LoSamConfig, LoSamImageProcessor
from losam_peft.loading import CheckpointError
from losam_peft.model_card import write_model_card
from losam_peft.pipeline import (
    LoSamPipeline,
    SegmentationResult,
    label_map_to_pil,
    palette,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _randomise(model, seed=5):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if ("losam_" in name or "segmentation_head" in name) and tensor.dtype.is_floating_point:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.2)
                if "running_var" in name:
                    tensor.abs_()


def _balance(model):
    """Shift the head's bias so that a random image gets about as much foreground as background."""
    pixels = LoSamImageProcessor(image_size=64).preprocess([_image(64, 64, seed=9)])["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits[0]
        bias = next(p for n, p in model.named_parameters() if "modules_to_save.default.classifier.bias" in n)
        for c in range(1, logits.shape[0]):
            bias[c] -= (logits[c] - logits[0]).median()


def make_adapter(root, base_name=None, card=True, processor=True, num_labels=2):
    """A tiny base checkpoint (``root/base``) and an adapter for it (``root/adapter``)."""
    base = root / "base"
    tiny_model(num_labels=num_labels).save_pretrained(base)
    labels = {0: "background", 1: "vessel", 2: "disc"}
    config = LoSamConfig(modality="fundus", task="vessels", id2label={i: labels[i] for i in range(num_labels)})
    torch.manual_seed(1)
    model = get_peft_model(tiny_model(num_labels=num_labels), config)
    _randomise(model)
    _balance(model.eval())
    model.peft_config["default"].base_model_name_or_path = str(base)
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    if base_name is not None:  # a Hub id, written after saving so that PEFT does not look it up
        config_path = adapter / "adapter_config.json"
        config_json = json.loads(config_path.read_text())
        config_json["base_model_name_or_path"] = base_name
        config_path.write_text(json.dumps(config_json))
        model.peft_config["default"].base_model_name_or_path = base_name
    if processor:
        LoSamImageProcessor(image_size=64).save_pretrained(adapter)
    if card:
        write_model_card(adapter, model.peft_config["default"], base_model=None)
    return base, adapter, model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def pipe(saved):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a complete adapter loads without a warning
        return LoSamPipeline.from_pretrained(saved[1], dtype="fp32", device="cpu")


def _image(h=50, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_from_pretrained_matches_the_model_and_returns_original_sizes(saved, pipe):
    _, adapter, model = saved
    assert isinstance(pipe.model, PeftModel)
    assert pipe.id2label == {0: "background", 1: "vessel"}
    assert pipe.adapter_config.modality == "fundus" and pipe.image_size == 64
    image = _image()
    processor = LoSamImageProcessor(image_size=64)
    inputs = processor.preprocess([image])
    with torch.no_grad():
        logits = model(pixel_values=inputs["pixel_values"]).logits
    expected = processor.post_process_semantic_segmentation(logits, target_sizes=[(50, 70)])[0].numpy()

    result = pipe(image, return_probabilities=True)
    assert isinstance(result, SegmentationResult)
    assert result.label_map.shape == (50, 70) and result.label_map.dtype == np.uint8
    np.testing.assert_array_equal(result.label_map, expected)
    assert result.probabilities.shape == (2, 50, 70)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.probabilities.argmax(0), result.label_map)
    assert 0 < result.foreground_fractions()["vessel"] < 1  # the randomised adapter predicts both classes
    assert pipe(image).probabilities is None


def test_inputs_of_every_kind_and_lists(tmp_path, pipe):
    image = _image(40, 30, seed=1)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(image[..., 1].astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    results = pipe(
        [Image.fromarray(image), image, str(tmp_path / "a.png"), tmp_path / "cmyk.jpg", tmp_path / "sixteen.png",
         torch.from_numpy(image).permute(2, 0, 1)],
        batch_size=4,
    )  # fmt: skip
    assert isinstance(results, list) and len(results) == 6
    assert all(r.label_map.shape == (40, 30) for r in results)
    np.testing.assert_array_equal(results[0].label_map, results[1].label_map)
    np.testing.assert_array_equal(results[0].label_map, results[2].label_map)
    np.testing.assert_array_equal(results[0].label_map, results[5].label_map)
    assert results[2].source == str(tmp_path / "a.png")
    assert results[3].note == "CMYK converted to RGB"
    assert results[4].note.startswith("16-bit")
    assert pipe([]) == []
    stacked = pipe(np.stack([image, image]))
    assert isinstance(stacked, list) and len(stacked) == 2


def test_batching_does_not_change_results(pipe):
    images = [_image(30 + 7 * i, 40, seed=i) for i in range(3)]
    one = pipe(images, batch_size=1)
    three = pipe(images, batch_size=3)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a.label_map, b.label_map)


def test_overlay_and_palette_mask(pipe):
    image = _image(20, 24, seed=3)
    result = pipe(image)
    drawn = pipe.overlay(image, result.label_map, alpha=0.5)
    assert drawn.mode == "RGB" and drawn.size == (24, 20)
    out = np.asarray(drawn)
    background = result.label_map == 0
    np.testing.assert_array_equal(out[background], image[background])
    if (~background).any():
        assert not np.array_equal(out[~background], image[~background])
    assert np.asarray(pipe.overlay(image, result, alpha=0.0, legend=False)).tolist() == image.tolist()
    with pytest.raises(ValueError, match="label map is 5x5"):
        pipe.overlay(image, np.zeros((5, 5), np.uint8))
    mask = result.to_pil()
    assert mask.mode == "P"
    np.testing.assert_array_equal(np.asarray(mask), result.label_map)
    assert mask.getpalette()[3:6] == list(palette(2)[1])
    assert label_map_to_pil(np.array([[0, 7]]), 2).getpalette()[21:24] == list(palette(8)[7])


def test_tiled_call_keeps_sizes(pipe):
    image = _image(90, 130, seed=4)
    result = pipe(image, tile=64, overlap=0.5, batch_size=4, return_probabilities=True)
    assert result.label_map.shape == (90, 130) and result.tiles == 2 * 4  # rows 0, 26; columns 0, 32, 64, 66
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-5)


def test_wraps_an_in_memory_model(saved):
    _, _, model = saved
    pipe = LoSamPipeline(model, device="cpu", dtype="fp32")
    assert pipe.image_size == 64 and pipe.num_labels == 2
    assert pipe(_image()).label_map.shape == (50, 70)
    model.train()
    before = pipe(_image()).label_map
    assert model.training  # the pipeline evaluates a model in training without leaving it in eval mode
    model.eval()
    np.testing.assert_array_equal(before, pipe(_image()).label_map)
    plain = LoSamPipeline(tiny_model(), LoSamImageProcessor(image_size=64, mode="paper"), dtype=torch.float32)
    assert plain(_image(10, 12)).label_map.shape == (10, 12)


def test_dtype_choices(saved):
    _, _, model = saved
    bf16 = LoSamPipeline(model, device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    result = bf16(_image(), return_probabilities=True)
    assert result.probabilities.dtype == np.float32 and result.label_map.shape == (50, 70)
    assert LoSamPipeline(model, device="cpu", dtype="fp32").dtype is None
    assert LoSamPipeline(model, device="cpu").dtype in (None, torch.bfloat16)  # the device's default
    with pytest.raises(ValueError, match="dtype must be one of"):
        LoSamPipeline(model, device="cpu", dtype="int8")


# -- bad adapters ----------------------------------------------------------------------------------------------------
def test_missing_files_are_named(tmp_path, saved):
    _, adapter, _ = saved
    for missing in ("adapter_model.safetensors", "adapter_config.json"):
        broken = tmp_path / missing
        shutil.copytree(adapter, broken)
        (broken / missing).unlink()
        with pytest.raises(CheckpointError, match=f"has no {missing}"):
            LoSamPipeline.from_pretrained(broken)


def test_card_less_adapter_loads_with_a_warning(tmp_path, saved):
    _, adapter, _ = saved
    shutil.copytree(adapter, tmp_path / "nocard")
    (tmp_path / "nocard" / "README.md").unlink()
    (tmp_path / "nocard" / "preprocessor_config.json").unlink()
    with pytest.warns(UserWarning, match="no model card"):
        pipe = LoSamPipeline.from_pretrained(tmp_path / "nocard", dtype="fp32")
    assert pipe.image_size == 64  # from the adapter config when there is no preprocessor_config.json
    assert pipe(_image()).label_map.shape == (50, 70)


def test_base_that_cannot_be_found_and_the_base_override(tmp_path, saved):
    base, adapter, _ = saved
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone" / "sam")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"cannot load the base model .*gone.*named in the adapter's .*base="):
        LoSamPipeline.from_pretrained(moved, local_files_only=True)
    pipe = LoSamPipeline.from_pretrained(moved, base=base, dtype="fp32")
    assert pipe.base_model == str(base)

    config["base_model_name_or_path"] = None
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="names no base model"):
        LoSamPipeline.from_pretrained(moved)
    with pytest.raises(CheckpointError, match="neither a local adapter folder nor a Hub repository"):
        LoSamPipeline.from_pretrained(tmp_path / "no-such-adapter", local_files_only=True)


# -- the Hub, offline --------------------------------------------------------------------------------------------------
def _cache_repo(cache, repo_id, source, commit=COMMIT, ref="main"):
    """Lay ``source``'s files out as huggingface_hub's cache does: models--ORG--NAME/{refs,snapshots/COMMIT}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for item in source.iterdir():
        shutil.copy2(item, snapshot / item.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_offline_hub_ids_load_from_the_local_cache_with_a_pinned_revision(tmp_path, offline_cache):
    root = tmp_path / "made"
    root.mkdir()
    base, adapter, model = make_adapter(root, base_name="local-test/tiny-sam")
    _cache_repo(offline_cache, "local-test/tiny-sam", base)
    _cache_repo(offline_cache, "local-test/tiny-losam", adapter, ref="v1")

    pipe = LoSamPipeline.from_pretrained("local-test/tiny-losam", revision="v1", dtype="fp32")
    assert pipe.base_model == "local-test/tiny-sam"
    image = _image()
    by_commit = LoSamPipeline.from_pretrained("local-test/tiny-losam", revision=COMMIT, dtype="fp32")
    np.testing.assert_array_equal(pipe(image).label_map, by_commit(image).label_map)
    local = LoSamPipeline.from_pretrained(adapter, dtype="fp32")
    np.testing.assert_array_equal(pipe(image).label_map, local(image).label_map)


def test_offline_with_nothing_cached_says_what_to_download(offline_cache):
    with pytest.raises(CheckpointError) as info:
        LoSamPipeline.from_pretrained("local-test/not-cached", revision="v2")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "hf download local-test/not-cached --revision v2" in message
    assert "HF_HUB_OFFLINE" in message


def test_offline_adapter_cached_but_base_missing(tmp_path, offline_cache):
    root = tmp_path / "made"
    root.mkdir()
    _, adapter, _ = make_adapter(root, base_name="local-test/uncached-sam")
    _cache_repo(offline_cache, "local-test/tiny-losam", adapter)
    with pytest.raises(
        CheckpointError, match=r"base model 'local-test/uncached-sam'.*hf download local-test/uncached-sam"
    ):
        LoSamPipeline.from_pretrained("local-test/tiny-losam")


def test_adapter_written_by_save_adapter_loads_with_its_card(tmp_path):
    from losam_peft import adapters

    if not hasattr(adapters, "save_adapter"):
        pytest.skip("losam_peft.adapters.save_adapter is not there yet")
    from huggingface_hub import ModelCard

    base = tmp_path / "base"
    tiny_model().save_pretrained(base)
    model = get_peft_model(tiny_model(), LoSamConfig(modality="fundus", task="vessels"))
    model.peft_config["default"].base_model_name_or_path = str(base)
    metrics = {"per_class": {"1": {"name": "LABEL_1", "dice": 0.5}}, "dataset": "synthetic", "split": "test"}
    adapters.save_adapter(model, tmp_path / "saved", image_processor=LoSamImageProcessor(image_size=64),
                          metrics=metrics, training={"shots": ["s0"]})  # fmt: skip
    card = ModelCard.load(tmp_path / "saved" / "README.md")
    assert "losam" in card.data.tags and card.data.eval_results[0].metric_value == 50.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pipe = LoSamPipeline.from_pretrained(tmp_path / "saved", dtype="fp32")
    assert pipe(_image()).label_map.shape == (50, 70)
