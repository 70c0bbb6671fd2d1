"""List what breaks issue 16's size rules: modules over 600 lines (the ledger and fastput may reach
700) and functions over 80 lines, in ``toolkit/r2migrate``. Exit 1 when anything is listed.

    .venv/bin/python scripts/sizes.py            # the whole package
    .venv/bin/python scripts/sizes.py cli api    # only these folders
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "toolkit" / "r2migrate"
MODULE_LIMIT = 600
WIDER = {"store/ledger.py": 700, "s3/fastput.py": 700}
FUNCTION_LIMIT = 80


def problems(folders: list[str]) -> list[str]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if folders and not any(rel.startswith(f.rstrip("/") + "/") or rel == f for f in folders):
            continue
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n")
        limit = WIDER.get(rel, MODULE_LIMIT)
        if lines > limit:
            found.append(f"{rel}: {lines} lines (limit {limit})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > FUNCTION_LIMIT:
                    found.append(f"{rel}:{node.lineno} {node.name}(): {length} lines")
    return found


if __name__ == "__main__":
    listed = problems(sys.argv[1:])
    print("\n".join(listed) or "all within the limits")
    sys.exit(1 if listed else 0)
