"""pybus topics and patterns as NATS subjects and filters (the table is in docs/scale-out.md).

A pybus topic (dot-separated segments of ``[A-Za-z0-9_-]``) is a valid NATS subject as it is,
so a topic maps to itself, under an optional prefix of the stream's. Patterns differ in one
wildcard: pybus ``*`` is NATS ``*`` (one segment), but pybus ``#`` matches *zero* or more
trailing segments where NATS ``>`` matches *one* or more, so ``orders.#`` becomes two filters,
``orders`` and ``orders.>``.
"""

from __future__ import annotations

from ..errors import TopicError
from ..policy.topics import validate_pattern, validate_topic

__all__ = ["subject_for_topic", "topic_for_subject", "filters_for_pattern"]

# NATS keeps subjects starting with these for itself (request inboxes); a topic there would
# mix with replies, so it is refused before anything is sent.
_RESERVED_FIRST = ("_INBOX",)


def _check_prefix(prefix: str) -> str:
    if prefix:
        validate_topic(prefix)
    return prefix


def subject_for_topic(topic: str, prefix: str = "") -> str:
    """The NATS subject for a pybus topic: the topic itself, after ``prefix.`` if one is given.
    A topic pybus or NATS would refuse raises :class:`pybus.TopicError`."""
    topic = validate_topic(topic)
    first = topic.split(".", 1)[0]
    if not prefix and first in _RESERVED_FIRST:
        raise TopicError(
            f"topic {topic!r} starts with {first!r}, which NATS reserves for request inboxes; "
            f"choose another first segment")
    prefix = _check_prefix(prefix)
    return f"{prefix}.{topic}" if prefix else topic


def topic_for_subject(subject: str, prefix: str = "") -> str:
    """The pybus topic a subject made by :func:`subject_for_topic` carries."""
    if prefix:
        head = prefix + "."
        if not subject.startswith(head):
            raise TopicError(f"subject {subject!r} is not under the prefix {prefix!r}")
        subject = subject[len(head):]
    return validate_topic(subject)


def filters_for_pattern(pattern: str, prefix: str = "") -> list[str]:
    """NATS filter subjects that together match exactly what the pybus ``pattern`` matches:
    ``orders.*`` -> ``["orders.*"]``, ``orders.#`` -> ``["orders", "orders.>"]``,
    ``#`` -> ``[">"]`` (every topic has at least one segment, so the bare prefix is
    never a topic)."""
    pattern = validate_pattern(pattern)
    segments = ["#" if s == "**" else s for s in pattern.split(".")]
    if segments[0] in _RESERVED_FIRST and not prefix:
        raise TopicError(f"pattern {pattern!r} starts with {segments[0]!r}, which NATS "
                         f"reserves for request inboxes")
    head = [_check_prefix(prefix)] if prefix else []
    if segments[-1] != "#":
        return [".".join(head + segments)]
    if len(segments) == 1:  # "#" alone: every topic, and no topic is empty
        return [".".join(head + [">"])]
    stem = head + segments[:-1]
    return [".".join(stem), ".".join(stem + [">"])]
