"""Regenerate gen/ from protos/ (Python modules, gRPC stubs and .pyi type stubs).

`stockmesh gen` writes gen/; `stockmesh gen --check` regenerates into a scratch
folder and fails when the committed gen/ differs (CI runs it).
"""
from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTOS = REPO / "protos"
GEN = REPO / "gen"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def generate(out: Path) -> None:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate
    import grpc_tools

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{wkt}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *proto_files(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for folder in [out / "stockmesh", *(p for p in (out / "stockmesh").rglob("*") if p.is_dir())]:
        if folder.name != "__pycache__":
            (folder / "__init__.py").touch()


def _differences(a: Path, b: Path) -> list[str]:
    ignore = ["__pycache__"]
    out: list[str] = []

    def walk(cmp: filecmp.dircmp, prefix: str) -> None:
        out.extend(f"only in committed gen/: {prefix}{n}" for n in cmp.left_only)
        out.extend(f"missing from gen/: {prefix}{n}" for n in cmp.right_only)
        out.extend(f"differs: {prefix}{n}" for n in cmp.diff_files)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(a, b, ignore=ignore), "")
    # dircmp compares shallowly by stat; confirm byte by byte.
    return [d for d in out if not d.startswith("differs: ") or
            (a / d.removeprefix("differs: ")).read_bytes() != (b / d.removeprefix("differs: ")).read_bytes()]


def main(check: bool = False) -> int:
    if not check:
        if GEN.exists():
            shutil.rmtree(GEN / "stockmesh", ignore_errors=True)
        generate(GEN)
        print(f"generated {len(proto_files())} protos into {GEN}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        diffs = _differences(GEN / "stockmesh", fresh / "stockmesh")
    if diffs:
        print("gen/ is out of date with protos/ (run `stockmesh gen`):", file=sys.stderr)
        for d in diffs:
            print(f"  {d}", file=sys.stderr)
        return 1
    print("gen/ matches protos/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(check="--check" in sys.argv))
