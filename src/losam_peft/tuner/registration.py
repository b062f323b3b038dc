"""Registering the "LOSAM" PEFT type from outside PEFT.

PEFT's ``register_peft_method`` only accepts names that are members of its ``PeftType`` enum, which cannot be
extended from outside. Its dispatch tables, however, are plain dicts keyed by ``PeftType`` members, which are ``str``
subclasses whose hash and equality are those of their string value. Registering under the plain string ``"LOSAM"``
therefore makes every lookup that PEFT does with ``config.peft_type`` (config loading, ``get_peft_model``, the
state-dict helpers that delegate to the tuner class) find LoSAM, without touching the enum. A round-trip test guards
this against PEFT releases that change the tables.
"""

from __future__ import annotations

from ..constants import SUPPORTED_PEFT
from .config import LOSAM_PEFT_TYPE, LoSamConfig
from .model import LoSamModel


def register_losam_peft_type() -> None:
    """Make PEFT know the "LOSAM" type. Idempotent; raises if PEFT's registry no longer has the expected shape."""
    try:
        from peft import mapping
    except ImportError as err:  # pragma: no cover
        raise ImportError(f"losam-peft needs peft{SUPPORTED_PEFT}") from err
    tables = {
        "PEFT_TYPE_TO_CONFIG_MAPPING": LoSamConfig,
        "PEFT_TYPE_TO_TUNER_MAPPING": LoSamModel,
        "PEFT_TYPE_TO_PREFIX_MAPPING": LoSamModel.prefix,
    }
    for table_name, value in tables.items():
        table = getattr(mapping, table_name, None)
        if not isinstance(table, dict):
            import peft

            raise ImportError(
                f"peft {peft.__version__} has no {table_name} registry; losam-peft supports peft{SUPPORTED_PEFT}"
            )
        current = table.get(LOSAM_PEFT_TYPE)
        if current is not None and current is not value and current != value:
            raise RuntimeError(f"another package registered the PEFT type {LOSAM_PEFT_TYPE!r} in {table_name}")
        table[LOSAM_PEFT_TYPE] = value
