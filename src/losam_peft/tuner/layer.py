"""The LoSAM prompt layer and the PEFT tuner layer that puts it in front of a ``SamVisionLayer``.

The encoder's tokens are a channels-last grid (B, H, W, C). A 1x1 conv on channels-last tokens is a ``Linear``, and
the depthwise 3x3 conv runs on a permuted *view* of the grid (torch's channels_last memory format), so the prompt
layer never copies the grid into channels-first order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..errors import LoSamValueError


class LoSamPromptLayer(nn.Module):
    """Eq. 2 of the paper: GELU(LN(W1(GELU(LN(DW3(GELU(LN(W1 f)))))))) on channels-last tokens.

    1x1 conv C -> C/r, LayerNorm, GELU, depthwise 3x3 conv on C/r channels (padding 1, no bias), LayerNorm, GELU,
    1x1 conv C/r -> C, LayerNorm, GELU. For SAM ViT-B (C=768, r=4) this has 299,904 parameters.
    """

    def __init__(self, hidden_size: int, reduction: int = 4, eps: float = 1e-6):
        super().__init__()
        if hidden_size % reduction:
            raise LoSamValueError(f"hidden size {hidden_size} is not divisible by the reduction {reduction}")
        inner = hidden_size // reduction
        self.down = nn.Linear(hidden_size, inner)
        self.norm1 = nn.LayerNorm(inner, eps=eps)
        self.dwconv = nn.Conv2d(inner, inner, kernel_size=3, padding=1, groups=inner, bias=False)
        self.norm2 = nn.LayerNorm(inner, eps=eps)
        self.up = nn.Linear(inner, hidden_size)
        self.norm3 = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.down(tokens)))
        # (B, H, W, c) -> (B, c, H, W) view in channels_last memory format; conv2d keeps that format
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = F.gelu(self.norm2(x))
        return F.gelu(self.norm3(self.up(x)))


class LoSamLayer(nn.Module, BaseTunerLayer):
    """Wraps one encoder block: the block receives ``f + prompt(f)`` (summed over the active adapters)."""

    adapter_layer_names = ("losam_prompt",)
    other_param_names = ("reduction",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, reduction: int = 4, layer_norm_eps: float = 1e-6):
        super().__init__()
        self.base_layer = base_layer
        self.losam_prompt = nn.ModuleDict({})
        self.reduction: dict[str, int] = {}
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.hidden_size = base_layer.layer_norm1.normalized_shape[0]
        self.update_layer(adapter_name, reduction, layer_norm_eps)

    def update_layer(self, adapter_name: str, reduction: int, layer_norm_eps: float = 1e-6, **kwargs: Any) -> None:
        self.reduction[adapter_name] = reduction
        self.losam_prompt[adapter_name] = LoSamPromptLayer(self.hidden_size, reduction, layer_norm_eps)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "LoSAM prompt layers are non-linear and cannot be merged into the encoder weights; "
            "use unload() to get the base model back"
        )

    def unmerge(self) -> None:
        return None

    def forward(self, hidden_states: torch.Tensor, *args: Any, adapter_names=None, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            return self.base_layer(hidden_states, *args, **kwargs)
        if adapter_names is not None:
            return self.base_layer(hidden_states + self._mixed_prompt(hidden_states, adapter_names), *args, **kwargs)
        prompt = None
        for name in self.active_adapters:
            if name not in self.losam_prompt:
                continue
            layer = self.losam_prompt[name]
            delta = layer(self._cast_input_dtype(hidden_states, layer.down.weight.dtype))
            prompt = delta if prompt is None else prompt + delta
        if prompt is not None:
            hidden_states = hidden_states + prompt.to(hidden_states.dtype)
        return self.base_layer(hidden_states, *args, **kwargs)

    def _mixed_prompt(self, hidden_states: torch.Tensor, adapter_names) -> torch.Tensor:
        """Row ``i`` gets the prompt of adapter ``adapter_names[i]`` (``"__base__"``: none)."""
        if len(adapter_names) != hidden_states.shape[0]:
            raise LoSamValueError(
                f"adapter_names names {len(adapter_names)} adapters for a batch of {hidden_states.shape[0]} images"
            )
        prompt = torch.zeros_like(hidden_states)
        for name in dict.fromkeys(adapter_names):
            if name == "__base__" or name not in self.losam_prompt:
                continue
            rows = [i for i, item in enumerate(adapter_names) if item == name]
            layer = self.losam_prompt[name]
            delta = layer(self._cast_input_dtype(hidden_states[rows], layer.down.weight.dtype))
            prompt[rows] = delta.to(hidden_states.dtype)
        return prompt

    def __repr__(self) -> str:
        return "losam." + super().__repr__()
