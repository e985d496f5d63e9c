"""The public API: what ``pybus`` exports, what moved to ``pybus.wire``, and the old names."""

from __future__ import annotations

import warnings

import pytest

import pybus
import pybus.wire

# The codec and the ring's internals: in pybus.wire, not in what an application imports.
WIRE_ONLY = {
    "Batcher", "FLAG_MSGPACK", "FRAME_HEADER_SIZE", "FRAME_VERSION", "FULL", "PENDING", "READY",
    "RECORD_HEADER_SIZE", "RING_RECORD_OVERHEAD", "decode_batch", "decode_into",
    "decode_payloads", "encode_frame", "frame_info", "iter_frame", "ring_record_size",
}


def test_every_exported_name_exists_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mod in (pybus, pybus.wire):
            missing = [n for n in mod.__all__ if not hasattr(mod, n)]
            assert missing == [], f"{mod.__name__}.__all__ names what it lacks: {missing}"
            assert len(set(mod.__all__)) == len(mod.__all__)


def test_no_ring_or_codec_internals_in_pybus_all():
    assert WIRE_ONLY.isdisjoint(pybus.__all__)
    assert set(pybus.wire.__all__) == WIRE_ONLY


@pytest.mark.parametrize("name", sorted(WIRE_ONLY))
def test_moved_names_still_work_with_a_deprecation_warning(name):
    with pytest.warns(DeprecationWarning, match=rf"pybus\.{name} moved to pybus\.wire\.{name}"):
        old = getattr(pybus, name)
    assert old is getattr(pybus.wire, name)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pybus.nope  # noqa: B018


def test_fast_path_reports_what_objects_take():
    import uuid

    info = pybus.transport.fast_path()
    assert set(info) == {"enabled", "reason", "library"}
    ep = f"inproc://api-{uuid.uuid4().hex}"
    with pybus.Publisher(ep, registry=False) as pub:
        assert pub.io_path == ("libzmq" if info["enabled"] else "pyzmq")
    if info["enabled"]:
        assert info["library"] and info["reason"] == ""
    else:
        assert info["reason"]  # says why


def test_no_doc_imports_a_private_module():
    """Users read the docs: every import they show is of a public module."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    bad = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        fence = False
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fence = not fence
                continue
            code = line if fence else " ".join(re.findall(r"`([^`]*)`", line))
            if re.search(r"(from|import)\s+pybus(\.\w+)*\._\w+|pybus(\.\w+)*\._[a-z]\w*\.", code):
                bad.append(f"{doc.name}:{n}: {line.strip()}")
    assert bad == []
