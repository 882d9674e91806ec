"""Why a directory cannot be written, named without creating anything: kernel file systems."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mplog.listener.write_errors import KernelFileSystemError, cause_of, creation_error, file_system_of

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/mountinfo").is_file() or not Path("/sys/kernel").is_dir(), reason="needs Linux /proc, /sys"
)


def test_the_file_system_of_a_path_is_read_from_mountinfo():
    assert (file_system_of("/proc"), file_system_of("/sys")) == ("proc", "sysfs")


def test_a_path_that_does_not_exist_has_no_known_file_system(tmp_path):
    assert file_system_of(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(("directory", "code"), [("/proc", errno.ENOENT), ("/sys", errno.EACCES)])
def test_a_kernel_file_system_is_named_for_root_too_with_the_error_its_open_gives(directory, code):
    # As root, access() says /proc and /sys are writable and they have no O_TMPFILE: the
    # answer was "can create", and FileHandler then failed with ENOENT / EACCES.
    error = creation_error(directory)
    assert isinstance(error, KernelFileSystemError)
    assert (error.errno, error.file_system) == (code, file_system_of(directory))
    assert cause_of(error, directory) == (
        f"{directory!r} is on a {file_system_of(directory)} file system, a kernel interface where no file can be "
        f"created (opening one fails: {os.strerror(code)}, for root too); choose a directory on a disk"
    )


def test_a_directory_on_a_disk_can_be_created_in_and_nothing_is_left_there(tmp_path):
    assert creation_error(str(tmp_path)) is None
    assert list(tmp_path.iterdir()) == []
