"""The LoSAM tuner: mixed-adapter batches give every row its own adapter's prompts and head."""

import pytest
import torch
from helpers import tiny_model
from peft import get_peft_model

from losam_peft import LoSamConfig


def _two_adapters():
    torch.manual_seed(0)
    model = get_peft_model(tiny_model(), LoSamConfig(), adapter_name="vessels")
    model.add_adapter("lesions", LoSamConfig())
    with torch.no_grad():  # make the adapters (prompts and heads) clearly different
        for name, param in model.named_parameters():
            if ".lesions." in name:
                param.add_(torch.randn_like(param) * 0.5)
            elif ".vessels." in name:
                param.add_(torch.randn_like(param) * 0.5)
    return model.eval()


def test_each_row_gets_its_own_adapter():
    model = _two_adapters()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        mixed = model(pixel_values=x, adapter_names=["vessels", "lesions", "__base__"]).logits
        model.set_adapter("vessels")
        only_a = model(pixel_values=x[:1]).logits
        model.set_adapter("lesions")
        only_b = model(pixel_values=x[1:2]).logits
        with model.disable_adapter():
            base = model(pixel_values=x[2:]).logits
    torch.testing.assert_close(mixed[0:1], only_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1:2], only_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[2:], base, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(only_a, only_b, atol=1e-3)


def test_mixed_batches_refuse_what_they_cannot_do():
    model = _two_adapters()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="no adapter named c"):
        model(pixel_values=x, adapter_names=["vessels", "c"])
    with pytest.raises(ValueError, match="2 images"):
        model(pixel_values=x, adapter_names=["vessels", "lesions", "vessels"])
    model.train()
    with pytest.raises(ValueError, match="inference"):
        model(pixel_values=x, adapter_names=["vessels", "lesions"])
