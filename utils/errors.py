"""How a command ends on a user's mistake: one line naming it on stderr and exit status 2.

A user's mistake is what the project raises for bad input: ``ValueError`` and its subclasses
(``utils.io.InputError``, ``utils.config.ConfigError`` for a typo'd YAML key or a missing YAML,
``utils.checkpoint.CheckpointError`` for a corrupt or refused checkpoint, a finished run given to
--resume) and ``OSError`` (a missing or unwritable file). The traceback is logged at DEBUG level.
"""
from __future__ import annotations

import logging

from utils.io import one_line

LOGGER = logging.getLogger(__name__)

USER_ERRORS = (ValueError, OSError)
USER_ERROR_STATUS = 2


def exit_on_error(fn, *args, failures: tuple[type[BaseException], ...] = (), **kwargs):
    """``fn(*args, **kwargs)``; a user's mistake ends the process (SystemExit 2) with one line,
    and so does one of ``failures`` (exceptions whose message says what to do; SystemExit 1)."""
    try:
        return fn(*args, **kwargs)
    except failures as exc:
        _one_line_exit(exc, 1)
    except USER_ERRORS as exc:
        _one_line_exit(exc, USER_ERROR_STATUS)


def _one_line_exit(exc: BaseException, status: int):
    LOGGER.debug("traceback", exc_info=True)
    LOGGER.error("%s", one_line(exc, 1000) or type(exc).__name__)
    raise SystemExit(status) from None
