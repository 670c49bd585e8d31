"""One flag vocabulary for every ``neuroseg`` subcommand.

The shared spellings are ``-o/--output``, ``--n-tiles``, ``--steps``, ``--init-from``,
``--max-minutes`` and ``--device``; older spellings (``--out``, ``--tiles``, ``--iterations``,
``--init``) keep working as hidden aliases (accepted, not shown in ``--help``).
"""

from __future__ import annotations

import argparse
from typing import Any

#: old spelling -> the shared one
ALIASES = {"--out": "--output", "--tiles": "--n-tiles", "--iterations": "--steps", "--init": "--init-from"}


def add_flag(parser: Any, *flags: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(*flags, **kwargs)`` that also accepts the old spellings of ``flags``
    (:data:`ALIASES`) without listing them in ``--help``: the same action (destination, type,
    arity, ``required``) is reached by either spelling."""
    old = [o for o, new in ALIASES.items() if new in flags]
    action = parser.add_argument(*flags, *old, **kwargs)
    # parsing looks flags up in the parser's table (which keeps the old spellings); help and
    # usage list ``option_strings`` only
    action.option_strings = [s for s in action.option_strings if s not in old]
    return action
