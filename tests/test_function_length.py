"""Issue 15: no function in ``src/`` is over ~80 lines without a reason written next to it.

A function longer than ``MAX_LINES`` (from its ``def`` to its last line) needs a comment
``# long function: <reason>`` on the line(s) directly above its ``def`` (or above its first
decorator). Prefer splitting it into named steps."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 80
MARK = "# long function:"


def _has_reason(lines: list[str], first: int) -> bool:
    """True when the comment block directly above line ``first`` (1-based) holds ``MARK``."""
    i = first - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        if lines[i].strip().startswith(MARK) and lines[i].strip()[len(MARK):].strip():
            return True
        i -= 1
    return False


def long_functions_without_reason(root: Path = SRC) -> list[str]:
    """``file:line name (N lines)`` for each function over ``MAX_LINES`` lines with no reason."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if length > MAX_LINES and not _has_reason(lines, first):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_the_scan_finds_a_long_function_and_accepts_a_reason(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    (tmp_path / "a.py").write_text(f"def long():\n{body}\n\ndef short():\n    pass\n")
    (tmp_path / "b.py").write_text(f"# long function: a table\n@staticmethod\ndef ok():\n{body}")
    (tmp_path / "c.py").write_text(f"# long function:\ndef empty_reason():\n{body}")
    found = long_functions_without_reason(tmp_path)
    assert [f.split(" ")[1] for f in found] == ["long", "empty_reason"]
    assert found[0].endswith(f":1 long ({MAX_LINES + 1} lines)")


def test_no_long_function_without_a_reason():
    offenders = long_functions_without_reason()
    assert not offenders, (
        f"functions over {MAX_LINES} lines without a '{MARK} <reason>' comment directly above the def "
        "(split them into named steps, or write why the long shape is right):\n  " + "\n  ".join(offenders)
    )
