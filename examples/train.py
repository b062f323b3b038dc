"""Train a LoSAM adapter; run with ``accelerate launch examples/train.py ...`` for multi-GPU / mixed precision.

The same options as ``losam train --help`` (this is ``losam train``). One-shot example:

    accelerate launch examples/train.py --base facebook/sam-vit-base --labels background,vessel \
        --train-image DRIVE/training/images/21_training.tif --train-mask DRIVE/training/1st_manual/21_manual1.gif \
        --val-dir my_validation_folder --eval-every 8 --mixed-precision bf16 --output-dir runs/drive-one-shot
"""

import sys

from losam_peft.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
