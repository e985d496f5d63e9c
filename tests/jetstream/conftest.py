"""The JetStream tests' servers (tests/jetstream/natsserver.py) as fixtures."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))

from natsserver import nats_cluster, nats_server  # noqa: E402,F401
