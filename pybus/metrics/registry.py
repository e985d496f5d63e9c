"""The metrics registry: weak references to pybus objects, read at scrape time (pull model).

pybus objects keep plain integer counters, updated once per batch on their own thread; nothing
here runs per message. At scrape time the registry asks each live object's adapter for its raw
samples, caps label cardinality, sums samples that land on the same series (objects past the cap,
topics folded into ``"other"``) and returns family snapshots that the collector hands to
``prometheus_client``.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ValidationError, check_positive_int
from . import _hdr
from .families import BY_SOURCE, QUANTILES, SOURCE_LABELS, SOURCES, MetricDef
from .samples import FamilySnapshot, HdrValue, Labels, MetricsSource, RawSample

log = logging.getLogger("pybus.metrics")

#: Default cap on distinct ``topic`` label values per registry.
DEFAULT_MAX_TOPICS = 200
#: Default cap on distinct object names per kind; objects past it report as ``name="other"``.
DEFAULT_MAX_OBJECTS_PER_KIND = 100

OTHER = "other"

class Adapter(Protocol):
    """Turns one kind of object into raw samples; see :func:`register_adapter`."""

    kind: str

    def samples(self, obj: Any) -> Iterable[RawSample]: ...

    def readiness(self, obj: Any) -> tuple[bool, str]: ...


_ADAPTERS: dict[str, Adapter] = {}


def register_adapter(qualified_class_name: str, adapter: Adapter) -> None:
    """Teach registries how to read objects of a class.

    Parameters
    ----------
    qualified_class_name : str
        ``"module.Class"`` of the class (subclasses are found through the MRO). A string, so
        adapters never import the classes they read (no import cycles with ``pybus.pubsub``).
    adapter : Adapter
        An object with ``kind`` (a short noun, e.g. ``"publisher"``), ``samples(obj)`` yielding
        ``(logical_name, labels, value)`` with names from the family table, and
        ``readiness(obj) -> (ready, reason)``.
    """
    _ADAPTERS[qualified_class_name] = adapter


class _SelfReporting:
    """The adapter of every :class:`MetricsSource`: it asks the object itself."""

    kind = ""  # per object: its metrics_kind

    def samples(self, obj: Any) -> Iterable[RawSample]:
        return obj.metrics_samples()  # type: ignore[no-any-return]

    def readiness(self, obj: Any) -> tuple[bool, str]:
        return obj.metrics_readiness()  # type: ignore[no-any-return]


_SELF_REPORTING = _SelfReporting()


def adapter_for(obj: Any) -> Adapter | None:
    """How to read ``obj``: itself when it is a :class:`MetricsSource`, else the adapter
    registered for ``type(obj)`` or its nearest base class, or None."""
    if isinstance(obj, MetricsSource):
        return _SELF_REPORTING
    for cls in type(obj).__mro__:
        a = _ADAPTERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if a is not None:
            return a
    return None


@dataclass
class _Registered:
    ref: weakref.ref[Any]
    kind: str
    name: str
    adapter: Adapter


class Registry:
    """Where pybus objects report their counters; read by scrapes, collectors and snapshots.

    Parameters
    ----------
    max_topics : int
        Distinct ``topic`` label values kept (first come, first kept); later topics are summed
        into ``topic="other"`` and counted in ``pybus_topics_folded_total``.
    max_objects_per_kind : int
        Distinct ``name`` label values kept per kind; later objects report as ``name="other"``.
    process : bool
        Include the ``pybus_process_*`` families (psutil).

    Examples
    --------
    >>> reg = Registry(max_topics=50)
    >>> pub = pybus.Publisher("inproc://x", registry=reg)   # registers itself  # doctest: +SKIP
    >>> text = reg.render()                                  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_objects_per_kind: int = DEFAULT_MAX_OBJECTS_PER_KIND,
        process: bool = True,
    ) -> None:
        self.max_topics = check_positive_int("max_topics", max_topics)
        self.max_objects_per_kind = check_positive_int("max_objects_per_kind", max_objects_per_kind)
        self.process = process
        self._lock = threading.Lock()
        self._objects: dict[int, _Registered] = {}
        self._dead: collections.deque[tuple[int, tuple[str, str]]] = collections.deque()
        self._names: set[tuple[str, str]] = set()
        self._seq: dict[str, itertools.count[int]] = {}
        # Topic cap state: admitted topics are kept for the registry's life (stable series);
        # folded topics are remembered only while some object still reports them.
        self._topics: set[str] = set()
        self._folded: set[str] = set()
        self._folded_total = 0
        self._collect_errors: dict[str, int] = {}
        self._logged_errors: set[str] = set()

    # -- registration ------------------------------------------------------------------------

    def register(self, obj: Any, *, name: str | None = None) -> str:
        """Register ``obj`` weakly; returns the ``name`` label it reports under.

        Parameters
        ----------
        obj : object
            A pybus object (or any object with an adapter, see :func:`register_adapter`).
        name : str, optional
            The ``name`` label; default ``obj.name`` if it is a non-empty str, else
            ``"<kind>-<n>"``. A name already used by a live object of the same kind gets a
            ``-2``, ``-3``... suffix so series never collide.

        Raises
        ------
        ValidationError
            No adapter knows ``type(obj)``, or ``name`` is not a non-empty str.
        """
        adapter = adapter_for(obj)
        if adapter is None:
            raise ValidationError(
                f"cannot register a {type(obj).__qualname__} for metrics: it implements no "
                "pybus.metrics.MetricsSource (metrics_kind, metrics_samples(), "
                "metrics_readiness()) and no adapter was registered for its class "
                "(register_adapter('module.Class', adapter))"
            )
        if name is None:
            cand = getattr(obj, "name", None)
            name = cand if isinstance(cand, str) and cand else None
        elif not isinstance(name, str) or not name:
            raise ValidationError(f"metrics name must be a non-empty str, got {name!r}")
        key = id(obj)
        with self._lock:
            self._purge_locked()
            old = self._objects.get(key)
            if old is not None and old.ref() is obj:
                return old.name
            kind = obj.metrics_kind if adapter is _SELF_REPORTING else adapter.kind
            seq = self._seq.setdefault(kind, itertools.count(1))
            if name is None:
                name = f"{kind}-{next(seq)}"
                while (kind, name) in self._names:
                    name = f"{kind}-{next(seq)}"
            else:
                base, i = name, 2
                while (kind, name) in self._names:
                    name, i = f"{base}-{i}", i + 1
            self._names.add((kind, name))
            ref = weakref.ref(obj, functools.partial(self._forget_ref, key, (kind, name)))
            self._objects[key] = _Registered(ref, kind, name, adapter)
        return name

    def unregister(self, obj: Any) -> None:
        """Stop reporting ``obj`` (no error if it was not registered)."""
        with self._lock:
            self._purge_locked()
            reg = self._objects.get(id(obj))
            if reg is not None and reg.ref() is obj:
                del self._objects[id(obj)]
                self._names.discard((reg.kind, reg.name))

    def _forget_ref(self, key: int, kn: tuple[str, str], _ref: object) -> None:
        # A weakref callback can run inside any allocation, including one made while this
        # thread holds self._lock (a garbage collection during register or collect): it must
        # not take the lock. deque.append is atomic; the removal happens under the lock later.
        self._dead.append((key, kn))

    def _purge_locked(self) -> None:
        dead = self._dead
        while dead:
            key, kn = dead.popleft()
            reg = self._objects.get(key)
            if reg is not None and reg.ref() is None:
                del self._objects[key]
            if not any(r.kind == kn[0] and r.name == kn[1] for r in self._objects.values()):
                self._names.discard(kn)

    def objects(self) -> list[tuple[str, str, Any]]:
        """``(kind, name, obj)`` for every live registered object."""
        with self._lock:
            self._purge_locked()
            regs = list(self._objects.values())
        out = []
        for r in regs:
            o = r.ref()
            if o is not None:
                out.append((r.kind, r.name, o))
        return out

    # -- readiness ---------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, list[dict[str, Any]]]:
        """Whether every registered object is ready, and each object's state.

        An object is not ready when its adapter says so (a closed publisher, an open circuit
        breaker). With no objects registered the process is ready.
        """
        items = []
        ok = True
        for kind, name, obj in self.objects():
            with self._lock:
                reg = self._objects.get(id(obj))
            if reg is None:
                continue
            try:
                ready, reason = reg.adapter.readiness(obj)
            except Exception as exc:  # an adapter bug must not take /readyz down
                ready, reason = False, f"readiness check failed: {exc!r}"
            ok = ok and ready
            items.append({"kind": kind, "name": name, "ready": bool(ready), "reason": reason})
        return ok, items

    # -- collection --------------------------------------------------------------------------

    def _admit_topic(self, topic: str, seen_folded: set[str]) -> str:
        if topic in self._topics:
            return topic
        if len(self._topics) < self.max_topics:
            self._topics.add(topic)
            return topic
        if topic not in self._folded:
            self._folded.add(topic)
            self._folded_total += 1
        seen_folded.add(topic)
        return OTHER

    def collect(self) -> list[FamilySnapshot]:
        """Read every live object and return one snapshot per family (in table order)."""
        scalars: dict[str, dict[Labels, float]] = {}
        hdrs: dict[str, dict[Labels, list[HdrValue]]] = {}
        per_kind_names: dict[str, set[str]] = {}
        kinds: dict[str, int] = {}
        seen_folded: set[str] = set()
        objs = self.objects()
        with self._lock:
            regs = {id(o): self._objects.get(id(o)) for _, _, o in objs}
        for kind, name, obj in objs:
            reg = regs.get(id(obj))
            if reg is None:
                continue
            kinds[kind] = kinds.get(kind, 0) + 1
            names = per_kind_names.setdefault(kind, set())
            if name not in names and len(names) >= self.max_objects_per_kind:
                name = OTHER
            names.add(name)
            try:
                raw = _read(reg.adapter, obj)
            except Exception as exc:  # one broken object must not fail the scrape
                with self._lock:
                    self._collect_errors[kind] = self._collect_errors.get(kind, 0) + 1
                    first = kind not in self._logged_errors
                    self._logged_errors.add(kind)
                if first:
                    log.warning("pybus.metrics: reading a %s failed: %r", kind, exc)
                continue
            with self._lock:
                for src, labels, value in raw:
                    decl = SOURCE_LABELS.get(src)
                    if decl is None:
                        raise AssertionError(f"adapter {kind!r} emitted unknown metric {src!r}")
                    if "name" in decl:
                        labels = {**labels, "name": name}
                    if "topic" in labels:
                        labels["topic"] = self._admit_topic(str(labels["topic"]), seen_folded)
                    if set(labels) != set(decl):
                        raise AssertionError(
                            f"adapter {kind!r} emitted {src} with labels {sorted(labels)}, "
                            f"declared {list(decl)}"
                        )
                    key = tuple((k, str(labels[k])) for k in decl)
                    if isinstance(value, HdrValue):
                        hdrs.setdefault(src, {}).setdefault(key, []).append(value)
                    else:
                        fam = scalars.setdefault(src, {})
                        fam[key] = fam.get(key, 0) + value
        with self._lock:
            # Forget folded topics no object reports any more, so the set stays bounded by what
            # live objects hold.
            self._folded &= seen_folded
            folded_total = self._folded_total
            errors = dict(self._collect_errors)
        meta = scalars
        meta["pybus_topics_folded_total"] = {(): folded_total}
        meta["pybus_objects"] = {(("kind", k),): n for k, n in sorted(kinds.items())}
        # every kind read, at 0 until its first error: Prometheus' increase() sees no increase
        # in a series that is born at 1, so an alert on a one-off error needs the 0 first
        meta["pybus_metrics_collect_errors_total"] = {
            (("kind", k),): errors.get(k, 0) for k in sorted(kinds.keys() | errors.keys())
        }
        if self.process:
            from .process import process_samples

            for src, value in process_samples():
                meta[src] = {(): value}
        return _build(scalars, hdrs)

    def render(self, fmt: str = "text") -> bytes:
        """The scrape body: ``fmt`` is ``"text"`` (Prometheus 0.0.4) or ``"openmetrics"``,
        written by ``prometheus_client`` (:func:`pybus.metrics.collector.render`)."""
        from .collector import render

        return render(self, fmt)

    def snapshot(self) -> dict[str, Any]:
        """Every family as plain data: ``{"timestamp": s, "metrics": {name: {...}}}``."""
        fams = self.collect()
        metrics: dict[str, Any] = {}
        for f in fams:
            d = f.definition
            metrics[d.name] = {
                "type": d.type,
                "help": d.help,
                "unit": d.unit,
                "samples": [
                    {"name": n, "labels": dict(lab), "value": v} for n, lab, v in f.samples
                ],
            }
        return {"timestamp": time.time(), "metrics": metrics}


def _read(adapter: Adapter, obj: Any) -> list[RawSample]:
    # stats() of an object being driven by another thread may iterate a dict that grows
    # (a new topic); CPython raises RuntimeError then. The next attempt sees a settled dict.
    for attempt in range(3):
        try:
            return list(adapter.samples(obj))
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _build(
    scalars: dict[str, dict[Labels, float]], hdrs: dict[str, dict[Labels, list[HdrValue]]]
) -> list[FamilySnapshot]:
    out: list[FamilySnapshot] = []
    for src, kind in SOURCES.items():
        defs = BY_SOURCE[src]
        if kind in ("counter", "gauge"):
            d = defs[0]
            series = scalars.get(src, {})
            out.append(FamilySnapshot(d, [(d.name, k, v) for k, v in sorted(series.items())]))
            continue
        series_h = hdrs.get(src, {})
        merged = {k: _hdr.merged(v) for k, v in sorted(series_h.items())}
        for d in defs:
            samples: list[tuple[str, Labels, float]] = []
            for key, (hist, scale, exact) in merged.items():
                samples.extend(_hdr_samples(d, key, hist, scale, exact))
            out.append(FamilySnapshot(d, samples))
    return out


def _hdr_samples(
    d: MetricDef, key: Labels, hist: Any, scale: float, exact: float | None
) -> Iterator[tuple[str, Labels, float]]:
    count = _hdr.total_count(hist)
    if d.type == "gauge":  # the max
        yield d.name, key, (_hdr.max_value(hist) * scale if count else 0.0)
        return
    total = exact if exact is not None else _hdr.total_sum(hist) * scale
    if d.type == "summary":
        for q in QUANTILES:
            v = _hdr.value_at_quantile(hist, q) * scale if count else float("nan")
            yield d.name, key + (("quantile", _fmt_bound(q)),), v
        yield d.name + "_count", key, count
        yield d.name + "_sum", key, total
        return
    # histogram: cumulative counts at each bound, from the HDR buckets
    cum = _hdr.cumulative(hist, [b / scale for b in d.buckets])
    for b, c in zip(d.buckets, cum, strict=True):
        yield d.name + "_bucket", key + (("le", _fmt_bound(b)),), c
    yield d.name + "_bucket", key + (("le", "+Inf"),), count
    yield d.name + "_count", key, count
    yield d.name + "_sum", key, total


def _fmt_bound(x: float) -> str:
    # Canonical float text, as prometheus_client writes le/quantile labels ("0.5", "1e-06").
    return repr(float(x))

