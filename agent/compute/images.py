"""Kernels, initrds and disk images: found only inside the image directory, checked, and the
qcow2 overlays a VM writes to.

Confinement: a path from the control plane is walked one component at a time from the image
directory with O_NOFOLLOW, so neither ".." (refused at the API already) nor a symlink anywhere
on the way (planted after the API checked it) can lead out of the directory. What QEMU is then
given is the path that walk proved, and the file's SHA-256 when the spec asks for it.

Overlays are made with `qemu-img create -f qcow2 -F <format> -b <base>` in the VM's own
directory at its first start and kept across restarts of the VM (they are its disk); they go
with the VM.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import grpc
import structlog

from agent.compute.specs import Image
from agent.reconcile import ApplyError

log = structlog.get_logger(__name__)

QEMU_IMG_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Resolved:
    """An image file inside the image directory, as the walk found it."""

    path: Path
    size: int


class Images:
    """The image directory (`images_dir`) and the checks on what is taken from it."""

    def __init__(self, images_dir: Path | None, qemu_img: str = "qemu-img") -> None:
        self.dir = images_dir
        self._qemu_img = qemu_img
        self._digests: dict[tuple[int, int, int, int], str] = {}  # (dev, ino, size, mtime) -> sha256

    def resolve(self, image: Image, field: str) -> Resolved:
        """The file `image.path` names, walked without following any symlink, and checked
        against `image.sha256` if set. Raises ApplyError: FAILED_PRECONDITION if it is missing,
        not a regular file or reached through a symlink, DATA_LOSS on a checksum mismatch."""
        if self.dir is None:
            raise ApplyError(f"{field}: this agent has no image directory: set [qemu] images_dir "
                             f"in its config", grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
        fd = self._open_beneath(image.path, field)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ApplyError(f"{field}: {image.path!r} is not a regular file",
                                 grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
            if image.sha256:
                digest = self._sha256(fd, info)
                if digest != image.sha256:
                    raise ApplyError(f"{field}: {image.path!r} has SHA-256 {digest}, not the "
                                     f"{image.sha256} the spec names: the image changed or is "
                                     f"corrupt", grpc.StatusCode.DATA_LOSS)  # fmt: skip
        finally:
            os.close(fd)
        return Resolved(self.dir / image.path, info.st_size)

    def _open_beneath(self, path: str, field: str) -> int:
        parts = PurePosixPath(path).parts
        directory = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if last else os.O_DIRECTORY)
                try:
                    fd = os.open(part, flags, dir_fd=directory)
                except FileNotFoundError:
                    raise ApplyError(f"{field}: {path!r} is not in the image directory "
                                     f"{self.dir}", grpc.StatusCode.FAILED_PRECONDITION) from None  # fmt: skip
                except OSError as e:  # ELOOP or ENOTDIR: a symlink on the way
                    raise ApplyError(f"{field}: {path!r} passes through a symlink or a "
                                     f"non-directory at {part!r} ({e.strerror}): VMs are given "
                                     f"only files inside the image directory",
                                     grpc.StatusCode.FAILED_PRECONDITION) from None  # fmt: skip
                os.close(directory)
                directory = fd
            return directory
        except BaseException:
            os.close(directory)
            raise

    def _sha256(self, fd: int, info: os.stat_result) -> str:
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if key not in self._digests:
            digest = hashlib.sha256()
            while chunk := os.read(fd, _CHUNK):
                digest.update(chunk)
            self._digests[key] = digest.hexdigest()
        return self._digests[key]

    def virtual_size(self, path: Path, fmt: str) -> int:
        """The image's virtual size in bytes, from `qemu-img info` (never probing the format)."""
        done = self._run(["info", "--output=json", "-f", fmt, str(path)])
        return int(json.loads(done.stdout)["virtual-size"])

    def ensure_overlay(self, overlay: Path, base: Resolved, fmt: str, size_gib: int,
                       field: str) -> None:  # fmt: skip
        """Make the qcow2 overlay on `base` if it is not there (made under a temporary name and
        renamed, so a crash never leaves half an overlay)."""
        if overlay.exists():
            return
        base_size = self.virtual_size(base.path, fmt)
        size = size_gib << 30
        if size and size < base_size:
            raise ApplyError(f"{field}.size_gib: {size_gib} GiB is less than the image's own "
                             f"{base_size / 2**30:.1f} GiB", grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
        partial = overlay.with_suffix(".partial")
        argv = ["create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base.path), str(partial)]
        self._run(argv + ([str(size)] if size else []))
        os.replace(partial, overlay)
        log.info("disk.overlay_created", overlay=str(overlay), base=str(base.path),
                 size_gib=round(max(size, base_size) / 2**30, 2))  # fmt: skip

    def _run(self, args: list[str]) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run([self._qemu_img, *args], capture_output=True, text=True,
                                  timeout=QEMU_IMG_TIMEOUT_S, check=False)  # fmt: skip
        except FileNotFoundError:
            raise ApplyError(f"{self._qemu_img} not found: install qemu-utils",
                             grpc.StatusCode.FAILED_PRECONDITION) from None  # fmt: skip
        if done.returncode != 0:
            raise ApplyError(f"qemu-img {args[0]} failed: {done.stderr.strip()}",
                             grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
        return done
