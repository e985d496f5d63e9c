"""Every pybus wire format, one module per document in ``docs/``.

- :mod:`pybus.wire.frame`: the batch frame of ``docs/wire.md`` (the codec and the ring that
  packs it; re-exported here);
- :mod:`pybus.wire.reqrep`: the request/reply frames of ``docs/wire-reqrep.md``;
- :mod:`pybus.wire.workqueue`: the work-queue frames of ``docs/wire-workqueue.md``.

Applications publish and subscribe through :class:`pybus.Publisher` and
:class:`pybus.Subscriber` and never need this package; it is for tools that read or write
pybus frames themselves (a bridge, a recorder, a test written from the spec).
"""

from .frame import *  # noqa: F403
from .frame import __all__ as _frame_all

__all__ = list(_frame_all)
