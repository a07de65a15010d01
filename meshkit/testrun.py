"""The test command (`./dev test`): contract lint, generated-code check, then pytest.

Extra arguments go to pytest (e.g. `./dev test tests/unit -k ledger`).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def step(title: str, cmd: list[str]) -> None:
    print(f"==> {title}", flush=True)
    rc = subprocess.call(cmd, cwd=REPO)
    if rc != 0:
        print(f"FAILED: {title} (exit {rc})", file=sys.stderr)
        raise SystemExit(rc)


def main(argv: list[str]) -> int:
    step("buf lint (STANDARD)", [_tool("buf"), "lint", "protos"])
    step("gen/ matches protos/", [sys.executable, "-m", "meshkit.codegen", "--check"])
    print("==> pytest", flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", *(argv or ["-q", "-ra"])], cwd=REPO)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
