"""Model cards: YAML checked with huggingface_hub's own parser, templates per modality/task, tolerant metrics."""

import filecmp
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, ModelCardData, metadata_load

from losam_peft import LoSamConfig
from losam_peft.model_card import (
    ADAPTER_PLACEHOLDER,
    TEMPLATES_DIR,
    build_model_card,
    metric_rows,
    template_path,
    write_model_card,
)

REPO = Path(__file__).resolve().parents[1]
METRICS = {
    "per_class": {
        "0": {"name": "background", "dice": 0.98, "iou": 0.96},
        "1": {"name": "vessel", "dice": 0.8123, "recall": 0.8, "precision": 0.83, "bm": 0.78, "iou": 0.684},
    },
    "dataset": "drive",
    "split": "test",
}
TRAINING = {"shots": ["21_training"], "steps": 640, "epochs": 32, "preset": "paper", "image_size": 1024,
            "seconds": 120.5, "device": "cpu"}  # fmt: skip


def _config(modality="fundus", task="vessels", **kw):
    values = dict(
        modality=modality,
        task=task,
        id2label={0: "background", 1: "vessel"},
        image_size=1024,
        encoder_hidden_size=768,
        encoder_num_layers=12,
        base_model_name_or_path="facebook/sam-vit-base",
    )
    values.update(kw)
    return LoSamConfig(**values)


def test_card_yaml_parses_with_huggingface_hub_and_holds_the_metadata(tmp_path):
    path = write_model_card(tmp_path, _config(), base_model=None, metrics=METRICS, training=TRAINING,
                            datasets=["my-org-data"])  # fmt: skip
    assert path == tmp_path / "README.md"
    assert not [p for p in tmp_path.iterdir() if p.name != "README.md"]  # no temporary file left behind

    meta = metadata_load(path)
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == "facebook/sam-vit-base"
    assert meta["pipeline_tag"] == "image-segmentation"
    for tag in ("losam", "medical", "ophthalmology", "image-segmentation", "fundus", "vessels"):
        assert tag in meta["tags"]
    assert meta["datasets"] == ["my-org-data"]

    card = ModelCard.load(path)
    assert isinstance(card.data, ModelCardData)
    results = {(r.metric_type, r.metric_config): r for r in card.data.eval_results}
    assert results[("dice", "vessel")].metric_value == pytest.approx(81.23)
    assert results[("iou", "vessel")].metric_value == pytest.approx(68.4)
    assert results[("dice", "vessel")].dataset_type == "drive"
    assert results[("dice", "vessel")].dataset_split == "test"
    assert results[("dice", "vessel")].task_type == "image-segmentation"
    assert not any(config == "background" for _, config in results)

    text = card.text
    assert "not a medical device" in text
    assert "`21_training`" in text and "one-shot" in text
    assert "| vessel | 81.23 | 68.40 | 83.00 | 80.00 | 78.00 |" in text
    assert "Tiny vessels and small lesions" in text and "Low image quality" in text
    assert "## Intended use" in text
    assert f'LoSamPipeline.from_pretrained("{ADAPTER_PLACEHOLDER}")' in text
    assert f"losam predict --adapter {ADAPTER_PLACEHOLDER}" in text
    assert "{{" not in str(card) and "{%" not in str(card)


@pytest.mark.parametrize(
    "modality, task, expected",
    [
        ("fundus", "vessels", "fundus_vessels.md"),
        ("Colour fundus", "vessel", "fundus_vessels.md"),
        ("octa", "vessels", "octa_vessels.md"),
        ("OCT-A", "Vessels", "octa_vessels.md"),
        ("fundus", "lesions", "fundus_lesions.md"),
        ("oct", "layers", "oct_layers.md"),
        ("oct", "retinal layers", "oct_layers.md"),
        ("slit-lamp", "cornea", "generic.md"),
        (None, None, "generic.md"),
    ],
)
def test_template_chosen_by_modality_and_task_and_every_one_renders(modality, task, expected):
    assert template_path(modality, task).name == expected
    card = build_model_card(_config(modality, task), base_model="facebook/sam-vit-base", metrics=METRICS)
    text = str(card)
    assert "{{" not in text and "{%" not in text
    assert "not a medical device" in text
    assert "Low image quality" in text
    parsed = ModelCard(text)
    assert "losam" in parsed.data.tags


def test_templates_ship_in_the_package_and_match_the_repository_copies():
    names = sorted(p.name for p in (REPO / "model_cards").glob("*.md"))
    assert names == ["fundus_lesions.md", "fundus_vessels.md", "generic.md", "oct_layers.md", "octa_vessels.md"]
    for name in names:
        assert filecmp.cmp(REPO / "model_cards" / name, TEMPLATES_DIR / name, shallow=False), name


def test_metrics_are_read_tolerantly():
    assert metric_rows(None) == [] and metric_rows({}) == []
    rows = metric_rows(
        {
            "per_class": {
                1: {"name": "HE", "dice": 0.3954, "iou": None, "recall": float("nan")},
                2: {"name": "EX", "dice": 62.96},  # already in percent
                3: {"name": "MA"},  # nothing usable
                "4": "not a mapping",
            }
        }
    )
    assert rows == [{"id": 1, "name": "HE", "dice": 39.54}, {"id": 2, "name": "EX", "dice": 62.96}]
    card = build_model_card(_config("fundus", "lesions"), base_model=None, metrics={"per_class": {1: {"dice": 0.5}}})
    assert card.data.eval_results[0].dataset_type == "custom"
    assert "No evaluation was recorded" in build_model_card(_config(), base_model=None).text


def test_metrics_from_the_package_metric_code_fill_the_card():
    import numpy as np

    from losam_peft.metrics import counts_to_metrics

    confusion = np.array([[[90, 2], [3, 5]]])
    results = counts_to_metrics(confusion, id2label={0: "background", 1: "vessel"})
    results.update(dataset="fives", split="test")
    card = build_model_card(_config(), base_model=None, metrics=results)
    dice = next(r for r in card.data.eval_results if r.metric_type == "dice")
    assert dice.metric_value == pytest.approx(round(200 * 5 / (2 * 5 + 2 + 3), 2))
    assert dice.dataset_name == "FIVES"


def test_local_base_model_stays_out_of_the_yaml(tmp_path):
    base = tmp_path / "sam-local"
    base.mkdir()
    card = build_model_card(_config(base_model_name_or_path=str(base)), base_model=None, repo_id="someone/adapter")
    assert "base_model" not in card.data.to_dict()
    assert str(base) in card.text
    assert 'from_pretrained("someone/adapter")' in card.text
    assert ModelCard(str(card)).data.library_name == "peft"


def test_few_shot_training_and_no_evaluation():
    training = {"shots": ["a", "b", "c"], "steps": 10, "extra_note": "synthetic"}
    card = build_model_card(_config("octa", "vessels"), base_model=None, training=training)
    assert "few-shot" in card.text and "`a`, `b`, `c`" in card.text
    assert "extra note: synthetic" in card.text
    assert "model-index" not in card.data.to_dict()
    assert ModelCard(str(card)).data.eval_results is None


def test_the_card_says_how_the_saved_step_was_chosen():
    from losam_peft.model_card import _training_markdown

    text, _ = _training_markdown({"shots": ["a"], "selection": {"by": "validation", "source": "val_dir", "step": 8}})
    assert "saved step: 8" in text and "validation data (val_dir)" in text
    text, _ = _training_markdown({"shots": ["a"], "selection": {"by": "final step", "step": 32}})
    assert "the final step (32)" in text


# -- #11.7: the card whoever writes it, licences -----------------------------------------------------------------------
def test_plain_peft_save_pretrained_writes_a_losam_card(tmp_path):
    from helpers import tiny_model
    from peft import get_peft_model

    from losam_peft import LoSamConfig

    base = tiny_model()
    base.name_or_path = "facebook/sam-vit-base"  # as from_pretrained("facebook/sam-vit-base") records it
    model = get_peft_model(base, LoSamConfig(modality="fundus", task="vessels"))
    model.save_pretrained(tmp_path / "plain")
    card = ModelCard.load(tmp_path / "plain" / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.pipeline_tag == "image-segmentation"
    assert card.data.base_model == "facebook/sam-vit-base"
    assert {"losam", "image-segmentation", "fundus", "vessels"} <= set(card.data.tags)
    # a local base stays out of the YAML (the Hub accepts repository ids only)
    base = tiny_model()
    base.name_or_path = str(tmp_path)
    local = get_peft_model(base, LoSamConfig())
    local.save_pretrained(tmp_path / "local")
    card = ModelCard.load(tmp_path / "local" / "README.md")
    assert card.data.base_model is None and not any(str(t).startswith("base_model:") for t in card.data.tags)
    assert card.data.pipeline_tag == "image-segmentation" and "losam" in card.data.tags


def test_other_peft_types_keep_peft_s_own_card(tmp_path):
    from helpers import tiny_model
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(), LoraConfig(target_modules=["qkv"], r=2))
    model.save_pretrained(tmp_path / "lora")
    card = ModelCard.load(tmp_path / "lora" / "README.md")
    assert "losam" not in (card.data.tags or []) and card.data.pipeline_tag is None


def test_card_states_the_licence_and_the_datasets_with_theirs():
    card = build_model_card(_config(), base_model="facebook/sam-vit-base", datasets=["drive", "someone/retinas"],
                            license="cc-by-nc-4.0", metrics=METRICS)  # fmt: skip
    assert card.data.license == "cc-by-nc-4.0"
    assert card.data.datasets == ["someone/retinas"]  # only Hub ids in the YAML
    text = str(card)
    assert "Licence of this adapter: `cc-by-nc-4.0`" in text
    assert "- DRIVE: licence DRIVE terms of use" in text and "someone/retinas" in text
    assert "unnamed" not in text
    unlicensed = str(build_model_card(_config(), base_model=None, metrics={**METRICS, "dataset": None}))
    assert "none was stated" in unlicensed and "unnamed" not in unlicensed
    assert "no dataset name was recorded" in unlicensed


def test_training_records_the_licence_in_the_card(tmp_path):
    import torch
    from helpers import tiny_config

    from losam_peft import SamForSemanticSegmentation
    from losam_peft.data.samples import Sample
    from losam_peft.data.synthetic import make_samples
    from losam_peft.training import TrainingConfig, train

    torch.manual_seed(0)
    SamForSemanticSegmentation(tiny_config()).save_pretrained(tmp_path / "base")
    samples = [Sample(s.image, s.mask, s.id, s.fov) for s in make_samples("fundus", 1, size=48, seed=1)]
    train(TrainingConfig(output_dir=str(tmp_path / "out"), base=str(tmp_path / "base"), max_steps=1, log_with="none",
                         license="apache-2.0", datasets=["drive"]), samples, progress=False)  # fmt: skip
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "apache-2.0" and "- DRIVE: licence" in card.text


def test_the_card_names_the_encoder_family():
    from losam_peft.model_card import encoder_name

    assert encoder_name(_config()) == "SAM ViT-B"
    assert encoder_name(_config(encoder_block="Dinov2Layer", encoder_hidden_size=1024, encoder_num_layers=24)) == (
        "DINOv2 ViT-L"
    )
    card = build_model_card(_config(encoder_block="ViTMAELayer", encoder_hidden_size=1024, encoder_num_layers=24),
                            base_model=None)  # fmt: skip
    assert "ViT-MAE ViT-L" in str(card)
