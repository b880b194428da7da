"""A small file system of our own, loop-mounted on a node's data dir, that the nemesis fills.

An ext4 image with no reserved blocks (the nodes run as root, who may use those), mounted with
``mount -o loop`` (the loop device goes away with the mount). Filling it allocates every free
block to one file; freeing deletes that file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from chaos.system import run

FILL_NAME = ".chaos-fill"


class LoopDisk:
    def __init__(self, image: Path, mountpoint: Path, size_mib: int = 128) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.size_mib = size_mib
        self.mounted = False

    @property
    def fill_path(self) -> Path:
        return self.mountpoint / FILL_NAME

    def create(self) -> LoopDisk:
        """Make the image and mount it on ``mountpoint`` (which must exist and be empty)."""
        if os.geteuid() != 0:
            raise RuntimeError("a loop-mounted file system needs root")
        for tool in ("mkfs.ext4", "mount", "umount"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                raise RuntimeError(f"{tool} is not installed (Debian packages e2fsprogs and mount)")
        with open(self.image, "wb") as f:
            f.truncate(self.size_mib * 2**20)
        for argv in (["mkfs.ext4", "-q", "-m", "0", "-F", str(self.image)],
                     ["mount", "-o", "loop", str(self.image), str(self.mountpoint)]):
            done = run(argv, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        self.mounted = True
        return self

    def move_in(self, data_dir: Path) -> None:
        """Put ``data_dir`` (a stopped node's) on this file system: moved aside, mounted on, copied back."""
        aside = data_dir.with_name(data_dir.name + ".before-mount")
        data_dir.rename(aside)
        data_dir.mkdir()
        self.mountpoint = data_dir
        try:
            self.create()
            shutil.copytree(aside, data_dir, symlinks=True, dirs_exist_ok=True)
        except BaseException:
            self.close()
            shutil.rmtree(data_dir, ignore_errors=True)
            aside.rename(data_dir)
            raise
        shutil.rmtree(aside)

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Take every free block; the bytes taken."""
        taken = 0
        with open(self.fill_path, "ab", buffering=0) as f:
            free = self.free_bytes()
            with contextlib.suppress(OSError):
                os.posix_fallocate(f.fileno(), 0, max(1, free - 2**20))
            chunk = b"\0" * 65536
            while True:  # the last blocks one write at a time, until the file system says no
                try:
                    f.write(chunk)
                    os.fsync(f.fileno())
                except OSError:
                    break
            taken = f.tell()
        return taken

    def free(self) -> None:
        self.fill_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Unmount and delete the image. Safe to call twice."""
        if self.mounted:
            with contextlib.suppress(OSError):
                self.free()
            done = run(["umount", str(self.mountpoint)], timeout=60)
            if done.returncode != 0:  # something still has a file open there: detach it lazily
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, timeout=60)
            self.mounted = False
        self.image.unlink(missing_ok=True)
