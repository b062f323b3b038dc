"""The LoSAM prompt layer and the PEFT tuner layer that puts it in front of an encoder block.

The prompt layer works on a channels-last grid of patch tokens (B, H, W, C). SAM's blocks take exactly that grid. The
blocks of token-sequence encoders (DINOv2, DINOv2 with registers, ViT, ViT-MAE) take (B, N, C) with N = the prefix
tokens (CLS, registers) followed by the H x W patch tokens in row-major order; for those a :class:`TokenGrid` says
how many prefix tokens there are and what H x W the last forward had, so the prompt runs on the patch tokens only and
the prefix tokens pass through untouched.

A 1x1 conv on channels-last tokens is a ``Linear``, and the depthwise 3x3 conv runs on a permuted *view* of the grid
(torch's channels_last memory format), so the prompt layer never copies the grid into channels-first order.
"""

from __future__ import annotations

import math
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


class TokenGrid:
    """The layout of a token-sequence encoder's block input: ``num_prefix_tokens`` (CLS, registers) and then the
    patch tokens of an H x W grid, row by row.

    One instance is shared by every prompted block of an encoder. ``record`` is a forward pre-hook on the encoder's
    embeddings module: it notes the patch grid of the pixel values going in, so non-square inputs work. Without a
    recorded grid (a block called on its own), a square grid is assumed.
    """

    def __init__(self, num_prefix_tokens: int, patch_size: tuple[int, int]):
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.shape: tuple[int, int] | None = None
        self.handle = None  # the hook's RemovableHandle

    def record(self, module: nn.Module, args, kwargs):
        pixel_values = args[0] if args else kwargs.get("pixel_values")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            return None
        height, width = (int(v) for v in pixel_values.shape[-2:])
        self.shape = (height // self.patch_size[0], width // self.patch_size[1])
        mask_ratio = getattr(getattr(module, "config", None), "mask_ratio", None)
        if mask_ratio is not None and hasattr(module, "random_masking"):
            # ViT-MAE drops and shuffles patch tokens: a segmentation encoder needs all of them, in grid order
            if float(mask_ratio) > 0:
                raise LoSamValueError(
                    f"LoSAM needs every patch token of the ViT-MAE encoder in grid order, but its config has "
                    f"mask_ratio={mask_ratio}; set config.mask_ratio = 0.0"
                )
            if kwargs.get("noise") is None and len(args) < 2:
                count = self.shape[0] * self.shape[1]
                order = torch.arange(count, device=pixel_values.device, dtype=torch.float32)
                kwargs["noise"] = order.expand(pixel_values.shape[0], count)
                return args, kwargs
        return None

    def grid_shape(self, num_patches: int) -> tuple[int, int]:
        if self.shape is not None:
            if self.shape[0] * self.shape[1] != num_patches:
                raise LoSamValueError(
                    f"the encoder block received {num_patches} patch tokens, but the input's patch grid is "
                    f"{self.shape[0]}x{self.shape[1]} (tokens dropped or reordered before the blocks?)"
                )
            return self.shape
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise LoSamValueError(
                f"cannot tell the patch grid of {num_patches} patch tokens (not square, and no input was recorded)"
            )
        return side, side

    def __repr__(self) -> str:
        return f"TokenGrid(num_prefix_tokens={self.num_prefix_tokens}, patch_size={self.patch_size})"


def block_hidden_size(block: nn.Module) -> int:
    """The channel width of an encoder block, from its first LayerNorm (SAM ``layer_norm1``, DINOv2 ``norm1``, ViT
    ``layernorm_before``)."""
    for name in ("layer_norm1", "norm1", "layernorm_before"):
        norm = getattr(block, name, None)
        if isinstance(norm, nn.LayerNorm):
            return int(norm.normalized_shape[0])
    raise LoSamValueError(f"cannot tell the hidden size of a {type(block).__name__} block (no first LayerNorm)")


class LoSamLayer(nn.Module, BaseTunerLayer):
    """Wraps one encoder block: the block receives ``f + prompt(f)`` (summed over the active adapters).

    ``token_grid`` is None for SAM's blocks (their input is the (B, H, W, C) grid itself) and a :class:`TokenGrid`
    for token-sequence blocks, whose prefix tokens pass through unchanged.
    """

    adapter_layer_names = ("losam_prompt",)
    other_param_names = ("reduction",)

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        reduction: int = 4,
        layer_norm_eps: float = 1e-6,
        token_grid: TokenGrid | None = None,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.losam_prompt = nn.ModuleDict({})
        self.reduction: dict[str, int] = {}
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.hidden_size = block_hidden_size(base_layer)
        self.token_grid = token_grid
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
        grid = self._patch_grid(hidden_states)
        if adapter_names is not None:
            prompt = self._mixed_prompt(grid, adapter_names)
        else:
            prompt = None
            for name in self.active_adapters:
                if name not in self.losam_prompt:
                    continue
                layer = self.losam_prompt[name]
                delta = layer(self._cast_input_dtype(grid, layer.down.weight.dtype))
                prompt = delta if prompt is None else prompt + delta
        if prompt is not None:
            hidden_states = self._add_prompt(hidden_states, prompt)
        return self.base_layer(hidden_states, *args, **kwargs)

    # -- the patch grid of the block's input --------------------------------------------------------------------------
    def _patch_grid(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The (B, H, W, C) patch tokens of the block input (SAM's input itself; a reshape of the patch tokens)."""
        if self.token_grid is None:
            return hidden_states
        if hidden_states.dim() != 3:
            raise LoSamValueError(
                f"expected (batch, tokens, channels) tokens for a {type(self.base_layer).__name__} block, got "
                f"{tuple(hidden_states.shape)}"
            )
        prefix = self.token_grid.num_prefix_tokens
        patches = hidden_states[:, prefix:]
        height, width = self.token_grid.grid_shape(patches.shape[1])
        return patches.reshape(patches.shape[0], height, width, patches.shape[2])

    def _add_prompt(self, hidden_states: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        prompt = prompt.to(hidden_states.dtype)
        if self.token_grid is None:
            return hidden_states + prompt
        prefix = self.token_grid.num_prefix_tokens
        patches = hidden_states[:, prefix:] + prompt.reshape(hidden_states.shape[0], -1, hidden_states.shape[2])
        return torch.cat([hidden_states[:, :prefix], patches], dim=1)

    def _mixed_prompt(self, grid: torch.Tensor, adapter_names) -> torch.Tensor:
        """Row ``i`` gets the prompt of adapter ``adapter_names[i]`` (``"__base__"``: none)."""
        if len(adapter_names) != grid.shape[0]:
            raise LoSamValueError(
                f"adapter_names names {len(adapter_names)} adapters for a batch of {grid.shape[0]} images"
            )
        prompt = torch.zeros_like(grid)
        for name in dict.fromkeys(adapter_names):
            if name == "__base__" or name not in self.losam_prompt:
                continue
            rows = [i for i, item in enumerate(adapter_names) if item == name]
            layer = self.losam_prompt[name]
            delta = layer(self._cast_input_dtype(grid[rows], layer.down.weight.dtype))
            prompt[rows] = delta.to(grid.dtype)
        return prompt

    def __repr__(self) -> str:
        return "losam." + super().__repr__()
