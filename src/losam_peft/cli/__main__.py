"""``python -m losam_peft.cli`` (and ``accelerate launch -m losam_peft.cli …``)."""

import sys

from . import main

sys.exit(main())
