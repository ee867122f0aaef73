"""The etcd backend: the store as keys in an etcd v3 cluster.

We talk to etcd through its v3 JSON gateway (``POST /v3/kv/range``,
``/v3/kv/txn``, base64 keys and values) with :mod:`http.client`: no new
dependency, a persistent connection per endpoint, and the whole protocol we
need is four JSON calls.

Key layout (all under :data:`PREFIX`; ``<sa>`` is ``<proto:03d>/<dst>/<spi:08x>``, ``<ike>``
an IKE SA's SPIs ``<initiator's:016x><responder's:016x>``)::

    /ipsec-ha/schema                                  "1"  (the layout version)
    /ipsec-ha/v1/epoch/<server_id>                    decimal owner epoch
    /ipsec-ha/v1/sa/<sa>                              owner server ID (the SPI index)
    /ipsec-ha/v1/server/<id>/sa/<sa>                  JSON {entry, policies: [hex id]}
    /ipsec-ha/v1/server/<id>/replay/<sa>              latest replay state (raw bytes)
    /ipsec-ha/v1/server/<id>/policy/<hex id>          SPD entry (raw bytes)
    /ipsec-ha/v1/server/<id>/ike/<ike>                JSON {children: [CHILD SA SPI], record}
    /ipsec-ha/v1/server/<id>/ike_child/<spi:08x>/<ike>
                                                      "" (the CHILD SA SPI index of the IKE SAs)
    /ipsec-ha/v1/server/<id>/revision                 epoch of the write; its mod_revision is the
                                                      server's revision
    /ipsec-ha/v1/server/<id>/removed/sa/<sa>          epoch of the write that deleted the SA, at
                                                      the marker's mod_revision
    /ipsec-ha/v1/server/<id>/removed/policy/<hex id>  likewise for a policy
    /ipsec-ha/v1/server/<id>/removed/ike/<ike>        likewise for an IKE SA
    /ipsec-ha/v1/server/<id>/horizon                  decimal: removals up to it are forgotten

An SA record written before IKE SAs were kept on their own also holds an
``ike_sa`` field (the SA's former, reserved IKE SA slot); it is ignored.  An IKE SA's ``ike_child``
keys are written and deleted in the transaction that stores or deletes it,
one per CHILD SA SPI it names (a key per pair, not one per SPI, so two IKE
SAs of a server naming one SPI do not overwrite each other's): a lookup by
SPI reads the IKE SA through a one-prefix range, never a scan of the IKE SAs.
Storing an IKE SA costs one operation plus one per CHILD SA SPI it adds or
drops, deleting one two plus one per CHILD SA SPI it named (within
etcd's ``--max-txn-ops``, as for SAs).  A change walk since revision 0 names
no removed IKE SA (no caller can hold one of revision 0).

The change feed is etcd's own MVCC: a server ID's revision is the etcd
revision of its last write that changed something (the ``revision`` key is
put in that write's transaction, so reading it costs one key, not a scan),
and what changed after revision R is read from etcd's history with a watch
from R + 1 (:mod:`appliance.store.etcd_history`; the cost is the events
since R).  Once etcd compacted that history, the keys under the server's
prefix whose ``mod_revision`` is above R are walked instead (ranges with
``min_mod_revision``; etcd filters after reading the range, so a change
page costs a scan of the keys after its cursor).  A write that stores an SA
also writes or deletes its replay key, so a changed record's replay state
is among the changed keys.

A deletion leaves no key, so each write that deletes an existing SA,
policy or IKE SA puts a removal marker in the same transaction.  Storing
the entry again leaves its marker (a write costs no extra operation per
entry, within etcd's ``--max-txn-ops``): a change walk skips a marker whose
entry is stored, as that entry's newer key is reported as a change.  At most
:attr:`~appliance.store.base.SaStore.removal_history` markers are kept per
server ID; the oldest are deleted with the ``horizon`` raised in the same
transaction, and changes after a revision below the horizon are gone.  The
markers arrived in layout 1 without changing it: a keyspace written before
them has no markers and horizon 0, and its servers have revision 0 until
their next write.

Every write is one optimistic transaction: read the epoch and the owners of
the SA keys, check them (stale epoch, SPI collision), then one ``Txn`` that
compares exactly what was read and applies every put/delete only if nothing
changed; a lost race is re-read and re-checked.  A write that stores or
deletes IKE SAs also reads (and pins, by ``mod_revision``) their stored
records, whose CHILD SA SPIs say which ``ike_child`` keys to delete.
Retrying a write whose answer was lost (a member died) is safe: the same
write compares equal again and rewrites the same values.
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import http.client
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from appliance.store import base as store
from appliance.store.base import (
    MAX_CURSOR_LEN,
    Batch,
    ChangePage,
    IkeSaRecord,
    IkeSpis,
    Page,
    PolicyRecord,
    SaKey,
    SaLookup,
    SaRecord,
    SaStore,
    ServerStats,
    StoreStats,
    StoreSummary,
    check_batch,
    check_changes_held,
    check_epoch,
    check_epoch_raise,
    check_revision,
    check_server_id,
)
from appliance.store.etcd_history import HistoryReader, HistoryUnavailable

log = logging.getLogger("appliance.store.etcd")

SCHEMA_KEY = "/ipsec-ha/schema"
SCHEMA_VERSION = 1
PREFIX = "/ipsec-ha/v1/"

#: How often a write is retried after losing a race (another writer changed a compared key).
_MAX_RACE_RETRIES = 16
#: Ranges per read transaction when fetching many keys (etcd's default --max-txn-ops is 128).
_READ_CHUNK = 100
#: Bytes of one watch answer (etcd sends a revision's events whole); longer is refused.
_MAX_WATCH_LINE = 64 << 20
#: Removal markers forgotten per transaction (two operations each, within --max-txn-ops 128).
_FORGET_CHUNK = 60

Json = dict[str, Any]


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s: str | None) -> bytes:
    return base64.b64decode(s) if s else b""


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


def _sa_path(key: SaKey) -> str:
    return f"{key.proto:03d}/{key.dst}/{key.spi:08x}"


def _sa_from_path(path: str) -> SaKey:
    proto, dst, spi = path.split("/")
    return SaKey(int(spi, 16), dst, int(proto))


def _owner_key(key: SaKey) -> str:
    return f"{PREFIX}sa/{_sa_path(key)}"


def _epoch_key(server_id: str) -> str:
    return f"{PREFIX}epoch/{server_id}"


def _server_prefix(server_id: str) -> str:
    return f"{PREFIX}server/{server_id}/"


def _revision_key(server_id: str) -> str:
    return f"{_server_prefix(server_id)}revision"


def _horizon_key(server_id: str) -> str:
    return f"{_server_prefix(server_id)}horizon"


def _ike_path(spis: IkeSpis) -> str:
    return f"{spis[0]:016x}{spis[1]:016x}"


def _ike_from_path(path: str) -> IkeSpis:
    return int(path[:16], 16), int(path[16:], 16)


def _ike_child_key(server_id: str, child_spi: int, spis: IkeSpis) -> str:
    return f"{_server_prefix(server_id)}ike_child/{child_spi:08x}/{_ike_path(spis)}"


#: Where each phase of a page walk reads under a server's prefix, by its cursor tag.  A
#: cursor is the tag and the last entry returned (SA path, raw policy ID, the 16 bytes
#: of an IKE SA's SPIs); the tag alone starts that phase.  A state walk has phases S, P
#: and I; a change walk all six (the tags of removals are those of
#: :meth:`~appliance.store.base.SaStore.removed_sa_cursor` and its siblings).
_PHASE_KEYS = {
    b"S": "sa/",
    b"P": "policy/",
    b"I": "ike/",
    b"RS": "removed/sa/",
    b"RP": "removed/policy/",
    b"RI": "removed/ike/",
}
_STATE_PHASES = (b"S", b"P", b"I")
#: What :class:`~appliance.store.base.ServerStats` counts: SAs, policies, IKE SAs.
_COUNTED = ("sa/", "policy/", "ike/")
_CHANGE_PHASES = (b"S", b"P", b"I", b"RS", b"RP", b"RI")
#: Phases whose cursor holds raw bytes, and whose key suffix is their hex.
_HEX_PHASES = (b"P", b"RP", b"I", b"RI")
_IKE_PHASES = (b"I", b"RI")
#: The phase of the entries that each removal phase's markers name.
_REMOVAL_PHASES = {b"RS": b"S", b"RP": b"P", b"RI": b"I"}


def _encode_cursor(tag: bytes, suffix: str) -> bytes:
    return tag + (bytes.fromhex(suffix) if tag in _HEX_PHASES else suffix.encode())


def _decode_cursor(cursor: bytes, tags: tuple[bytes, ...]) -> tuple[bytes, str]:
    """The phase and the key suffix a walk resumes after ("": the phase's start)."""
    tag = cursor[:2] if cursor[:1] == b"R" else cursor[:1]
    rest = cursor[len(tag) :]
    try:
        if len(cursor) > MAX_CURSOR_LEN or tag not in tags:
            raise ValueError
        if tag in _IKE_PHASES and len(rest) not in (0, 16):
            raise ValueError
        if tag in _HEX_PHASES:
            return tag, rest.hex()
        suffix = rest.decode("ascii")
        if suffix:
            _sa_from_path(suffix)
        return tag, suffix
    except ValueError:
        raise store.InvalidRequestError("malformed page cursor") from None


def _sa_record(key: SaKey, raw: bytes, replay: bytes | None) -> SaRecord:
    # An "ike_sa" field (values written before IKE SAs had their own keys) is ignored.
    rec = json.loads(raw)
    return SaRecord(
        key, _unb64(rec["entry"]), tuple(bytes.fromhex(h) for h in rec["policies"]), replay
    )


def _ike_value(ike: IkeSaRecord) -> str:
    return json.dumps(
        {"children": list(ike.child_spis), "record": _b64(ike.record)}, separators=(",", ":")
    )


def _ike_record(path: str, raw: bytes) -> IkeSaRecord:
    rec = json.loads(raw)
    return IkeSaRecord(_ike_from_path(path), tuple(rec["children"]), _unb64(rec["record"]))


def _put(key: str, value: str | bytes) -> Json:
    return {"request_put": {"key": _b64(key), "value": _b64(value)}}


def _delete(key: str) -> Json:
    return {"request_delete_range": {"key": _b64(key)}}


def _range(key: str, range_end: str | None = None, **extra: Any) -> Json:
    req: Json = {"key": _b64(key), **extra}
    if range_end is not None:
        req["range_end"] = _b64(range_end)
    return {"request_range": req}


def _value_equals(key: str, value: str) -> Json:
    return {"target": "VALUE", "key": _b64(key), "result": "EQUAL", "value": _b64(value)}


def _absent(key: str) -> Json:
    return {"target": "CREATE", "key": _b64(key), "result": "EQUAL", "create_revision": "0"}


def _present(key: str) -> Json:
    return {"target": "CREATE", "key": _b64(key), "result": "GREATER", "create_revision": "0"}


def _unmodified(key: str, mod_revision: int) -> Json:
    return {"target": "MOD", "key": _b64(key), "result": "EQUAL", "mod_revision": str(mod_revision)}


def _kvs(resp: Json) -> list[tuple[str, bytes]]:
    return [(_unb64(kv["key"]).decode(), _unb64(kv.get("value"))) for kv in resp.get("kvs", [])]


_AUTH_PATH = "/v3/auth/authenticate"


def client_tls(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """The TLS context for ``https`` endpoints: the CA to trust, and our certificate if any."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise store.StoreUnavailableError(
                f"etcd client certificate {cert_file} with key {key_file}: "
                f"{getattr(exc, 'reason', None) or exc.strerror or exc}"
            ) from None
    return context


class EtcdClient:
    """A minimal etcd v3 JSON-gateway client with endpoint failover and retries.

    ``tls`` is used for ``https`` endpoints (:func:`client_tls`; a client
    certificate answers etcd's ``--client-cert-auth``).  With ``user`` and
    ``password`` it authenticates (``/v3/auth/authenticate``) and sends the
    token in the ``Authorization`` header, authenticating again when etcd
    says the token is no longer valid.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 5.0,
        retry_for: float = 15.0,
        tls: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise store.InvalidRequestError("etcd backend needs at least one endpoint")
        self._endpoints = [urllib.parse.urlsplit(e) for e in endpoints]
        for raw, url in zip(endpoints, self._endpoints, strict=True):
            if url.scheme not in ("http", "https") or not url.hostname:
                raise store.InvalidRequestError(f"etcd endpoint {raw!r} must be http://HOST:PORT")
        self._timeout = timeout
        self._retry_for = retry_for
        self._ssl = tls if tls is not None else client_tls()
        if (user is None) != (password is None):
            raise store.InvalidRequestError("etcd authentication needs both a user and a password")
        self._user = user
        self._password = password
        self._token: str | None = None
        self._current = 0
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = self._new_connection()
        return self._conn

    def _new_connection(self) -> http.client.HTTPConnection:
        """A connection to the current endpoint (not yet opened)."""
        url = self._endpoints[self._current]
        port = url.port or 2379
        if url.scheme == "https":
            return http.client.HTTPSConnection(
                str(url.hostname), port, timeout=self._timeout, context=self._ssl
            )
        return http.client.HTTPConnection(str(url.hostname), port, timeout=self._timeout)

    def _fail_over(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._current = (self._current + 1) % len(self._endpoints)

    def _authenticate(self) -> str:
        assert self._user is not None
        answer = self.call(_AUTH_PATH, {"name": self._user, "password": self._password})
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise store.StoreUnavailableError(f"etcd gave user {self._user} no auth token")
        return token

    def _auth_error(self, message: str) -> store.StoreError | None:
        """A clear error for an authentication or permission refusal (retrying cannot help)."""
        where = f"etcd {self._endpoints[self._current].netloc}"
        if "authentication failed" in message:
            return store.StoreUnavailableError(
                f"{where} refused user {self._user}: {message} "
                "(check [store.etcd] user and password_file)"
            )
        if "user name is empty" in message or "user name not found" in message:
            return store.StoreUnavailableError(
                f"{where} requires authentication ({message}); "
                "set [store.etcd] user and password_file"
            )
        if "CommonName of client" in message:
            return store.StoreUnavailableError(
                f"{where} refuses a client certificate with a Common Name when authentication "
                "is on ({message}); issue [store.etcd] cert_file without one"
            )
        if "permission denied" in message:
            return store.StoreUnavailableError(
                f"{where}: user {self._user} may not do this ({message}); grant it a role "
                f"with readwrite on the prefix {SCHEMA_KEY.rsplit('/', 1)[0]}/"
            )
        return None

    def call(self, path: str, body: Json) -> Json:
        """POST ``body`` to ``path``; on a dead member or no leader, try others until deadline."""
        data = json.dumps(body).encode()
        deadline = time.monotonic() + self._retry_for
        delay = 0.05
        last = "no attempt"
        tls_failures = 0
        reauthenticated = False
        while True:
            headers = self._headers(path)
            try:
                conn = self._connect()
                conn.request("POST", path, data, headers)
                resp = conn.getresponse()
                payload = resp.read()
                status = resp.status
            except ssl.SSLError as exc:
                # Certificates do not fix themselves: give up once every member refused.
                netloc = self._endpoints[self._current].netloc
                last = f"{netloc}: TLS failed ({exc.reason or exc})"
                self._fail_over()
                tls_failures += 1
                if tls_failures >= len(self._endpoints):
                    raise store.StoreUnavailableError(
                        f"etcd {last}; check [store.etcd] ca_file, cert_file and key_file"
                    ) from None
            except (OSError, http.client.HTTPException) as exc:
                last = f"{self._endpoints[self._current].netloc}: {exc or type(exc).__name__}"
                self._fail_over()
            else:
                try:
                    answer: Json = json.loads(payload) if payload else {}
                except ValueError:
                    answer = {"error": payload[:200].decode(errors="replace")}
                if status == 200:
                    return answer
                message = str(answer.get("message") or answer.get("error") or status)
                if "invalid auth token" in message and self._user is not None:
                    if reauthenticated:
                        raise store.StoreUnavailableError(
                            f"etcd keeps refusing the auth token of user {self._user} ({message})"
                        )
                    self._token = None  # expired (or etcd restarted): authenticate again
                    reauthenticated = True
                    continue
                auth_error = self._auth_error(message)
                if auth_error is not None:
                    raise auth_error
                if "too many operations" in message or "request is too large" in message:
                    raise store.StoreUnavailableError(
                        f"etcd refused the transaction ({message}); start etcd with larger "
                        "--max-txn-ops / --max-request-bytes (see docs/store.md)"
                    )
                if status in (400, 404) and "leader" not in message:
                    raise store.StoreError(f"etcd rejected {path}: {message}")
                last = f"{self._endpoints[self._current].netloc}: {message}"
                self._fail_over()
            if time.monotonic() >= deadline:
                raise store.StoreUnavailableError(f"etcd unavailable ({last})")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def txn(
        self, compare: list[Json], success: list[Json], failure: list[Json] | None = None
    ) -> Json:
        return self.call(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []}
        )

    def range(self, key: str, range_end: str | None = None, **extra: Any) -> Json:
        return self.call("/v3/kv/range", _range(key, range_end, **extra)["request_range"])

    def get_many(
        self, keys: Iterable[str], revision: int = 0, keys_only: bool = False
    ) -> dict[str, bytes]:
        """The values of ``keys`` (absent ones left out), read in chunked transactions.

        ``keys_only``: which keys exist (every value empty).
        """
        return {
            _unb64(kv["key"]).decode(): _unb64(kv.get("value"))
            for kv in self.get_kvs(keys, revision, keys_only)
        }

    def get_kvs(
        self, keys: Iterable[str], revision: int = 0, keys_only: bool = False
    ) -> list[Json]:
        """As :meth:`get_many`, but etcd's key-values (with their ``mod_revision``)."""
        out: list[Json] = []
        keys = list(keys)
        extra: dict[str, Any] = {"revision": str(revision)} if revision else {}
        if keys_only:
            extra["keys_only"] = True
        for i in range(0, len(keys), _READ_CHUNK):
            resp = self.txn([], [_range(k, **extra) for k in keys[i : i + _READ_CHUNK]])
            for r in resp.get("responses", []):
                out.extend(r["response_range"].get("kvs", []))
        return out

    def _headers(self, path: str) -> dict[str, str]:
        """A request's headers: with the auth token (taken first if we have none yet), except
        on the authentication call itself."""
        headers = {"Content-Type": "application/json"}
        if path == _AUTH_PATH:
            return headers
        if self._user is not None and self._token is None:
            self._token = self._authenticate()
        if self._token is not None:
            headers["Authorization"] = self._token
        return headers

    def history(self, key: str, range_end: str, since: int, until: int) -> dict[str, bool]:
        """The keys in ``[key, range_end)`` modified after revision ``since``, up to ``until``,
        each with whether it exists at ``until``.

        Read from etcd's own history with a watch that starts at ``since + 1``
        (``etcd_history``), on a connection of its own that is closed after.
        One attempt, on the current endpoint: any failure is
        ``HistoryUnavailable`` (the caller has another way).
        """
        reader = HistoryReader(since, until)
        body = {
            "create_request": {
                "key": _b64(key),
                "range_end": _b64(range_end),
                "start_revision": str(since + 1),
            }
        }
        conn = self._new_connection()  # the watch holds it until closed
        try:
            headers = self._headers("/v3/watch")
            conn.request("POST", "/v3/watch", json.dumps(body).encode(), headers)
            resp = conn.getresponse()
            if resp.status != 200:
                raise HistoryUnavailable(f"etcd answered the watch with HTTP {resp.status}")
            while True:
                line = resp.readline(_MAX_WATCH_LINE)
                if not line:
                    raise HistoryUnavailable(f"etcd ended the watch before revision {until}")
                if reader.feed(line):
                    break
        except (OSError, http.client.HTTPException) as exc:
            raise HistoryUnavailable(f"etcd's watch: {exc or type(exc).__name__}") from None
        except store.StoreError as exc:
            raise HistoryUnavailable(str(exc)) from None
        finally:
            conn.close()
        return {k.decode(errors="replace"): put for k, put in reader.touched.items()}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class EtcdStore(SaStore):
    """The SA store as keys in etcd (see the module docstring for the layout)."""

    backend_name = "etcd"
    watch_history = True
    """Read the change feed from etcd's history with a watch (False: walk the ranges)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 5.0,
        retry_for: float = 15.0,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        tls = client_tls(ca_file, cert_file, key_file)
        self._etcd = EtcdClient(endpoints, timeout, retry_for, tls, user, password)
        self._walk: tuple[tuple[str, int, int], dict[bytes, list[str]]] | None = None
        """The last history walk (``_history_walk``) and what it was for."""
        try:
            self._check_schema()
        except BaseException:
            self._etcd.close()
            raise

    def _check_schema(self) -> None:
        resp = self._etcd.txn(
            [_absent(SCHEMA_KEY)],
            [_put(SCHEMA_KEY, str(SCHEMA_VERSION))],
            [_range(SCHEMA_KEY)],
        )
        if resp.get("succeeded"):
            return
        (_, raw), *_ = _kvs(resp["responses"][0]["response_range"])
        try:
            version = int(raw)
        except ValueError:
            raise store.SchemaVersionError(f"etcd key {SCHEMA_KEY} holds {raw[:20]!r}") from None
        if version > SCHEMA_VERSION:
            raise store.SchemaVersionError(
                f"etcd store has layout version {version}, newer than this ipsec-ha knows "
                f"({SCHEMA_VERSION}); upgrade ipsec-ha"
            )

    # -- helpers ----------------------------------------------------------------

    def _read_state(
        self,
        server_id: str,
        keys: Sequence[SaKey],
        policy_ids: Sequence[bytes],
        ike_spis: Sequence[IkeSpis] = (),
    ) -> tuple[int | None, dict[SaKey, str], set[bytes], dict[IkeSpis, tuple[int, IkeSaRecord]]]:
        """The epoch, the owners of ``keys``, which of ``policy_ids`` the server has, and
        its stored IKE SAs of ``ike_spis`` with their ``mod_revision`` (to pin them)."""
        prefix = _server_prefix(server_id)
        kvs = self._etcd.get_kvs(
            [
                _epoch_key(server_id),
                *(_owner_key(k) for k in keys),
                *(f"{prefix}policy/{p.hex()}" for p in policy_ids),
                *(f"{prefix}ike/{_ike_path(s)}" for s in ike_spis),
            ]
        )
        values = {_unb64(kv["key"]).decode(): kv for kv in kvs}

        def value(key: str) -> bytes:
            return _unb64(values[key].get("value"))

        epoch = int(value(_epoch_key(server_id))) if _epoch_key(server_id) in values else None
        owners = {k: value(_owner_key(k)).decode() for k in keys if _owner_key(k) in values}
        present = {p for p in policy_ids if f"{prefix}policy/{p.hex()}" in values}
        ikes = {}
        for spis in ike_spis:
            key = f"{prefix}ike/{_ike_path(spis)}"
            if key in values:
                rec = _ike_record(_ike_path(spis), value(key))
                ikes[spis] = (int(values[key]["mod_revision"]), rec)
        return epoch, owners, present, ikes

    def _epoch_guard(
        self, server_id: str, current: int | None, epoch: int
    ) -> tuple[list[Json], list[Json]]:
        """Compares that pin the epoch we read, and the put that raises it if needed."""
        if current is not None and epoch < current:
            raise store.StaleEpochError(
                f"server {server_id}: write with epoch {epoch} refused, "
                f"the current epoch is {current} (another node took over)",
                current,
            )
        check_epoch_raise(server_id, current or 0, epoch)
        key = _epoch_key(server_id)
        compare = [_absent(key) if current is None else _value_equals(key, str(current))]
        ops = [] if current == epoch else [_put(key, str(epoch))]
        return compare, ops

    def _owner_guard(
        self, server_id: str, keys: Sequence[SaKey], owners: dict[SaKey, str], verb: str
    ) -> list[Json]:
        compare = []
        for k in keys:
            owner = owners.get(k)
            if owner is None:
                compare.append(_absent(_owner_key(k)))
            elif owner != server_id:
                raise store.SpiCollisionError(
                    f"SA {k} belongs to server {owner}, not {server_id}: "
                    + ("SPI collisions must not occur" if verb == "put" else "cannot delete it"),
                    k,
                )
            else:
                compare.append(_value_equals(_owner_key(k), server_id))
        return compare

    # -- interface ----------------------------------------------------------------

    def epoch(self, server_id: str) -> int:
        check_server_id(server_id)
        kvs = _kvs(self._etcd.range(_epoch_key(server_id)))
        return int(kvs[0][1]) if kvs else 0

    def claim(self, server_id: str, epoch: int | None = None) -> int:
        check_server_id(server_id)
        if epoch is not None:
            check_epoch(epoch)
        key = _epoch_key(server_id)
        for _ in range(_MAX_RACE_RETRIES):
            kvs = _kvs(self._etcd.range(key))
            current = int(kvs[0][1]) if kvs else None
            new = (current or 0) + 1 if epoch is None else epoch
            check_epoch_raise(server_id, current or 0, new)
            if current is not None and new <= current:
                raise store.StaleEpochError(
                    f"server {server_id}: claim of epoch {new} refused, "
                    f"the current epoch is already {current}",
                    current,
                )
            guard = _absent(key) if current is None else _value_equals(key, str(current))
            if self._etcd.txn([guard], [_put(key, str(new))]).get("succeeded"):
                return new
        raise store.StoreUnavailableError(f"server {server_id}: epoch claim kept losing races")

    def apply(self, server_id: str, epoch: int, batch: Batch) -> None:
        check_server_id(server_id)
        check_epoch(epoch)
        check_batch(batch)
        prefix = _server_prefix(server_id)
        delete_sas = list(dict.fromkeys(batch.delete_sas))
        delete_pids = list(dict.fromkeys(batch.delete_policies))
        put_keys = [sa.key for sa in batch.puts]
        replay_keys = [k for k, _ in batch.replay]
        delete_ikes = list(dict.fromkeys(batch.delete_ike_sas))
        ike_spis = delete_ikes + [ike.spis for ike in batch.ike_sas]
        for _ in range(_MAX_RACE_RETRIES):
            current, owners, present_pids, stored_ikes = self._read_state(
                server_id, put_keys + delete_sas + replay_keys, delete_pids, ike_spis
            )
            compare, ops = self._epoch_guard(server_id, current, epoch)
            compare += self._owner_guard(server_id, put_keys, owners, "put")
            compare += self._owner_guard(server_id, delete_sas, owners, "delete")
            for k in replay_keys:
                if owners.get(k) != server_id:
                    raise store.NotFoundError(f"SA {k} of server {server_id} is not in the store")
                compare.append(_value_equals(_owner_key(k), server_id))
            removals = 0
            for k in delete_sas:
                path = _sa_path(k)
                ops += [
                    _delete(_owner_key(k)),
                    _delete(f"{prefix}sa/{path}"),
                    _delete(f"{prefix}replay/{path}"),
                ]
                if owners.get(k) == server_id:
                    ops.append(_put(f"{prefix}removed/sa/{path}", str(epoch)))
                    removals += 1
            # The marker depends on the policy existing: pin what was read.
            for pid in delete_pids:
                key = f"{prefix}policy/{pid.hex()}"
                if pid in present_pids:
                    compare.append(_present(key))
                    ops += [_delete(key), _put(f"{prefix}removed/policy/{pid.hex()}", str(epoch))]
                    removals += 1
                else:
                    compare.append(_absent(key))
            ike_compare, ike_ops, ike_removals = self._ike_writes(
                server_id, epoch, batch, delete_ikes, stored_ikes
            )
            compare += ike_compare
            ops += ike_ops
            removals += ike_removals
            pols: dict[bytes, bytes] = {p.policy_id: p.entry for p in batch.policies}
            for sa in batch.puts:
                path = _sa_path(sa.key)
                record = {
                    "entry": _b64(sa.entry),
                    "policies": [p.policy_id.hex() for p in sa.policies],
                }
                ops.append(_put(_owner_key(sa.key), server_id))
                ops.append(_put(f"{prefix}sa/{path}", json.dumps(record, separators=(",", ":"))))
                # Always with the record: a change walk takes the replay state from there.
                if sa.replay is None:
                    ops.append(_delete(f"{prefix}replay/{path}"))
                else:
                    ops.append(_put(f"{prefix}replay/{path}", sa.replay))
                pols.update((p.policy_id, p.entry) for p in sa.policies)
            ops += [_put(f"{prefix}policy/{pid.hex()}", entry) for pid, entry in pols.items()]
            ops += [_put(f"{prefix}replay/{_sa_path(k)}", r) for k, r in batch.replay]
            if batch.puts or pols or batch.replay or batch.ike_sas or removals:
                ops.append(_put(_revision_key(server_id), str(epoch)))
            if removals:
                # Last, so that it counts this write's markers too.
                ops.append(
                    _range(f"{prefix}removed/", _prefix_end(f"{prefix}removed/"), count_only=True)
                )
            resp = self._etcd.txn(compare, ops)
            if resp.get("succeeded"):
                if removals:
                    counted = resp["responses"][-1]["response_range"].get("count", 0)
                    if int(counted) > self.removal_history:
                        self._forget_removals(server_id)
                return
        raise store.StoreUnavailableError(f"server {server_id}: write kept losing races")

    def _ike_writes(
        self,
        server_id: str,
        epoch: int,
        batch: Batch,
        delete_ikes: Sequence[IkeSpis],
        stored: dict[IkeSpis, tuple[int, IkeSaRecord]],
    ) -> tuple[list[Json], list[Json], int]:
        """The compares, operations and removal count of a batch's IKE SA deletes and puts.

        Each IKE SA read is pinned (its ``mod_revision``, or its absence): its
        stored CHILD SA SPIs say which ``ike_child`` keys go.  An index key both
        stored and wanted is left alone (etcd refuses a key twice in one txn).
        """
        prefix = _server_prefix(server_id)
        compare: list[Json] = []
        ops: list[Json] = []
        removals = 0
        changes: list[tuple[IkeSpis, IkeSaRecord | None]] = [(s, None) for s in delete_ikes]
        changes += [(ike.spis, ike) for ike in batch.ike_sas]
        for spis, new in changes:
            key = f"{prefix}ike/{_ike_path(spis)}"
            old = stored.get(spis)
            if old is None:
                compare.append(_absent(key))
                if new is None:
                    continue  # deleting an absent IKE SA changes nothing
                old_children: set[int] = set()
            else:
                compare.append(_unmodified(key, old[0]))
                old_children = set(old[1].child_spis)
            new_children = set() if new is None else set(new.child_spis)
            ops += [
                _delete(_ike_child_key(server_id, c, spis))
                for c in sorted(old_children - new_children)
            ]
            ops += [
                _put(_ike_child_key(server_id, c, spis), "")
                for c in sorted(new_children - old_children)
            ]
            if new is None:
                ops += [_delete(key), _put(f"{prefix}removed/ike/{_ike_path(spis)}", str(epoch))]
                removals += 1
            else:
                ops.append(_put(key, _ike_value(new)))
        return compare, ops, removals

    def _forget_removals(self, server_id: str) -> None:
        """Delete the oldest removal markers beyond :attr:`removal_history`, raising the horizon.

        Only history is lost: after repeated races (another writer, a marker rewritten)
        it stops, and the next write that removes something tries again.
        """
        base = f"{_server_prefix(server_id)}removed/"
        horizon_key = _horizon_key(server_id)
        races = 0
        while races < _MAX_RACE_RETRIES:
            read = self._etcd.txn(
                [],
                [
                    _range(base, _prefix_end(base), count_only=True),
                    _range(horizon_key),
                    _range(
                        base,
                        _prefix_end(base),
                        keys_only=True,
                        sort_target="MOD",
                        sort_order="ASCEND",
                        limit=str(_FORGET_CHUNK),
                    ),
                ],
            )["responses"]
            counted, horizon_resp, oldest_resp = (r["response_range"] for r in read)
            excess = int(counted.get("count", 0)) - self.removal_history
            oldest = [
                (_unb64(kv["key"]).decode(), int(kv["mod_revision"]))
                for kv in oldest_resp.get("kvs", [])[: max(0, excess)]
            ]
            if not oldest:
                return
            horizon = _kvs(horizon_resp)
            old = horizon[0][1].decode() if horizon else None
            new = max([int(old or 0)] + [mod for _, mod in oldest])
            compare = [_absent(horizon_key) if old is None else _value_equals(horizon_key, old)]
            compare += [_unmodified(key, mod) for key, mod in oldest]
            ops = [_delete(key) for key, _ in oldest] + [_put(horizon_key, str(new))]
            if not self._etcd.txn(compare, ops).get("succeeded"):
                races += 1

    def keys_for_spi(self, server_id: str, spi: int, proto: int) -> list[SaKey]:
        base = f"{_server_prefix(server_id)}sa/{proto:03d}/"
        resp = self._etcd.range(base, _prefix_end(base), keys_only=True)
        keys = [_sa_from_path(k[len(_server_prefix(server_id)) + 3 :]) for k, _ in _kvs(resp)]
        return [k for k in keys if k.spi == spi]

    def sa_cursor(self, key: SaKey) -> bytes:
        return b"S" + _sa_path(key).encode()

    def policy_cursor(self, policy_id: bytes) -> bytes:
        return b"P" + policy_id

    def ike_sa_cursor(self, spis: IkeSpis) -> bytes:
        return b"I" + spis[0].to_bytes(8, "big") + spis[1].to_bytes(8, "big")

    def _head(self, server_id: str) -> tuple[int, int, int, int]:
        """What a page is answered at: the etcd revision, the epoch, the revision, the horizon."""
        resp = self._etcd.txn(
            [],
            [
                _range(_epoch_key(server_id)),
                _range(_revision_key(server_id)),
                _range(_horizon_key(server_id)),
            ],
        )
        epoch, revision, horizon = (r["response_range"].get("kvs", []) for r in resp["responses"])
        return (
            int(resp["header"]["revision"]),
            int(_unb64(epoch[0].get("value"))) if epoch else 0,
            int(revision[0]["mod_revision"]) if revision else 0,
            int(_unb64(horizon[0].get("value"))) if horizon else 0,
        )

    def revision(self, server_id: str) -> int:
        check_server_id(server_id)
        kvs = self._etcd.range(_revision_key(server_id), keys_only=True).get("kvs", [])
        return int(kvs[0]["mod_revision"]) if kvs else 0

    def get_page(self, server_id: str, cursor: bytes | None = None, limit: int = 256) -> Page:
        check_server_id(server_id)
        if not 0 < limit <= 10_000:
            raise store.InvalidRequestError("page limit must be 1..10000")
        prefix = _server_prefix(server_id)
        phase, after = (b"S", "") if cursor is None else _decode_cursor(cursor, _STATE_PHASES)
        revision, epoch, server_revision, _ = self._head(server_id)
        at = {"revision": str(revision)}
        found: dict[bytes, list[tuple[str, bytes]]] = {tag: [] for tag in _STATE_PHASES}
        next_cursor: bytes | None = None
        for tag in _STATE_PHASES[_STATE_PHASES.index(phase) :]:
            if limit == 0:
                next_cursor = tag
                break
            base = prefix + _PHASE_KEYS[tag]
            start = base + after + "\x00" if after else base
            resp = self._etcd.range(start, _prefix_end(base), limit=str(limit), **at)
            found[tag] = [(key[len(base) :], value) for key, value in _kvs(resp)]
            if resp.get("more") and found[tag]:
                next_cursor = _encode_cursor(tag, found[tag][-1][0])
                break
            after, limit = "", limit - len(found[tag])
        sas: list[SaRecord] = []
        if found[b"S"]:
            rbase = f"{prefix}replay/"
            first, last = found[b"S"][0][0], found[b"S"][-1][0]
            replays = dict(_kvs(self._etcd.range(rbase + first, rbase + last + "\x00", **at)))
            for path, raw in found[b"S"]:
                sas.append(_sa_record(_sa_from_path(path), raw, replays.get(rbase + path)))
        return Page(
            epoch,
            tuple(sas),
            tuple(PolicyRecord(bytes.fromhex(h), v) for h, v in found[b"P"]),
            next_cursor,
            server_revision,
            tuple(_ike_record(h, v) for h, v in found[b"I"]),
        )

    def get_changes(
        self, server_id: str, since: int, cursor: bytes | None = None, limit: int = 256
    ) -> ChangePage:
        check_server_id(server_id)
        check_revision(since)
        if not 0 < limit <= 10_000:
            raise store.InvalidRequestError("page limit must be 1..10000")
        phase, after = (b"S", "") if cursor is None else _decode_cursor(cursor, _CHANGE_PHASES)
        at, epoch, revision, horizon = self._head(server_id)
        check_changes_held(server_id, since, revision, horizon)
        found: dict[bytes, list[str]] = {tag: [] for tag in _CHANGE_PHASES}
        values: dict[str, bytes] = {}
        next_cursor: bytes | None = None
        phases = _CHANGE_PHASES[_CHANGE_PHASES.index(phase) :]
        if since == 0:
            # The changes since 0 are the whole state: nobody holds an IKE SA of revision 0
            # (every IKE write raises the revision).  SA and policy markers stay: a follower
            # of a keyspace older than the change feed holds its state of revision 0.
            phases = tuple(tag for tag in phases if tag != b"RI")
        walk = self._history_walk(server_id, since, revision) if 0 < since < revision else None
        if walk is not None:
            for tag in phases:
                if limit == 0:
                    next_cursor = tag
                    break
                names = walk[tag]
                start = bisect.bisect_right(names, after) if after else 0
                found[tag] = names[start : start + limit]
                if start + limit < len(names):
                    next_cursor = _encode_cursor(tag, found[tag][-1])
                    break
                after, limit = "", limit - len(found[tag])
            prefix = _server_prefix(server_id)
            values.update(
                self._etcd.get_many(
                    [f"{prefix}{kind}/{p}" for p in found[b"S"] for kind in ("sa", "replay")]
                    + [f"{prefix}policy/{h}" for h in found[b"P"]]
                    + [f"{prefix}ike/{h}" for h in found[b"I"]],
                    at,
                )
            )
        # Nothing under the prefix is newer than the revision key (0: maybe a keyspace older
        # than the change feed, so look).
        elif since < revision or revision == 0:
            for tag in phases:
                if limit == 0:
                    next_cursor = tag
                    break
                found[tag], resume = self._changed_after(
                    server_id, tag, after, since, at, limit, values
                )
                if resume is not None:
                    next_cursor = _encode_cursor(tag, resume)
                    break
                after, limit = "", limit - len(found[tag])
        prefix = _server_prefix(server_id)
        # An SA whose replay state alone changed: its record was not in the changed keys.
        values.update(
            self._etcd.get_many(
                [f"{prefix}sa/{p}" for p in found[b"S"] if f"{prefix}sa/{p}" not in values], at
            )
        )
        sas = tuple(
            _sa_record(
                _sa_from_path(p), values[f"{prefix}sa/{p}"], values.get(f"{prefix}replay/{p}")
            )
            for p in found[b"S"]
            if f"{prefix}sa/{p}" in values  # (a replay state alone: not an SA)
        )
        return ChangePage(
            epoch,
            revision,
            sas,
            tuple(
                PolicyRecord(bytes.fromhex(h), values[f"{prefix}policy/{h}"]) for h in found[b"P"]
            ),
            tuple(_sa_from_path(p) for p in found[b"RS"]),
            tuple(bytes.fromhex(h) for h in found[b"RP"]),
            next_cursor,
            tuple(
                _ike_record(h, values[f"{prefix}ike/{h}"])
                for h in found[b"I"]
                if f"{prefix}ike/{h}" in values
            ),
            tuple(_ike_from_path(h) for h in found[b"RI"]),
        )

    def _history_walk(
        self, server_id: str, since: int, revision: int
    ) -> dict[bytes, list[str]] | None:
        """What changed after ``since`` up to the server's ``revision``, from etcd's history:
        the key suffixes of each change phase, sorted; None when etcd cannot tell (then the
        ranges are walked).

        The pages of one walk (same ``since``, same ``revision``) share one watch.
        """
        if not self.watch_history:
            return None
        if self._walk is not None and self._walk[0] == (server_id, since, revision):
            return self._walk[1]
        prefix = _server_prefix(server_id)
        try:
            touched = self._etcd.history(prefix, _prefix_end(prefix), since, revision)
        except HistoryUnavailable as exc:
            log.info("change feed of %s since %d: %s; walking the ranges", server_id, since, exc)
            return None
        # Whether each entry of a phase (S, P, I) is there at ``revision``; other keys
        # (markers, the IKE SAs' CHILD SPI index, the revision) are no entries.
        entries: dict[bytes, dict[str, bool]] = {b"S": {}, b"P": {}, b"I": {}}
        for key, there in touched.items():
            kind, _, suffix = key[len(prefix) :].partition("/")
            if kind == "sa":
                entries[b"S"][suffix] = there
            elif kind == "replay":
                # Its SA's record is read; absent, it is skipped.
                entries[b"S"].setdefault(suffix, True)
            elif kind == "policy":
                entries[b"P"][suffix] = there
            elif kind == "ike":
                entries[b"I"][suffix] = there
        walk = {tag: sorted(k for k, there in entries[tag].items() if there) for tag in entries}
        walk.update(
            (removal, sorted(k for k, there in entries[tag].items() if not there))
            for removal, tag in _REMOVAL_PHASES.items()
        )
        self._walk = ((server_id, since, revision), walk)
        return walk

    def _changed_after(
        self,
        server_id: str,
        phase: bytes,
        after: str,
        since: int,
        at: int,
        want: int,
        values: dict[str, bytes],
    ) -> tuple[list[str], str | None]:
        """Up to ``want`` key suffixes of ``phase`` after ``after`` modified after ``since``.

        Read at etcd revision ``at``; the values read are added to ``values`` by key.
        Also gives the suffix to resume after if more may follow (else None).  An SA
        changed if its record or its replay state did; a removal marker counts if its
        entry is not stored.

        etcd filters by ``min_mod_revision`` after reading every key of the range, so a
        page costs a scan of the phase's keys after ``after``: cheap for the few pages
        of following a server, dear for a long walk in small pages.
        """
        prefix = _server_prefix(server_id)
        bases = [prefix + _PHASE_KEYS[phase]] + ([f"{prefix}replay/"] if phase == b"S" else [])
        ranges = [
            _range(
                base + after + "\x00" if after else base,
                _prefix_end(base),
                limit=str(want),
                revision=str(at),
                min_mod_revision=str(since + 1),
            )
            for base in bases
        ]
        changed: set[str] = set()
        more = False
        for base, resp in zip(bases, self._etcd.txn([], ranges)["responses"], strict=True):
            kvs = _kvs(resp["response_range"])
            values.update(kvs)
            changed.update(key[len(base) :] for key, _ in kvs)
            more = more or bool(resp["response_range"].get("more"))
        # A range that has more gave ``want`` keys: the first ``want`` of all are read in
        # every range, whatever the others gave past them.
        ordered = sorted(changed)
        resume = ordered[want - 1] if more or len(ordered) > want else None
        ordered = ordered[:want]
        if phase in _REMOVAL_PHASES and ordered:
            # A marker of an entry stored again: that is a change (phase S or P).
            entries = prefix + _PHASE_KEYS[_REMOVAL_PHASES[phase]]
            stored = self._etcd.get_many([entries + s for s in ordered], at, keys_only=True)
            ordered = [s for s in ordered if entries + s not in stored]
        return ordered, resume

    def get_by_spi(self, key: SaKey) -> SaLookup | None:
        resp = self._etcd.range(_owner_key(key))
        kvs = _kvs(resp)
        if not kvs:
            return None
        server_id = kvs[0][1].decode()
        revision = int(resp["header"]["revision"])
        at = str(revision)
        prefix = _server_prefix(server_id)
        path = _sa_path(key)
        # The IKE SA that names this SPI: the first key of the SPI's index prefix (one
        # range, whatever the number of IKE SAs), read with the SA itself.
        child = f"{prefix}ike_child/{key.spi:08x}/"
        read = self._etcd.txn(
            [],
            [
                _range(f"{prefix}sa/{path}", revision=at),
                _range(f"{prefix}replay/{path}", revision=at),
                _range(_epoch_key(server_id), revision=at),
                _range(child, _prefix_end(child), keys_only=True, limit="1", revision=at),
            ],
        )["responses"]
        sa_kv, replay_kv, epoch_kv, child_kv = (_kvs(r["response_range"]) for r in read)
        if not sa_kv:
            return None
        sa = _sa_record(key, sa_kv[0][1], replay_kv[0][1] if replay_kv else None)
        ike_path = child_kv[0][0][len(child) :] if child_kv else None
        ike_key = f"{prefix}ike/{ike_path}"
        values = self._etcd.get_many(
            [f"{prefix}policy/{p.hex()}" for p in sa.policy_ids]
            + ([ike_key] if ike_path is not None else []),
            revision,
        )
        pols = tuple(
            PolicyRecord(p, values[f"{prefix}policy/{p.hex()}"])
            for p in sorted(sa.policy_ids)
            if f"{prefix}policy/{p.hex()}" in values
        )
        # Only the policies still stored, in ID order.
        sa = dataclasses.replace(sa, policy_ids=tuple(p.policy_id for p in pols))
        ike = None
        if ike_path is not None and ike_key in values:
            ike = _ike_record(ike_path, values[ike_key])
        epoch = int(epoch_kv[0][1]) if epoch_kv else 0
        return SaLookup(server_id, epoch, sa, pols, ike)

    def stats(self) -> StoreStats:
        base = f"{PREFIX}epoch/"
        servers = []
        for key, raw in _kvs(self._etcd.range(base, _prefix_end(base))):
            sid = key[len(base) :]
            prefix = _server_prefix(sid)
            counts = self._etcd.txn(
                [],
                [
                    _range(f"{prefix}{kind}", _prefix_end(f"{prefix}{kind}"), count_only=True)
                    for kind in _COUNTED
                ],
            )["responses"]
            n_sa, n_pol, n_ike = (int(r["response_range"].get("count", 0)) for r in counts)
            servers.append(ServerStats(sid, int(raw), n_sa, n_pol, n_ike))
        return StoreStats(self.backend_name, tuple(servers), *self._size_and_term())

    def summary(self) -> StoreSummary:
        # Two requests whatever the number of server IDs (stats() costs one per server).
        base = f"{PREFIX}epoch/"
        counted = self._etcd.range(base, _prefix_end(base), count_only=True)
        return StoreSummary(self.backend_name, int(counted.get("count", 0)), *self._size_and_term())

    def _size_and_term(self) -> tuple[int, dict[str, int]]:
        """The database size and, as backend details, the raft term (etcd's status)."""
        status = self._etcd.call("/v3/maintenance/status", {})
        size = int(status.get("dbSize") or status.get("db_size") or 0)
        return size, {"raft_term": int(status.get("raftTerm") or status.get("raft_term") or 0)}

    def server_stats(self, start: int, limit: int) -> tuple[ServerStats, ...]:
        # One range for the epochs, then counts for this page's servers only (not for all).
        base = f"{PREFIX}epoch/"
        page = _kvs(self._etcd.range(base, _prefix_end(base)))[start : start + max(0, limit)]
        servers = []
        n = len(_COUNTED)
        for i in range(0, len(page), 32):  # 96 count ranges per txn: etcd's default allows 128
            chunk = [(key[len(base) :], int(raw)) for key, raw in page[i : i + 32]]
            ops = [
                _range(f"{p}{kind}", _prefix_end(f"{p}{kind}"), count_only=True)
                for p in (_server_prefix(sid) for sid, _ in chunk)
                for kind in _COUNTED
            ]
            counts = [
                int(r["response_range"].get("count", 0))
                for r in self._etcd.txn([], ops)["responses"]
            ]
            for j, (sid, epoch) in enumerate(chunk):
                servers.append(ServerStats(sid, epoch, *counts[n * j : n * j + n]))
        return tuple(servers)

    def close(self) -> None:
        self._etcd.close()
