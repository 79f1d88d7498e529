#!/usr/bin/env python3
"""Generate the Python code (and mypy stubs) of proto/ into secagg/transport/_gen.

    python scripts/gen_proto.py            # regenerate in place
    python scripts/gen_proto.py --out DIR  # generate into DIR (used by scripts/check_proto.sh)

Uses grpcio-tools 1.80.* on purpose: its gencode (protobuf 6.31.1) loads on protobuf 6.31+ and 7.x
(see FACTS.md). The generated modules import each other as ``secagg.v1.*``; they are rewritten to
``secagg.transport._gen.secagg.v1.*`` so that they live inside the secagg package.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "secagg" / "transport" / "_gen"
REQUIRED_TOOLS = "1.80."
GEN_PACKAGE = "secagg.transport._gen"


def _check_tools() -> None:
    from importlib.metadata import version

    found = version("grpcio-tools")
    if not found.startswith(REQUIRED_TOOLS):
        sys.exit(f"gen_proto: grpcio-tools {REQUIRED_TOOLS}* is required, found {found}")


def generate(out: pathlib.Path) -> None:
    _check_tools()
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    bin_dir = pathlib.Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        subprocess.run(cmd, check=True, cwd=PROTO_DIR)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for src in sorted(pathlib.Path(tmp).rglob("*")):
            if src.is_dir():
                continue
            rel = src.relative_to(tmp)
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = src.read_text()
            # Make the generated modules importable from inside the secagg package.
            for pkg in {str(pathlib.Path(p).parent).replace(os.sep, ".") for p in protos}:
                text = text.replace(f"from {pkg} import", f"from {GEN_PACKAGE}.{pkg} import")
                text = text.replace(f"import {pkg}.", f"import {GEN_PACKAGE}.{pkg}.")
            dst.write_text(text)
    for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (d / "__init__.py").write_text('"""Generated from proto/ by scripts/gen_proto.py."""\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    generate(args.out)
    print(f"generated {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
