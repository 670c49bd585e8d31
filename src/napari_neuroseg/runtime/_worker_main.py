"""Entry point of the worker process (see :mod:`napari_neuroseg.runtime.subprocess`).

Reads ``(address, authkey_hex)`` from stdin, connects back to the parent, receives the parent's
``sys.path``, then serves ``(fn, args, kwargs)`` calls until it receives ``None`` or the
connection closes (the parent exited).
"""

from __future__ import annotations

import ast
import sys
import traceback


def serve(conn) -> None:
    """Answer calls with ``("ok", result)`` or ``("err", exception, traceback text)``."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        try:
            fn, args, kwargs = msg
            reply = ("ok", fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
            reply = ("err", err, traceback.format_exc())
        try:
            conn.send(reply)
        except Exception as err:  # noqa: BLE001 - unpicklable result or exception
            conn.send(("err", RuntimeError(f"worker could not send its reply: {err!r}"), traceback.format_exc()))


def main() -> None:
    from multiprocessing.connection import Client

    address, key = ast.literal_eval(sys.stdin.readline())
    conn = Client(address, authkey=bytes.fromhex(key))
    try:
        path = conn.recv()
        for p in reversed(path):
            if p not in sys.path:
                sys.path.insert(0, p)
        serve(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
