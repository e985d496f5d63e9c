"""CURVE security: keys, key files, a ZAP allowlist with run-time revocation, topic permissions.

ZeroMQ's CURVE mechanism (CurveZMQ: Curve25519 key exchange, then every frame encrypted and
authenticated) runs between a *server* socket, which holds a long-term secret key its clients
know the public half of, and *client* sockets, which hold their own key pair. Which side binds
does not matter. A server socket asks the ZAP handler of its ZeroMQ context whether a client's
public key may connect; pybus answers from :class:`Curve`'s allowlist (see
``pybus.transport.sockets`` for the handler thread), counts and logs every rejection with the
client's public key in Z85 (never a secret), and rate-limits that log.

Per-key topic permissions (``Curve.server(..., permissions={key: {"publish": [...],
"subscribe": [...]}})``) are an allowlist on top: publish rights are checked per received frame
by a secured Subscriber or a Proxy frontend (the frame's ZeroMQ ``User-Id`` is the sender's Z85
key), subscribe rights per subscription by a Publisher or a Proxy backend (XPUB manual mode).

Plaintext peers and clients that use a wrong server key fail the handshake before ZAP is
asked; the server socket's monitor counts those (``rejected_by_reason["handshake"]``; ZeroMQ
does not tell which key, if any, they used).

Example
-------
>>> srv_pub, srv_sec = pybus.keypair()                                   # doctest: +SKIP
>>> cli_pub, cli_sec = pybus.keypair()
>>> pub = pybus.Publisher("tcp://*:5556", security=pybus.Curve.server(srv_sec, allow=[cli_pub]))
>>> sub = pybus.Subscriber("tcp://host:5556", security=pybus.Curve.client(cli_sec, srv_pub))
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import zmq
import zmq.utils.z85

from ..errors import ValidationError
from .sockets import hub_for, watch

__all__ = [
    "Curve",
    "keypair",
    "public_key_of",
    "save_keypair",
    "load_keypair",
    "load_public_key",
    "load_secret_key",
]

log = logging.getLogger("pybus.security")

Z85_ALPHABET = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
#: A Curve25519 key is 32 bytes, 40 characters in Z85.
Z85_KEY_LEN = 40
# Rejected keys counted one by one; beyond this many distinct keys they count as "<other>".
_MAX_TRACKED_KEYS = 1024


def _key(value: object, what: str) -> bytes:
    """Validate a Z85 key (bytes or str) and return it as 40 bytes."""
    if isinstance(value, str):
        try:
            raw = value.strip().encode("ascii")
        except UnicodeEncodeError:
            raise ValidationError(
                f"{what} must be a 40-character Z85 string (as zmq.curve_keypair() makes); "
                f"it has non-ASCII characters"
            ) from None
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        raise ValidationError(
            f"{what} must be a Z85 key (40-byte bytes or 40-character str), got "
            f"{type(value).__name__}"
        )
    if len(raw) != Z85_KEY_LEN:
        hint = " (a raw 32-byte key: encode it with zmq.utils.z85.encode)" if len(raw) == 32 else ""
        raise ValidationError(
            f"{what} must be {Z85_KEY_LEN} Z85 characters, got {len(raw)}{hint}"
        )
    bad = sorted({chr(c) for c in raw if c not in Z85_ALPHABET})
    if bad:
        raise ValidationError(
            f"{what} has characters outside the Z85 alphabet: {''.join(bad)!r} (allowed: "
            f"0-9 a-z A-Z and .-:+=^!/*?&<>()[]{{}}@%$#)"
        )
    return raw


def keypair() -> tuple[bytes, bytes]:
    """A new CURVE key pair ``(public_key, secret_key)``, both Z85 bytes."""
    return zmq.curve_keypair()


def public_key_of(secret_key: bytes | str) -> bytes:
    """The public key (Z85) that belongs to ``secret_key`` (Z85)."""
    return zmq.curve_public(_key(secret_key, "secret_key"))


# -- key files ------------------------------------------------------------------------------
# The format is ZeroMQ's certificate format (ZPL, as written by czmq and read by
# zmq.auth.load_certificate): a "curve" section with public-key / secret-key quoted strings.


def _write_cert(path: Path, public: bytes, secret: bytes | None, overwrite: bool) -> None:
    lines = [
        "#   **** pybus CURVE " + ("secret key: keep it private ****" if secret else
                                    "public key: share it with peers ****"),
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    text = "\n".join(lines) + "\n"
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    mode = 0o600 if secret is not None else 0o644
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise ValidationError(f"{path} exists; pass overwrite=True to replace it") from None
    try:
        # O_CREAT applies the umask and leaves an existing file's mode: set it explicitly
        os.fchmod(fd, mode)
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def _read_cert(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        raise ValidationError(f"no key file at {path}") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{path} is not a key file (not ASCII text)") from None
    out: dict[str, bytes] = {}
    for line in text.splitlines():
        s = line.strip()
        if "=" not in s or s.startswith("#"):
            continue
        k, v = (p.strip() for p in s.split("=", 1))
        if k in ("public-key", "secret-key"):
            out[k] = _key(v.strip('"'), f"{k} in {path}")
    if "public-key" not in out:
        raise ValidationError(f"{path} has no public-key line; is it a pybus/ZeroMQ key file?")
    return out


def save_keypair(
    directory: str | os.PathLike[str],
    name: str,
    public_key: bytes | str | None = None,
    secret_key: bytes | str | None = None,
    *,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, mode 0644) and ``NAME.key_secret`` (both keys, mode 0600).

    A new pair is made when no keys are given. Returns the two paths. The files use ZeroMQ's
    certificate format, so ``zmq.auth.load_certificate`` reads them too.

    Raises
    ------
    ValidationError
        A bad name or key, or a file exists and ``overwrite`` is False.
    """
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValidationError(f"name must be a plain file name (no '/', not hidden), got {name!r}")
    if secret_key is None:
        if public_key is not None:
            raise ValidationError("give secret_key with public_key (or neither for a new pair)")
        public, secret = keypair()
    else:
        secret = _key(secret_key, "secret_key")
        public = zmq.curve_public(secret)
        if public_key is not None and _key(public_key, "public_key") != public:
            raise ValidationError("public_key does not belong to secret_key")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    pub_path, sec_path = d / f"{name}.key", d / f"{name}.key_secret"
    _write_cert(sec_path, public, secret, overwrite)
    _write_cert(pub_path, public, None, overwrite)
    return pub_path, sec_path


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key (Z85 bytes) in a key file (``NAME.key`` or ``NAME.key_secret``)."""
    return _read_cert(Path(path))["public-key"]


def load_secret_key(path: str | os.PathLike[str], *, check_mode: bool = True) -> bytes:
    """The secret key (Z85 bytes) in ``NAME.key_secret``.

    Raises
    ------
    ValidationError
        No secret key in the file, or (``check_mode``) the file is readable by group or others.
    """
    p = Path(path)
    if check_mode and p.exists():
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise ValidationError(
                f"{p} is readable by others (mode {mode:04o}); a secret key file must be 0600: "
                f"chmod 600 {p}"
            )
    cert = _read_cert(p)
    if "secret-key" not in cert:
        raise ValidationError(f"{p} holds no secret-key (a public key file?)")
    if zmq.curve_public(cert["secret-key"]) != cert["public-key"]:
        raise ValidationError(f"{p}: the public-key does not belong to the secret-key")
    return cert["secret-key"]


def load_keypair(directory: str | os.PathLike[str], name: str) -> tuple[bytes, bytes]:
    """``(public_key, secret_key)`` from ``DIR/NAME.key_secret`` (see :func:`save_keypair`)."""
    secret = load_secret_key(Path(directory) / f"{name}.key_secret")
    return zmq.curve_public(secret), secret


# -- topic permissions -----------------------------------------------------------------------


#: Permission kinds a ``permissions`` entry may hold.
PERMISSION_KINDS = ("publish", "subscribe")
# Most (user, topic) publish decisions remembered per Curve; when full the cache is cleared.
_PUBLISH_CACHE_SIZE = 4096


def _compile_permission(pattern: object, key: bytes) -> bytes | None:
    """A subscribe permission as the topic prefix it opens (None: everything)."""
    from ..policy.topics import validate_topic

    if not isinstance(pattern, str):
        raise ValidationError(
            f"subscribe permission patterns must be str, got {pattern!r} for {key.decode()}"
        )
    if pattern in ("#", "**"):
        return None
    if pattern.endswith(".#"):
        try:
            validate_topic(pattern[:-2])
        except ValidationError as exc:
            raise ValidationError(
                f"subscribe permission {pattern!r} for {key.decode()}: {exc}"
            ) from None
        return pattern[:-1].encode("ascii")  # "orders.#" opens every topic under "orders."
    raise ValidationError(
        f"subscribe permission {pattern!r} for {key.decode()}: use '#' (everything) or a "
        f"subtree 'a.b.#'. ZeroMQ filters by prefix, so only whole subtrees can be enforced "
        f"at the publisher"
    )


def _compile_publish_permission(pattern: object, key: bytes) -> Any:
    """A publish permission as a compiled topic pattern (``*`` one segment, ``#`` trailing)."""
    from ..policy.topics import TopicPattern

    if not isinstance(pattern, str):
        raise ValidationError(
            f"publish permission patterns must be str, got {pattern!r} for {key.decode()}"
        )
    try:
        return TopicPattern(pattern)
    except ValidationError as exc:
        raise ValidationError(f"publish permission {pattern!r} for {key.decode()}: {exc}") from None


def _patterns(value: object, kind: str, key: bytes) -> list[object]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, Iterable):
        raise ValidationError(
            f"permissions[{key.decode()}][{kind!r}] must be a list of topic patterns, got "
            f"{type(value).__name__}"
        )
    return list(value)


class Curve:
    """CURVE settings for one side of a connection; pass as ``security=`` to any pybus class.

    Build with :meth:`server` or :meth:`client`. A server ``Curve`` keeps the allowlist, the
    counters and the log of rejected peers; one object may secure several sockets (all share
    its allowlist). Thread-safe.
    """

    def __init__(
        self,
        *,
        role: Literal["server", "client"],
        secret_key: bytes | str,
        public_key: bytes | str | None = None,
        server_public_key: bytes | str | None = None,
        allow: Iterable[bytes | str] | Literal["any"] | None = None,
        permissions: Mapping[bytes | str, Mapping[str, Iterable[str]]] | None = None,
        log_interval_s: float = 10.0,
    ) -> None:
        if role not in ("server", "client"):
            raise ValidationError(f"role must be 'server' or 'client', got {role!r}")
        if not zmq.has("curve"):  # pragma: no cover - pyzmq wheels bundle libsodium/tweetnacl
            raise ValidationError("this libzmq was built without CURVE support")
        self.role = role
        self._secret = _key(secret_key, "secret_key")
        derived = zmq.curve_public(self._secret)
        if public_key is not None and _key(public_key, "public_key") != derived:
            raise ValidationError("public_key does not belong to secret_key")
        self.public_key: bytes = derived
        self.server_public_key: bytes | None = None
        self._lock = threading.Lock()
        self._any = False
        self._allow: set[bytes] = set()
        self._revoked: set[bytes] = set()
        self._subscribe_perms: dict[bytes, list[bytes | None]] | None = None
        self._publish_perms: dict[bytes, list[Any]] | None = None
        # (user id str, topic bytes) -> may publish; filled by the sockets that check
        self._publish_cache: dict[tuple[str, bytes], bool] = {}
        if role == "client":
            if server_public_key is None:
                raise ValidationError("Curve.client needs the server's public key")
            self.server_public_key = _key(server_public_key, "server_public_key")
            if allow is not None or permissions is not None:
                raise ValidationError("allow/permissions belong to Curve.server")
        else:
            if allow is None:
                raise ValidationError(
                    "Curve.server needs allow=[client public keys] or allow='any' (any client "
                    "that knows the server key; traffic is still encrypted)"
                )
            if isinstance(allow, str) and allow == "any":
                self._any = True
            else:
                if isinstance(allow, (str, bytes)):
                    raise ValidationError(
                        "allow must be a list of client public keys or 'any', not one key"
                    )
                self._allow = {_key(k, "a key in allow") for k in allow}
            if permissions is not None:
                if not isinstance(permissions, Mapping):
                    raise ValidationError(
                        "permissions must be a dict {client public key: {'publish': [...], "
                        "'subscribe': [...]}}"
                    )
                self._subscribe_perms = {}
                self._publish_perms = {}
                for k, perm in permissions.items():
                    key = _key(k, "a key in permissions")
                    if not isinstance(perm, Mapping):
                        raise ValidationError(
                            f"permissions[{key.decode()}] must be a dict like "
                            f"{{'publish': ['orders.*'], 'subscribe': ['orders.#']}}"
                        )
                    unknown = set(perm) - set(PERMISSION_KINDS)
                    if unknown:
                        raise ValidationError(
                            f"permissions[{key.decode()}] has {sorted(map(str, unknown))}; the "
                            f"allowed kinds are 'publish' and 'subscribe' (a kind left out is "
                            f"denied)"
                        )
                    # a kind left out grants nothing: permissions are an allowlist
                    self._subscribe_perms[key] = [
                        _compile_permission(p, key)
                        for p in _patterns(perm.get("subscribe", []), "subscribe", key)
                    ]
                    self._publish_perms[key] = [
                        _compile_publish_permission(p, key)
                        for p in _patterns(perm.get("publish", []), "publish", key)
                    ]
        if not log_interval_s >= 0:
            raise ValidationError(f"log_interval_s must be >= 0, got {log_interval_s!r}")
        self._log_interval_s = float(log_interval_s)
        self.domain: bytes = b"pybus-" + os.urandom(6).hex().encode()
        self._owners: weakref.WeakSet[Any] = weakref.WeakSet()
        # counters
        self._accepted = 0
        self._rejected_by_reason: dict[str, int] = {
            "not_allowed": 0, "revoked": 0, "mechanism": 0, "handshake": 0
        }
        self._rejected_keys: dict[str, int] = {}
        self._denied_subscriptions = 0
        self._denied_publications = 0
        self._denied_publish_keys: dict[str, int] = {}
        self._last_log = float("-inf")  # never: monotonic() may be below log_interval_s
        self._unlogged = 0

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def server(
        cls,
        secret_key: bytes | str,
        allow: Iterable[bytes | str] | Literal["any"],
        public_key: bytes | str | None = None,
        *,
        permissions: Mapping[bytes | str, Mapping[str, Iterable[str]]] | None = None,
        log_interval_s: float = 10.0,
    ) -> Curve:
        """The side clients authenticate to.

        Parameters
        ----------
        secret_key : bytes or str
            The server's secret key (Z85); its public half is what clients are given.
        allow : list of keys, or "any"
            Client public keys (Z85) that may connect; ``"any"`` admits any client that
            knows the server's public key (still encrypted, not authenticated).
        public_key : bytes or str, optional
            Checked against the key derived from ``secret_key``.
        permissions : dict, optional
            ``{client_public_key: {"publish": ["orders.*", ...], "subscribe": ["orders.#",
            ...]}}``. ``subscribe``: topic subtrees (``#`` or ``a.b.#``) a client may
            subscribe to at a :class:`pybus.Publisher` or a :class:`pybus.Proxy` backend
            secured by this object (enforced per connection with XPUB manual mode).
            ``publish``: topic patterns (``*`` one segment, ``#`` trailing segments) a client
            may publish into a :class:`pybus.Subscriber` or a :class:`pybus.Proxy` frontend
            secured by this object (checked per received frame; other frames are dropped and
            counted). Permissions are an allowlist: with ``permissions`` given, a key without
            an entry may do neither, and a kind left out of a key's entry is denied to it.
        log_interval_s : float
            Rejections are logged (WARNING) at most once per this many seconds.
        """
        return cls(role="server", secret_key=secret_key, public_key=public_key, allow=allow,
                   permissions=permissions, log_interval_s=log_interval_s)

    @classmethod
    def client(
        cls,
        secret_key: bytes | str,
        server_public_key: bytes | str,
        public_key: bytes | str | None = None,
    ) -> Curve:
        """The side that authenticates to a server whose public key it knows."""
        return cls(role="client", secret_key=secret_key, public_key=public_key,
                   server_public_key=server_public_key)

    @property
    def is_server(self) -> bool:
        return self.role == "server"

    @property
    def has_permissions(self) -> bool:
        """True when per-key topic ``permissions`` were given (publish and subscribe)."""
        return self._subscribe_perms is not None

    # -- applying to a socket --------------------------------------------------------------

    def apply(self, sock: zmq.Socket[Any], context: zmq.Context[Any] | None = None) -> None:
        """Set the CURVE options on ``sock`` (before bind/connect).

        For a server this also starts (once per ZeroMQ context) the ZAP handler that enforces
        the allowlist, and tells ZeroMQ to refuse connections when it is missing.
        """
        if self.role == "server":
            ctx = context if context is not None else sock.context
            while not hub_for(ctx).add_domain(self):  # that hub was exiting: use a new one
                pass
            sock.setsockopt(zmq.ZAP_DOMAIN, self.domain)
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret)
        else:
            assert self.server_public_key is not None
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret)

    def __call__(self, sock: zmq.Socket[Any]) -> None:
        """Use as a socket hook (``security=`` of :class:`pybus.Server`/:class:`pybus.Client`):
        set CURVE on ``sock`` and, for a server, count its failed handshakes."""
        self.apply(sock)
        if self.role == "server":
            watch(sock, None, [self])

    def _register_owner(self, owner: Any) -> None:
        """``owner._security_rekick()`` is called after :meth:`revoke` (to cut live peers)."""
        self._owners.add(owner)

    # -- allowlist at run time -------------------------------------------------------------

    def allow(self, public_key: bytes | str) -> None:
        """Admit ``public_key`` from now on (also lifts a revocation)."""
        key = _key(public_key, "public_key")
        with self._lock:
            self._revoked.discard(key)
            self._allow.add(key)

    def revoke(self, public_key: bytes | str, *, disconnect: bool = True) -> None:
        """Refuse ``public_key`` from now on, even under ``allow="any"``.

        With ``disconnect`` (the default) every pybus socket secured by this object drops all
        its connections (unbind/rebind, disconnect/reconnect); allowed peers reconnect within
        the reconnection interval and are authenticated again, the revoked one is refused.
        Messages in flight to or from other peers during that moment are lost and show up
        as sequence gaps at subscribers.
        """
        key = _key(public_key, "public_key")
        with self._lock:
            self._allow.discard(key)
            self._revoked.add(key)
        if disconnect:
            for owner in list(self._owners):
                try:
                    owner._security_rekick()
                except Exception:
                    log.exception("pybus: could not drop connections of %r after revoke", owner)

    def is_allowed(self, public_key: bytes | str) -> bool:
        key = _key(public_key, "public_key")
        with self._lock:
            return key not in self._revoked and (self._any or key in self._allow)

    @property
    def allowed_keys(self) -> list[bytes]:
        with self._lock:
            return sorted(self._allow)

    # -- ZAP (called from the hub thread) --------------------------------------------------

    def _authorize(
        self, mechanism: bytes, creds: list[bytes], address: str
    ) -> tuple[bool, str, bytes]:
        if mechanism != b"CURVE" or len(creds) != 1 or len(creds[0]) != 32:
            return self._reject("mechanism", None, address, f"mechanism {mechanism!r} refused")
        key = zmq.utils.z85.encode(creds[0])
        with self._lock:
            if key in self._revoked:
                reason = "revoked"
            elif self._any or key in self._allow:
                self._accepted += 1
                return True, "OK", key
            else:
                reason = "not_allowed"
        return self._reject(reason, key, address, f"client key {reason.replace('_', ' ')}")

    def _reject(
        self, reason: str, key: bytes | None, address: str, text: str
    ) -> tuple[bool, str, bytes]:
        with self._lock:
            self._rejected_by_reason[reason] += 1
            if key is not None:
                k = key.decode()
                if k not in self._rejected_keys and len(self._rejected_keys) >= _MAX_TRACKED_KEYS:
                    k = "<other>"
                self._rejected_keys[k] = self._rejected_keys.get(k, 0) + 1
        self._log_rejection(reason, key.decode() if key else "-", address)
        return False, text, b""

    def _handshake_failed(self, event: str, endpoint: str) -> None:
        # ZAP rejections also raise handshake_failed_auth; they are counted in _reject.
        if event != "handshake_failed":
            return
        with self._lock:
            self._rejected_by_reason["handshake"] += 1
        self._log_rejection("handshake", "unknown (plaintext peer or wrong server key)", endpoint)

    def _log_rejection(self, reason: str, key: str, where: str, *,
                       denial: bool = False) -> None:
        """Log a refusal (WARNING) at most once per ``log_interval_s``; ``denial``: a topic
        permission refused to an admitted peer rather than a refused connection."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_log < self._log_interval_s:
                self._unlogged += 1
                return
            self._last_log = now
            suppressed, self._unlogged = self._unlogged, 0
        if denial:
            log.warning(
                "pybus CURVE: %s for public key %s at %s [%d publications and %d subscriptions "
                "denied in all, %d refusals not logged since the last message]",
                reason, key, where, self._denied_publications, self._denied_subscriptions,
                suppressed,
            )
            return
        log.warning(
            "pybus CURVE: rejected a peer (%s) public key %s at %s [%d rejections in all, %d "
            "not logged since the last message]",
            reason, key, where, self.rejected, suppressed,
        )

    # -- subscribe permissions (called by a Publisher in XPUB manual mode) -----------------

    def may_subscribe(self, user_id: bytes | str | None, prefix: bytes) -> bool:
        """Whether the client ``user_id`` (its Z85 public key) may subscribe to ``prefix``."""
        perms = self._subscribe_perms
        if perms is None:
            return True
        if isinstance(user_id, str):
            user_id = user_id.encode("ascii", "replace")
        allowed = perms.get(user_id or b"")
        if not allowed:
            return False
        for p in allowed:
            if p is None or prefix.startswith(p):
                return True
        return False

    def granted_prefixes(self, user_id: bytes | str | None, prefix: bytes) -> list[bytes]:
        """The ZeroMQ prefixes to apply for the client's subscription to ``prefix``.

        ``[prefix]`` when it is permitted. Otherwise the permitted subtrees inside it: a
        subscriber with the pattern ``orders.#`` asks for the prefix ``orders`` (its pattern
        also matches the topic ``orders`` itself), which would also pass ``ordersX.*``;
        a key granted ``orders.#`` then gets the narrower ``orders.`` (and a ``#``
        subscriber every subtree its key is granted). Empty: denied.
        """
        if self.may_subscribe(user_id, prefix):
            return [prefix]
        perms = self._subscribe_perms
        assert perms is not None  # may_subscribe allows everything without permissions
        if isinstance(user_id, str):
            user_id = user_id.encode("ascii", "replace")
        allowed = perms.get(user_id or b"") or []
        return sorted({p for p in allowed if p is not None and p.startswith(prefix)})

    def _count_denied_subscription(self, user_id: str, prefix: bytes,
                                   where: str = "publisher") -> None:
        with self._lock:
            self._denied_subscriptions += 1
        self._log_rejection(f"subscription {prefix[:64]!r} denied", user_id or "-", where,
                            denial=True)

    # -- publish permissions (called by a Subscriber or a Proxy frontend per received frame) --

    def may_publish(self, user_id: bytes | str | None, topic: bytes | str) -> bool:
        """Whether the client ``user_id`` (its Z85 public key) may publish on ``topic``.

        Without ``permissions`` everything is allowed. A frame without a user id (a plaintext
        or NULL-mechanism peer, which a CURVE server socket never admits) is denied. The
        decision is cached per (user, topic) in a bounded dict.
        """
        perms = self._publish_perms
        if perms is None:
            return True
        if isinstance(user_id, bytes):
            user_id = user_id.decode("ascii", "replace")
        if isinstance(topic, str):
            topic = topic.encode("ascii", "replace")
        k = (user_id or "", topic)
        hit = self._publish_cache.get(k)
        if hit is None:
            hit = self._decide_publish(k[0], topic)
        return hit

    def _decide_publish(self, user: str, topic: bytes) -> bool:
        """The uncached publish decision for ``(user, topic)``; remembers it (bounded)."""
        from ..policy.topics import is_valid_topic

        perms = self._publish_perms
        assert perms is not None
        allowed = perms.get(user.encode("ascii", "replace"))
        ok = False
        if allowed:
            try:
                text = topic.decode("ascii")
            except UnicodeDecodeError:
                text = ""
            ok = is_valid_topic(text) and any(p.matches(text) for p in allowed)
        cache = self._publish_cache
        if len(cache) >= _PUBLISH_CACHE_SIZE:
            cache.clear()  # bounded whatever topics or keys peers use
        cache[(user, topic)] = ok
        return ok

    def _count_denied_publication(self, user_id: str, topic: bytes, messages: int,
                                  where: str) -> None:
        """Count (and log, rate-limited) ``messages`` dropped because ``user_id`` may not
        publish ``topic``."""
        with self._lock:
            self._denied_publications += messages
            k = user_id or "-"
            if k not in self._denied_publish_keys and \
                    len(self._denied_publish_keys) >= _MAX_TRACKED_KEYS:
                k = "<other>"
            self._denied_publish_keys[k] = self._denied_publish_keys.get(k, 0) + messages
        self._log_rejection(f"publication on {topic[:64]!r} forbidden", user_id or "-", where,
                            denial=True)

    # -- accounting ------------------------------------------------------------------------

    @property
    def rejected(self) -> int:
        """Connection attempts refused (ZAP and failed handshakes)."""
        return sum(self._rejected_by_reason.values())

    def stats(self) -> dict[str, Any]:
        """``accepted`` (ZAP approvals), ``rejected`` and ``rejected_by_reason`` (``not_allowed``,
        ``revoked``, ``mechanism``, ``handshake`` = plaintext peer or wrong server key),
        ``rejected_keys`` (Z85 public key -> count), ``denied_subscriptions``,
        ``denied_publications`` (messages dropped for lack of a publish permission) and
        ``denied_publish_keys`` (Z85 public key -> such messages)."""
        with self._lock:
            return {
                "role": self.role,
                "accepted": self._accepted,
                "rejected": sum(self._rejected_by_reason.values()),
                "rejected_by_reason": dict(self._rejected_by_reason),
                "rejected_keys": dict(self._rejected_keys),
                "denied_subscriptions": self._denied_subscriptions,
                "denied_publications": self._denied_publications,
                "denied_publish_keys": dict(self._denied_publish_keys),
                "allowed": "any" if self._any else len(self._allow),
                "revoked": len(self._revoked),
            }

    def __repr__(self) -> str:
        extra = ""
        if self.role == "server":
            extra = " allow=any" if self._any else f" allow={len(self._allow)} keys"
        return f"<pybus.Curve {self.role} public={self.public_key.decode()}{extra}>"

    def __reduce__(self) -> Any:  # keep secrets out of pickles and copies by accident
        raise TypeError("pybus.Curve holds a secret key and is not picklable")
