"""What the command-line entry points share: bad input ends a command with one line.

``wmplan-collect``, ``wmplan-train``, ``wmplan-train-vae`` and ``wmplan-plan`` check their
inputs and raise ``ValueError`` / ``FileNotFoundError`` with a message that names the problem.
At the command line that message is the whole output (``<command>: error: ...``, exit code 2);
set ``WMPLAN_TRACEBACK=1`` to see the traceback as well. Other exceptions are bugs and keep
their traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from typing import Any, Callable

USER_ERRORS = (ValueError, FileNotFoundError)


def reports_user_errors(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a CLI ``main`` (under ``hydra.main``) so a user error prints one line and exits 2."""

    def decorate(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return main(*args, **kwargs)
            except USER_ERRORS as err:
                if os.environ.get("WMPLAN_TRACEBACK"):
                    raise
                print(f"{command}: error: {err}", file=sys.stderr)
                raise SystemExit(2) from None

        return wrapper

    return decorate


def check_numbers(cfg: Any, ints: Mapping[str, int], floats: tuple[str, ...] = ()) -> None:
    """Refuse a config whose ``ints`` (dotted key -> minimum) are not ints at least that large,
    or whose ``floats`` are not numbers: a wrong-type override (``training.batch_size=abc``)
    names the key here instead of failing deep inside torch."""
    from omegaconf import OmegaConf

    for key, minimum in ints.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{key} must be an int >= {minimum}, got {value!r}")
    for key in floats:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {value!r}")
