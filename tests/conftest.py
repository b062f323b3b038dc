"""Shared fixtures: a tiny model, a PEFT model on it, a saved adapter with its base, and the real datasets."""

import pytest
from helpers import SHARED_DATA, tiny_model


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def tiny():
    """A tiny random SamForSemanticSegmentation (hidden 32, 2 layers, 64 px)."""
    return tiny_model()


@pytest.fixture
def peft_model():
    """A LoSAM PEFT model on the tiny encoder."""
    from peft import get_peft_model

    from losam_peft import LoSamConfig

    return get_peft_model(tiny_model(), LoSamConfig())


@pytest.fixture(scope="session")
def saved_adapter(tmp_path_factory):
    """``(adapter_dir, base_dir)``: a tiny base written by save_pretrained and a LoSAM adapter saved on it."""
    from peft import get_peft_model

    from losam_peft import LoSamConfig, LoSamImageProcessor, save_adapter

    root = tmp_path_factory.mktemp("saved")
    base = tiny_model()
    base.save_pretrained(root / "base")
    base.name_or_path = str(root / "base")
    model = get_peft_model(base, LoSamConfig(base_model_name_or_path=str(root / "base")))
    save_adapter(model, root / "adapter", image_processor=LoSamImageProcessor(image_size=64))
    return root / "adapter", root / "base"
