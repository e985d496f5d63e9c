"""Adapters from pybus objects' counters and ``stats()`` to the metric families.

Each adapter reads what the object already keeps (plain counters, per-batch updates) and yields
``(logical_name, labels, value)``; the registry adds the ``name`` label and caps topics.
"""

from __future__ import annotations
