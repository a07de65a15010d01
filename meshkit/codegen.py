"""Regenerate gen/ from protos/ (Python modules, gRPC stubs and .pyi type stubs, and the
descriptor set Envoy's gRPC-JSON transcoder reads: gen/stockmesh/descriptor.binpb).

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
DESCRIPTOR = GEN / "stockmesh" / "descriptor.binpb"
# Besides our protos, the descriptor set carries the error details our services send, so that
# Envoy can write them into a JSON error body.
ERROR_PROTOS = ("google/rpc/status.proto", "google/rpc/error_details.proto")


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
    import importlib.util

    status_pb2 = importlib.util.find_spec("google.rpc.status_pb2")
    assert status_pb2 is not None and status_pb2.origin is not None
    googleapis = Path(status_pb2.origin).parents[2]  # googleapis-common-protos ships the .proto files
    descriptor = out / DESCRIPTOR.relative_to(GEN)
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    if protoc.main(["protoc", f"-I{PROTOS}", f"-I{wkt}", f"-I{googleapis}", "--include_imports",
                    f"--descriptor_set_out={descriptor}", *proto_files(), *ERROR_PROTOS]) != 0:
        raise SystemExit("protoc failed (descriptor set)")
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
    import argparse

    parser = argparse.ArgumentParser(prog="python -m meshkit.codegen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a scratch folder and fail when the committed gen/ differs")
    raise SystemExit(main(check=parser.parse_args().check))
