"""Prometheus text (0.0.4) and OpenMetrics (1.0.0) writers, and Accept-header negotiation.

Written from the two format specifications; the tests check the output with
``prometheus_client``'s own parsers and with ``promtool check metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .samples import FamilySnapshot

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help_text(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_help_om(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(v: float) -> str:
    """A sample value the way Prometheus writes it (integers without a fraction, +Inf, NaN)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _lines(fams: Iterable[FamilySnapshot], openmetrics: bool) -> list[str]:
    out: list[str] = []
    for f in fams:
        d = f.definition
        if openmetrics:
            fam = d.family_name
            out.append(f"# TYPE {fam} {d.type}")
            if d.unit:
                out.append(f"# UNIT {fam} {d.unit}")
            out.append(f"# HELP {fam} {_escape_help_om(d.help)}")
        else:
            out.append(f"# HELP {d.name} {_escape_help_text(d.help)}")
            out.append(f"# TYPE {d.name} {d.type}")
        for name, labels, value in f.samples:
            if labels:
                body = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                out.append(f"{name}{{{body}}} {format_value(value)}")
            else:
                out.append(f"{name} {format_value(value)}")
    return out


def render(fams: Iterable[FamilySnapshot], fmt: str = "text") -> bytes:
    """Format family snapshots.

    Parameters
    ----------
    fams : iterable of FamilySnapshot
        From :meth:`Registry.collect`.
    fmt : {"text", "openmetrics"}
        Prometheus text 0.0.4 or OpenMetrics 1.0.0 (ends with ``# EOF``).
    """
    if fmt not in ("text", "openmetrics"):
        raise ValueError(f"format must be 'text' or 'openmetrics', got {fmt!r}")
    om = fmt == "openmetrics"
    lines = _lines(fams, om)
    if om:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode("utf-8")


def negotiate(accept: str | None) -> tuple[str, str]:
    """Pick the format for an ``Accept`` header: ``(fmt, content_type)``.

    OpenMetrics is chosen when the client lists ``application/openmetrics-text`` with a quality
    at least that of any text/plain (or ``*/*``) entry, as Prometheus does when it prefers it;
    anything else gets text 0.0.4.
    """
    best_om = -1.0
    best_text = -1.0
    for part in (accept or "").split(","):
        fields = [x.strip() for x in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for p in fields[1:]:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if media == "application/openmetrics-text":
            best_om = max(best_om, q)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, q)
    if best_om > 0 and best_om >= best_text:
        return "openmetrics", CONTENT_TYPE_OPENMETRICS
    return "text", CONTENT_TYPE_TEXT
