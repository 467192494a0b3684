"""Generate the gRPC stubs from protos/ into vlm_service/_proto/ (at build time, or on first import).

The generated *_pb2_grpc.py imports its sibling as a top-level module; it is rewritten to a relative import so the
stubs live inside this package.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
OUT_DIR = PACKAGE_DIR / "_proto"


def proto_root() -> Path:
    for candidate in (PACKAGE_DIR.parent / "protos", PACKAGE_DIR / "protos"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("protos/ not found next to the vlm_service package")


def generate(out_dir: Path = OUT_DIR) -> Path:
    from grpc_tools import protoc  # grpcio-tools: a build/test dependency only

    root = proto_root()
    protos = sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{root}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    for path in out_dir.rglob("*_pb2_grpc.py"):
        text = re.sub(r"^from [\w.]+ import (\w+_pb2) as", r"from . import \1 as", path.read_text(), flags=re.M)
        path.write_text(text)
    for folder in [out_dir, *[p for p in out_dir.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return out_dir


if __name__ == "__main__":
    print(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR))
