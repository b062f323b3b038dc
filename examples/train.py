"""Train a LoSAM adapter; run with ``accelerate launch examples/train.py ...`` for multi-GPU / mixed precision.

The same options as ``losam train --help``. One-shot example:

    accelerate launch examples/train.py --base facebook/sam-vit-base --labels background,vessel \
        --train-image DRIVE/training/images/21_training.tif --train-mask DRIVE/training/1st_manual/21_manual1.gif \
        --eval-dir my_eval_folder --eval-every 8 --mixed-precision bf16 --output-dir runs/drive-one-shot
"""

import argparse
import sys

from losam_peft.cli import add_training_arguments, print_training_result, run_training
from losam_peft.data.io import DataError
from losam_peft.loading import CheckpointError
from losam_peft.training import TrainingError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train a LoSAM adapter (Learnable Ophthalmology SAM)")
    add_training_arguments(parser)
    args = parser.parse_args(argv)
    try:
        print_training_result(run_training(args))
    except (DataError, CheckpointError, TrainingError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
