"""Regenerate the Python code of the gRPC API from the .proto files beside this script.

Run it after editing any `proto/andromede/v1/*.proto`, then commit what it wrote:

    .venv/bin/python proto/generate.py

For each `andromede/v1/X.proto` it writes, beside it, `X_pb2.py` (the messages), `X_pb2.pyi`
(their types, for editors and type checkers) and `X_pb2_grpc.py` (client stubs, servicer base
classes), using the protoc built into grpcio-tools; generated files whose .proto is gone are
deleted. The files are checked in, so a fresh clone imports `andromede.v1` without a build step.

The output depends only on the .proto files and on the grpcio-tools version, which
pyproject.toml pins exactly for that reason: a second run rewrites nothing.
`tests/test_proto.py` regenerates into a temporary directory and fails if the checked-in files
differ by a byte. Warnings (an unused import, say) are errors.
"""

from __future__ import annotations

import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
"""The import root of the .proto files (`protoc -I`); also where the generated code goes."""

API_DIRS = ("andromede/v1",)
"""The directories under PROTO_ROOT that hold .proto files, one per API version."""

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(root: Path = PROTO_ROOT) -> list[str]:
    """The .proto files, as protoc names them (relative to `root`, with '/'), sorted."""
    return sorted(
        path.relative_to(root).as_posix() for d in API_DIRS for path in (root / d).glob("*.proto")
    )


def generated_files(root: Path) -> dict[str, Path]:
    """The generated files under `root`, by their path relative to it (with '/')."""
    return {
        path.relative_to(root).as_posix(): path
        for d in API_DIRS
        if (root / d).is_dir()
        for path in sorted((root / d).iterdir())
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def run_protoc(out: Path) -> None:
    """Compile every .proto file into `out` (an existing directory) with grpcio-tools' protoc.

    Raises RuntimeError if protoc reports an error or a warning (printed on stderr).
    """
    _protoc(f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}")


def write_descriptor_set(path: Path) -> None:
    """Write every .proto file, with its imports and comments, as one serialized
    google.protobuf.FileDescriptorSet (for tests that read the comments, and for tools)."""
    _protoc(f"--descriptor_set_out={path}", "--include_imports", "--include_source_info")


def _protoc(*outputs: str) -> None:
    from grpc_tools import protoc  # here, so that importing this module needs no grpcio-tools

    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        "--fatal_warnings",
        *outputs,
        # Absolute paths: protoc maps each to its name under --proto_path, whatever the cwd.
        *(str(PROTO_ROOT / name) for name in proto_files()),
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(
            f"protoc failed (exit status {status}); its messages are above. Fix the .proto "
            f"file it names and run this script again."
        )


def generate(out: Path = PROTO_ROOT) -> list[str]:
    """Make the generated files under `out` exactly what protoc produces now.

    Compiles into a temporary directory first, so a failed run leaves `out` as it was; then
    writes only the files whose bytes differ and deletes generated files no .proto produces.
    Returns the relative paths written or deleted (empty: everything was up to date).
    """
    out = Path(out)
    changed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="andromede-protoc-") as tmp:
        run_protoc(Path(tmp))
        fresh = generated_files(Path(tmp))
        for name, path in fresh.items():
            target = out / name
            data = path.read_bytes()
            if not target.is_file() or target.read_bytes() != data:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                changed.append(name)
    for name, path in generated_files(out).items():
        if name not in fresh:
            path.unlink()
            changed.append(name)
    return sorted(changed)


def main() -> int:
    changed = generate()
    for name in changed:
        print(f"proto/{name}")
    print(
        f"{len(changed)} generated file(s) updated" if changed else "generated code is up to date",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
