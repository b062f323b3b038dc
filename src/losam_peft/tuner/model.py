"""``LoSamModel``: the PEFT tuner that wraps every targeted encoder block in a ``LoSamLayer``.

The blocks are found by class (:data:`SUPPORTED_BLOCKS`): SAM's ``SamVisionLayer`` (whose input is the channels-last
token grid) and the token-sequence blocks of DINOv2, DINOv2 with registers, ViT and ViT-MAE (whose input is
[CLS, registers, patches]; the prompt runs on the patches only, on their grid, recorded by a forward pre-hook on the
encoder's embeddings).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from peft.tuners.tuners_utils import BaseTuner, _get_submodules, check_target_module_exists
from peft.utils import ModulesToSaveWrapper
from torch import nn
from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import Dinov2WithRegistersLayer
from transformers.models.sam.modeling_sam import SamVisionLayer
from transformers.models.vit.modeling_vit import ViTLayer
from transformers.models.vit_mae.modeling_vit_mae import ViTMAELayer

from ..errors import LoSamValueError
from ..labels import normalise_id2label
from .config import DEFAULT_TARGET_MODULES, LoSamConfig
from .layer import LoSamLayer, TokenGrid, block_hidden_size

#: the encoder blocks LoSAM puts a prompt layer in front of, and the encoders they belong to
SUPPORTED_BLOCKS: dict[type, str] = {
    SamVisionLayer: "SAM (SamVisionEncoder)",
    Dinov2Layer: "DINOv2 (Dinov2Model)",
    Dinov2WithRegistersLayer: "DINOv2 with registers (Dinov2WithRegistersModel)",
    ViTLayer: "ViT (ViTModel)",
    ViTMAELayer: "ViT-MAE (ViTMAEModel)",
}
#: blocks whose input is already the (B, H, W, C) token grid; the others take (B, N, C) token sequences
GRID_BLOCKS = (SamVisionLayer,)
#: the attribute on an encoder's embeddings module that holds its shared TokenGrid (and hook)
TOKEN_GRID_ATTR = "_losam_token_grid"


def supported_encoders() -> str:
    return ", ".join(f"{cls.__name__} blocks of {what}" for cls, what in SUPPORTED_BLOCKS.items())


class LoSamModel(BaseTuner):
    """Adds a learnable prompt layer before every targeted block of a ViT image encoder (Learnable Ophthalmology SAM):
    SAM's, or DINOv2's, ViT's or ViT-MAE's (:data:`SUPPORTED_BLOCKS`).

    Use through PEFT: ``peft.get_peft_model(SamForSemanticSegmentation(...), LoSamConfig())`` (or a
    ``Dinov2ForLoSamSegmentation``, ``ViTForLoSamSegmentation``…).
    """

    prefix: str = "losam_"
    tuner_layer_cls = LoSamLayer
    target_module_mapping: dict = {}

    def _prepare_adapter_config(self, peft_config: LoSamConfig, model_config: dict) -> LoSamConfig:
        if peft_config.target_modules is None:
            peft_config.target_modules = DEFAULT_TARGET_MODULES
        return peft_config

    def _pre_injection_hook(self, model: nn.Module, config: LoSamConfig, adapter_name: str) -> None:
        block_types = tuple(SUPPORTED_BLOCKS) + (LoSamLayer,)
        blocks = [name for name, module in model.named_modules() if isinstance(module, block_types)]
        blocks = [name for name in blocks if ".base_layer" not in name]
        if not blocks:
            raise LoSamValueError(
                f"LoSAM adapts a ViT image encoder, but {type(model).__name__} contains no supported encoder blocks; "
                f"supported: {supported_encoders()}"
            )
        block_kind = type(_unwrapped(model.get_submodule(blocks[0]))).__name__
        hidden = _encoder_hidden_size(model, blocks[0])
        _check_recorded("encoder_hidden_size", config.encoder_hidden_size, hidden, adapter_name)
        _check_recorded("encoder_num_layers", config.encoder_num_layers, len(blocks), adapter_name)
        config.encoder_hidden_size, config.encoder_num_layers = hidden, len(blocks)
        config.encoder_block = block_kind
        model_config = getattr(model, "config", None)
        model_labels = getattr(model_config, "num_labels", None) if hasattr(model, "segmentation_head") else None
        if model_labels is not None:
            _check_recorded("num_labels", config.num_labels, model_labels, adapter_name)
            config.num_labels = model_labels
            if config.id2label is None:
                config.id2label = normalise_id2label(model_config.id2label)
        if config.image_size is None and model_config is not None:
            config.image_size = getattr(model_config, "image_size", None)
        if model_config is not None and hasattr(model_config, "align_corners"):
            if config.align_corners is None:
                config.align_corners = bool(model_config.align_corners)
            elif bool(config.align_corners) != bool(model_config.align_corners):
                model_config.align_corners = bool(config.align_corners)  # the adapter's head was trained that way

        targets = config.target_modules if config.target_modules is not None else DEFAULT_TARGET_MODULES
        probe = LoSamConfig(target_modules=targets, exclude_modules=config.exclude_modules)
        matched = [name for name, _ in model.named_modules() if check_target_module_exists(probe, name)]
        matched = [name for name in matched if ".base_layer" not in name and "losam_" not in name]
        if not matched:
            raise LoSamValueError(
                f"LoSamConfig.target_modules={targets!r} matches no module; expected encoder blocks such as "
                f"{blocks[0]!r} … {blocks[-1]!r}"
            )
        wrong = [name for name in matched if name not in blocks]
        if wrong:
            kinds = {type(model.get_submodule(name)).__name__ for name in wrong}
            raise LoSamValueError(
                f"LoSamConfig.target_modules={targets!r} matches {wrong[:3]} ({', '.join(sorted(kinds))}); LoSAM "
                f"prompt layers go in front of {block_kind} blocks only, such as {blocks[0]!r}"
            )

    def _create_and_replace(
        self,
        peft_config: LoSamConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs,
    ) -> None:
        if isinstance(target, LoSamLayer):
            target.update_layer(adapter_name, peft_config.reduction, peft_config.layer_norm_eps)
            return
        if not isinstance(target, tuple(SUPPORTED_BLOCKS)):
            raise LoSamValueError(
                f"{current_key} is a {type(target).__name__}; LoSAM targets encoder blocks only: {supported_encoders()}"
            )
        grid = None if isinstance(target, GRID_BLOCKS) else self._token_grid(current_key)
        new_module = LoSamLayer(
            target, adapter_name, peft_config.reduction, peft_config.layer_norm_eps, token_grid=grid
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def unload(self) -> nn.Module:
        """The untouched base model: prompt layers removed and the base model's own head put back.

        (PEFT's default would keep the active adapter's trained copy of the head; the trained head lives on in the
        adapter files.)
        """
        for name, module in list(self.model.named_modules()):
            if isinstance(module, ModulesToSaveWrapper):
                parent, _, child_name = _get_submodules(self.model, name)
                setattr(parent, child_name, module.original_module)
            grid = module.__dict__.get(TOKEN_GRID_ATTR)
            if grid is not None:
                grid.handle.remove()
                del module.__dict__[TOKEN_GRID_ATTR]
        return self._unload_and_optionally_merge(merge=False)

    def _token_grid(self, block_key: str) -> TokenGrid:
        """The shared ``TokenGrid`` of the encoder that holds the token-sequence block ``block_key``: the nearest
        enclosing module with ``embeddings.patch_embeddings`` (a ``Dinov2Model``, ``ViTModel``…), whose embeddings get
        the recording hook once."""
        parts = block_key.split(".")
        for depth in range(len(parts) - 1, -1, -1):
            owner = self.model.get_submodule(".".join(parts[:depth]))
            embeddings = getattr(owner, "embeddings", None)
            patches = getattr(embeddings, "patch_embeddings", None)
            if patches is None:
                continue
            grid = embeddings.__dict__.get(TOKEN_GRID_ATTR)
            if grid is None:
                patch = patches.patch_size
                patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
                prefix = int(getattr(embeddings, "cls_token", None) is not None)
                registers = getattr(embeddings, "register_tokens", None)
                prefix += int(registers.shape[1]) if registers is not None else 0
                grid = TokenGrid(prefix, patch)
                grid.handle = embeddings.register_forward_pre_hook(grid.record, with_kwargs=True)
                embeddings.__dict__[TOKEN_GRID_ATTR] = grid
            return grid
        raise LoSamValueError(
            f"{block_key}: found no encoder with patch embeddings around this block, so its patch grid is unknown"
        )

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # Encoder blocks have no single `weight` to re-attach (PEFT's default assumes a Linear-like module); the prompt
        # layers were already put on the block's device by LoSamLayer.update_layer.
        setattr(parent, child_name, new_module)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # prompt layers are whole modules: "…losam_prompt.<adapter>.down.weight" is saved as "…losam_prompt.down.weight"
        marker = f".losam_prompt.{adapter_name}."
        if marker in key:
            return key.replace(marker, ".losam_prompt.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """``model(pixel_values=x, adapter_names=[...])``: each row through its own adapter's prompt layers and head
        (``"__base__"``: no prompts, the base model's own head). Inference only."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise LoSamValueError("adapter_names (a mixed batch) is for inference; call model.eval() first")
        if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)):
            raise LoSamValueError(f"adapter_names must be a list with one adapter name per image, got {adapter_names!r}")
        known = set()
        for module in self.modules():
            if isinstance(module, LoSamLayer):
                known |= set(module.losam_prompt.keys())
        unknown = sorted({name for name in adapter_names if name != "__base__"} - known)
        if unknown:
            raise LoSamValueError(f"no adapter named {', '.join(unknown)} (loaded: {', '.join(sorted(known))})")
        names = list(adapter_names)
        handles, wrapped = [], []
        for module in self.modules():
            if isinstance(module, LoSamLayer):
                hook = partial(_inject_adapter_names, adapter_names=names)
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            elif isinstance(module, ModulesToSaveWrapper):
                # PEFT's own mixed batching supports Linear/Conv modules only; the head is a whole module
                module.forward = partial(_per_row_forward, module, names)
                wrapped.append(module)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for module in wrapped:
                del module.forward

    def _check_merge_allowed(self):
        raise LoSamValueError("LoSAM prompt layers cannot be merged into the encoder; use unload() instead")


def _per_row_forward(wrapper: ModulesToSaveWrapper, adapter_names: list[str], x, *args, **kwargs):
    """Row ``i`` through adapter ``adapter_names[i]``'s copy of the module (``"__base__"``: the original)."""
    if len(adapter_names) != x.shape[0]:
        raise LoSamValueError(f"adapter_names names {len(adapter_names)} adapters for a batch of {x.shape[0]} images")
    outputs = [None] * x.shape[0]
    for name in dict.fromkeys(adapter_names):
        rows = [i for i, item in enumerate(adapter_names) if item == name]
        module = wrapper.modules_to_save[name] if name in wrapper.modules_to_save else wrapper.original_module
        result = module(x[rows], *args, **kwargs)
        for position, row in enumerate(rows):
            outputs[row] = result[position : position + 1]
    return torch.cat(outputs, dim=0)


def _inject_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def _unwrapped(block: nn.Module) -> nn.Module:
    return block.base_layer if isinstance(block, LoSamLayer) else block


def _encoder_hidden_size(model: nn.Module, block_name: str) -> int:
    block = model.get_submodule(block_name)
    if isinstance(block, LoSamLayer):
        return block.hidden_size
    return block_hidden_size(block)


def _check_recorded(field: str, recorded, found, adapter_name: str) -> None:
    if recorded is not None and int(recorded) != int(found):
        what = {
            "encoder_hidden_size": "an encoder of hidden size",
            "encoder_num_layers": "an encoder with this many blocks:",
            "num_labels": "a head with num_labels =",
        }[field]
        raise LoSamValueError(
            f"adapter {adapter_name!r} was made for {what} {recorded}, but the model has {found}; "
            + (
                "load the base model with the adapter's labels (num_labels/id2label from adapter_config.json)"
                if field == "num_labels"
                else "load it onto the encoder size it was trained with (see base_model_name_or_path)"
            )
        )

