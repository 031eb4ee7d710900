"""What a VM may be given from the image directory (agent/compute/images.py): only files inside
it, reached without a symlink, with the SHA-256 the spec names; and its qcow2 overlays, made by
the real qemu-img."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import grpc
import pytest

from agent.compute.images import Images
from agent.compute.specs import Image
from agent.reconcile import ApplyError


@pytest.fixture
def images(tmp_path: Path) -> Images:
    root = tmp_path / "images"
    (root / "guest").mkdir(parents=True)
    (root / "guest" / "vmlinuz").write_bytes(b"a kernel")
    (tmp_path / "secret").write_bytes(b"not for VMs")
    return Images(root)


def code_of(images: Images, image: Image) -> grpc.StatusCode:
    with pytest.raises(ApplyError) as caught:
        images.resolve(image, "kernel")
    assert str(caught.value).startswith("kernel: ")
    return caught.value.code


def test_a_file_inside_is_resolved_and_its_checksum_checked(images: Images) -> None:
    digest = hashlib.sha256(b"a kernel").hexdigest()
    resolved = images.resolve(Image("guest/vmlinuz", digest), "kernel")
    assert resolved.path == images.dir / "guest" / "vmlinuz" and resolved.size == 8
    assert code_of(images, Image("guest/vmlinuz", "0" * 64)) == grpc.StatusCode.DATA_LOSS


def test_a_symlink_planted_after_the_api_checked_leads_nowhere(images: Images, tmp_path: Path) -> None:
    (images.dir / "evil").symlink_to(tmp_path / "secret")
    (images.dir / "linked").symlink_to(images.dir / "guest")
    assert code_of(images, Image("evil")) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(images, Image("linked/vmlinuz")) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(images, Image("missing")) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(images, Image("guest")) == grpc.StatusCode.FAILED_PRECONDITION  # a directory


def test_an_overlay_is_made_once_on_its_base_and_never_smaller(images: Images) -> None:
    base = images.dir / "disk.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(base), "16M"], check=True)
    resolved = images.resolve(Image("disk.raw"), "disks[0].image")
    overlay = images.dir.parent / "vm" / "disk-root.qcow2"
    overlay.parent.mkdir()
    images.ensure_overlay(overlay, resolved, "raw", 1, "disks[0]")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2" and info["virtual-size"] == 1 << 30
    assert info["backing-filename"] == str(base) and info["backing-filename-format"] == "raw"
    before = overlay.stat().st_mtime_ns
    images.ensure_overlay(overlay, resolved, "raw", 1, "disks[0]")  # kept: it is the VM's disk
    assert overlay.stat().st_mtime_ns == before
    small = images.dir.parent / "vm" / "small.qcow2"
    subprocess.run(["qemu-img", "resize", "-q", "-f", "raw", str(base), "2G"], check=True)
    with pytest.raises(ApplyError, match="less than the image's own") as caught:
        images.ensure_overlay(small, images.resolve(Image("disk.raw"), "x"), "raw", 1, "disks[1]")
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION and not small.exists()
