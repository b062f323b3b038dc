"""``losam convert sam-checkpoint`` and ``losam convert reference-adapter``."""

from __future__ import annotations

import argparse

from ..convert_reference import convert_reference_adapter
from ..convert_sam import SAM_MODEL_TYPES, convert_sam_checkpoint
from .common import parse_labels

_DESCRIPTION = """\
Turn checkpoints you already have into what losam-peft loads (safetensors). The .pth files are opened with
torch.load(weights_only=True) (tensors and plain containers only; anything else is refused without being run);
this command is the only place losam-peft reads a pickle.

  sam-checkpoint     Meta's SAM (sam_vit_b_01ec64.pth, _l_, _h_) or MedSAM (medsam_vit_b.pth) -> a base folder
                     (model.safetensors + config.json) for --base
  reference-adapter  the authors' trained PromptSAM / PromptDiNo .pth -> a LoSAM adapter folder on --base
"""


def add_convert_parser(sub) -> None:
    convert = sub.add_parser(
        "convert",
        help="original SAM/MedSAM checkpoints and the authors' weights -> losam-peft folders",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert_sub = convert.add_subparsers(dest="convert_command", required=True)

    sam = convert_sub.add_parser(
        "sam-checkpoint",
        help="Meta's SAM / MedSAM .pth -> a base model folder",
        description="Write the image encoder of Meta's SAM or MedSAM .pth as a transformers-format folder "
        "(model.safetensors + config.json) that --base accepts. Every encoder dimension is read from the tensor "
        "shapes (hidden size, depth, heads from the relative-position width, window size and global layers from "
        "their lengths, input size from the position embedding), so small or custom encoders convert too.",
    )
    sam.add_argument("input", metavar="IN.pth", help="the SAM / MedSAM checkpoint")
    sam.add_argument("output_dir", metavar="OUT_DIR", help="the folder to write")
    sam.add_argument("--model-type", choices=sorted(SAM_MODEL_TYPES), default=None,
                     help="check the shapes against this release's architecture (default: read them as they are)")  # fmt: skip
    sam.add_argument("--overwrite", action="store_true", help="replace an OUT_DIR written by losam-peft")
    sam.set_defaults(func=run_sam_checkpoint)

    ref = convert_sub.add_parser(
        "reference-adapter",
        help="the authors' PromptSAM / PromptDiNo .pth -> a LoSAM adapter folder",
        description="Split the authors' trained PromptSAM (SAM) or PromptDiNo (DINOv2) state dict into a LoSAM "
        "adapter (prompt layers + head in adapter_model.safetensors, adapter_config.json with align_corners=True, "
        "the reference's preprocessing: plain resize, mean/std 0.5). The file's frozen encoder must equal --base's.",
    )
    ref.add_argument("input", metavar="IN.pth", help="the reference's saved model.state_dict()")
    ref.add_argument("output_dir", metavar="OUT_DIR", help="the adapter folder to write")
    ref.add_argument("--base", required=True,
                     help="the encoder it was trained on: a Hub id or folder (facebook/sam-vit-base, a folder from "
                     "`losam convert sam-checkpoint`, facebook/dinov2-small…)")  # fmt: skip
    ref.add_argument("--labels", type=parse_labels, default=None,
                     help="class names, e.g. background,vessel (default: background,class_1,…)")  # fmt: skip
    ref.add_argument("--modality", default=None, help="recorded in the adapter, e.g. fundus, octa")
    ref.add_argument("--task", default=None, help="recorded in the adapter, e.g. vessels, lesions")
    ref.add_argument("--allow-encoder-mismatch", action="store_true",
                     help="convert even when the file's encoder weights differ from --base's (a warning says by how "
                     "much)")  # fmt: skip
    ref.add_argument("--overwrite", action="store_true", help="replace an OUT_DIR written by losam-peft")
    ref.set_defaults(func=run_reference_adapter)


def run_sam_checkpoint(args: argparse.Namespace) -> int:
    out = convert_sam_checkpoint(args.input, args.output_dir, model_type=args.model_type, overwrite=args.overwrite)
    print(f"wrote the SAM image encoder of {args.input} to {out}; use it as --base {out}")
    return 0


def run_reference_adapter(args: argparse.Namespace) -> int:
    out = convert_reference_adapter(
        args.input,
        args.output_dir,
        base=args.base,
        labels=args.labels,
        overwrite=args.overwrite,
        allow_encoder_mismatch=args.allow_encoder_mismatch,
        modality=args.modality,
        task=args.task,
    )
    print(f"wrote the LoSAM adapter of {args.input} to {out}; load it with LoSamPipeline.from_pretrained({str(out)!r})")
    return 0
