"""check-config and run warn when the state would not survive a restart or a power cut."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.sites import site

from edge.config import _fs_type, storage_warnings
from edge.core.config import Config


def _cfg(path: str) -> Config:
    return Config.model_validate(site(storage={"path": path}))


@pytest.mark.parametrize("path", ["/tmp/campus", "/var/tmp/x", "/var/lib/../../tmp/x"])
def test_storage_under_tmp_is_warned(path: str) -> None:
    (msg,) = storage_warnings(_cfg(path))
    assert msg.startswith("storage.path:")
    assert "/var/lib/campus-edge" in msg


def test_storage_on_a_memory_filesystem_is_warned(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/root / ext4 rw 0 0\ntmpfs /srv/ram tmpfs rw 0 0\n", encoding="utf-8")
    assert _fs_type(Path("/srv/ram/state"), mounts) == "tmpfs"
    assert _fs_type(Path("/srv/disk/state"), mounts) == "ext4"


def test_production_storage_is_quiet() -> None:
    assert storage_warnings(_cfg("/var/lib/campus-edge")) == [] or _fs_type(Path("/var/lib")) in ("tmpfs", "ramfs")
