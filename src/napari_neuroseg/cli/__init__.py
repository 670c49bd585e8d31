"""The ``neuroseg`` command line: one entry point, one module per subcommand.

Every module in this package that defines ``register(subparsers)`` adds its subcommand; the
registered function is stored as ``func`` on the parsed arguments and called with them.
Errors of type :class:`~napari_neuroseg.errors.NeurosegError` (and other exceptions) become one
clear line on stderr and a non-zero exit code, unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from napari_neuroseg.errors import NeurosegError


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand module of this package registered."""
    parser = argparse.ArgumentParser(
        prog="neuroseg",
        description="3D nuclei and neuron segmentation, FISBe metrics and proofreading.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def _check_io(args: argparse.Namespace) -> None:
    """Outputs never overwrite inputs: a subcommand lists its path flags in ``io_flags``
    (``({"GT": "gt", ...}, {"--json": "json_out", ...})``: inputs, outputs; flag -> dest)."""
    io_flags = getattr(args, "io_flags", None)
    if not io_flags:
        return
    from napari_neuroseg.io.checks import require_outputs_apart

    ins, outs = ({flag: getattr(args, dest, None) for flag, dest in d.items()} for d in io_flags)
    require_outputs_apart(ins, outs)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``neuroseg``; returns the process exit code (130 after Ctrl-C, one line on stderr)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("neuroseg: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        _check_io(args)
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"neuroseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except NeurosegError as err:
        if args.debug:
            raise
        print(f"neuroseg {args.command}: error: {err}", file=sys.stderr)
        return 1
    except MemoryError as err:
        if args.debug:
            raise
        print(f"neuroseg {args.command}: error: out of memory ({err or 'allocation failed'}). "
              "Fix: use smaller tiles/blocks/patches (see --help) or a machine with more memory.",
              file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - one clear line, traceback only with --debug
        if args.debug:
            raise
        print(
            f"neuroseg {args.command}: error: {type(err).__name__}: {err} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
