"""A small reader for the Prometheus text format (0.0.4), for ``pybus stat``.

pybus does not depend on ``prometheus_client`` at run time; the tests check this reader against
``prometheus_client.parser`` on real scrapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ValidationError


@dataclass
class Family:
    """One family read from a scrape: name, type, help and ``(sample, labels, value)`` rows."""

    name: str
    type: str = "untyped"
    help: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


_ESC = {"\\": "\\", "n": "\n", '"': '"'}


def _parse_labels(s: str, i: int, line: str) -> tuple[dict[str, str], int]:
    # s[i] is just past "{"; returns labels and the index past "}".
    labels: dict[str, str] = {}
    n = len(s)
    while True:
        while i < n and s[i] in " \t,":
            i += 1
        if i < n and s[i] == "}":
            return labels, i + 1
        j = s.find("=", i)
        if j < 0:
            raise ValidationError(f"bad label set in line {line!r}")
        key = s[i:j].strip()
        i = j + 1
        if i >= n or s[i] != '"':
            raise ValidationError(f"label value must be quoted in line {line!r}")
        i += 1
        buf = []
        while i < n and s[i] != '"':
            if s[i] == "\\" and i + 1 < n:
                buf.append(_ESC.get(s[i + 1], "\\" + s[i + 1]))
                i += 2
            else:
                buf.append(s[i])
                i += 1
        if i >= n:
            raise ValidationError(f"unterminated label value in line {line!r}")
        labels[key] = "".join(buf)
        i += 1


def _value(tok: str, line: str) -> float:
    t = tok.strip()
    low = t.lower()
    if low in ("+inf", "inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    if low == "nan":
        return math.nan
    try:
        return float(t)
    except ValueError:
        raise ValidationError(f"bad sample value {tok!r} in line {line!r}") from None


_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def parse(text: str) -> dict[str, Family]:
    """Families by name. Samples whose name is ``<family>_bucket/_count/_sum`` are filed under
    the family declared by ``# TYPE``; undeclared samples get an ``untyped`` family of their own.

    Raises
    ------
    ValidationError
        A line that is not valid text exposition (the message quotes it).
    """
    fams: dict[str, Family] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                f = fams.setdefault(parts[2], Family(parts[2]))
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "TYPE":
                    f.type = rest.strip()
                else:
                    f.help = rest.replace("\\n", "\n").replace("\\\\", "\\")
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace >= 0 and (space < 0 or brace < space):
            name = line[:brace]
            labels, end = _parse_labels(line, brace + 1, raw)
            fields = line[end:].split()
        else:
            name, labels = line[:space] if space > 0 else line, {}
            fields = line[space:].split() if space > 0 else []
        if not fields or not name:
            raise ValidationError(f"sample line without a value: {raw!r}")
        value = _value(fields[0], raw)
        fam = fams.get(name)
        if fam is None:
            for suf in _SUFFIXES:
                if name.endswith(suf) and name[: -len(suf)] in fams:
                    fam = fams[name[: -len(suf)]]
                    break
        if fam is None:
            fam = fams.setdefault(name, Family(name))
        fam.samples.append((name, labels, value))
    return fams
