"""ZeroMQ sockets as pybus uses them: liveness (heartbeats, reconnects, monitors), CURVE
security with its ZAP handler, and the choice of the I/O path."""

from .security import Curve, keypair, load_keypair, load_public_key, load_secret_key, save_keypair
from .sockets import Liveness, SlowConsumerError, fast_path

__all__ = [
    "Curve",
    "Liveness",
    "SlowConsumerError",
    "fast_path",
    "keypair",
    "load_keypair",
    "load_public_key",
    "load_secret_key",
    "save_keypair",
]
