"""pybus.tune_allocator: checked against glibc's own accounting (mallinfo2), in a subprocess
so the tuning does not leak into the test process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pybus

CHECK = textwrap.dedent(
    """
    import ctypes
    import pybus

    libc = ctypes.CDLL(None)
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def mapped(size):
        # whether malloc(size) got an mmap of its own (mallinfo2's hblks counts those)
        before = libc.mallinfo2().hblks
        p = libc.malloc(size)
        after = libc.mallinfo2().hblks
        libc.free(p)
        return after - before

    assert mapped(512 << 10) == 1, "glibc's default: a 512 KiB block is its own mapping"
    # (freeing it raised glibc's dynamic threshold to ~512 KiB: 2 MiB is still mapped)
    assert mapped(2 << 20) == 1
    assert pybus.tune_allocator(mmap_threshold=4 << 20) is True
    assert mapped(2 << 20) == 0, "tuned: a 2 MiB block comes from the heap"
    assert mapped(8 << 20) == 1, "above the threshold: still its own mapping"
    print("ok")
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuning_keeps_frame_sized_blocks_on_the_heap(tmp_path: Path) -> None:
    # cwd: not the repository root, whose pybus/ is the uninstalled source tree
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "kwargs",
    [{"mmap_threshold": -1}, {"mmap_threshold": 64 << 20}, {"trim_threshold": 1.5},
     {"trim_threshold": True}],
)
def test_bad_thresholds_are_refused(kwargs: dict) -> None:
    with pytest.raises(pybus.ValidationError, match="must be an int from 0 to"):
        pybus.tune_allocator(**kwargs)
