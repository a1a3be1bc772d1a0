"""Silence two known, harmless messages of the torch stack at their source, and nothing else.

- bitsandbytes >= 0.49 on CPUs with AVX512-BF16 logs "Failed to load CPU gemm_4bit_forward from
  kernels-community" when it is imported and the optional `kernels` package (a hub download) is
  absent; it then uses its own CPU kernel, which is what we want offline.
- peft reads transformers 5.x's deprecated `is_gradient_checkpointing` property each time it wraps a
  model, which warns "FutureWarning: `is_gradient_checkpointing` is deprecated" on every load.

`silence_known_noise()` runs when the package is imported (emotion_summary/__init__.py), before any
entry point imports transformers, which imports peft, which imports bitsandbytes. Other log records
of that logger and other warnings, from the same modules too, still show.
"""

from __future__ import annotations

import logging
import warnings

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class DropMessage(logging.Filter):
    """Drops log records whose unformatted message starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_known_noise() -> None:
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, DropMessage) for f in logger.filters):
        logger.addFilter(DropMessage(BNB_KERNELS_MESSAGE))
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                            category=FutureWarning, module=r"transformers\.modeling_utils")
