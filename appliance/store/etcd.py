"""The etcd backend: the store as keys in an etcd v3 cluster.

We talk to etcd through its v3 JSON gateway (``POST /v3/kv/range``,
``/v3/kv/txn``, base64 keys and values) with :mod:`http.client`: no new
dependency, a persistent connection per endpoint, and the whole protocol we
need is four JSON calls.

Key layout (all under :data:`PREFIX`; ``<sa>`` is ``<proto:03d>/<dst>/<spi:08x>``)::

    /ipsec-ha/schema                          "1"  (the layout version)
    /ipsec-ha/v1/epoch/<server_id>            decimal owner epoch
    /ipsec-ha/v1/sa/<sa>                      owner server ID (the SPI index)
    /ipsec-ha/v1/server/<id>/sa/<sa>          JSON {entry, ike_sa, policies: [hex id]}
    /ipsec-ha/v1/server/<id>/replay/<sa>      latest replay state (raw bytes)
    /ipsec-ha/v1/server/<id>/policy/<hex id>  SPD entry (raw bytes)

Every write is one optimistic transaction: read the epoch and the owners of
the SA keys, check them (stale epoch, SPI collision), then one ``Txn`` that
compares exactly what was read and applies every put/delete only if nothing
changed; a lost race is re-read and re-checked.  Retrying a write whose
answer was lost (a member died) is safe: the same write compares equal again
and rewrites the same values.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from appliance.store import base as store
from appliance.store.base import (
    MAX_CURSOR_LEN,
    Batch,
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
    check_epoch,
    check_epoch_raise,
    check_server_id,
)

SCHEMA_KEY = "/ipsec-ha/schema"
SCHEMA_VERSION = 1
PREFIX = "/ipsec-ha/v1/"

#: How often a write is retried after losing a race (another writer changed a compared key).
_MAX_RACE_RETRIES = 16
#: Ranges per read transaction when fetching many keys (etcd's default --max-txn-ops is 128).
_READ_CHUNK = 100

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
            url = self._endpoints[self._current]
            port = url.port or 2379
            if url.scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    str(url.hostname), port, timeout=self._timeout, context=self._ssl
                )
            else:
                self._conn = http.client.HTTPConnection(
                    str(url.hostname), port, timeout=self._timeout
                )
        return self._conn

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
            if self._user is not None and self._token is None and path != _AUTH_PATH:
                self._token = self._authenticate()
            headers = {"Content-Type": "application/json"}
            if self._token is not None and path != _AUTH_PATH:
                headers["Authorization"] = self._token
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

    def get_many(self, keys: Iterable[str], revision: int = 0) -> dict[str, bytes]:
        """The values of ``keys`` (absent ones left out), read in chunked transactions."""
        out: dict[str, bytes] = {}
        keys = list(keys)
        extra = {"revision": str(revision)} if revision else {}
        for i in range(0, len(keys), _READ_CHUNK):
            resp = self.txn([], [_range(k, **extra) for k in keys[i : i + _READ_CHUNK]])
            for r in resp.get("responses", []):
                out.update(_kvs(r["response_range"]))
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class EtcdStore(SaStore):
    """The SA store as keys in etcd (see the module docstring for the layout)."""

    backend_name = "etcd"

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
        self, server_id: str, keys: Sequence[SaKey]
    ) -> tuple[int | None, dict[SaKey, str]]:
        values = self._etcd.get_many([_epoch_key(server_id), *(_owner_key(k) for k in keys)])
        raw_epoch = values.get(_epoch_key(server_id))
        epoch = None if raw_epoch is None else int(raw_epoch)
        owners = {k: values[_owner_key(k)].decode() for k in keys if _owner_key(k) in values}
        return epoch, owners

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
        put_keys = [sa.key for sa in batch.puts]
        replay_keys = [k for k, _ in batch.replay]
        for _ in range(_MAX_RACE_RETRIES):
            current, owners = self._read_state(server_id, put_keys + delete_sas + replay_keys)
            compare, ops = self._epoch_guard(server_id, current, epoch)
            compare += self._owner_guard(server_id, put_keys, owners, "put")
            compare += self._owner_guard(server_id, delete_sas, owners, "delete")
            for k in replay_keys:
                if owners.get(k) != server_id:
                    raise store.NotFoundError(f"SA {k} of server {server_id} is not in the store")
                compare.append(_value_equals(_owner_key(k), server_id))
            for k in delete_sas:
                path = _sa_path(k)
                ops += [
                    _delete(_owner_key(k)),
                    _delete(f"{prefix}sa/{path}"),
                    _delete(f"{prefix}replay/{path}"),
                ]
            ops += [
                _delete(f"{prefix}policy/{pid.hex()}")
                for pid in dict.fromkeys(batch.delete_policies)
            ]
            pols: dict[bytes, bytes] = {p.policy_id: p.entry for p in batch.policies}
            for sa in batch.puts:
                path = _sa_path(sa.key)
                record = {
                    "entry": _b64(sa.entry),
                    "ike_sa": None if sa.ike_sa is None else _b64(sa.ike_sa),
                    "policies": [p.policy_id.hex() for p in sa.policies],
                }
                ops.append(_put(_owner_key(sa.key), server_id))
                ops.append(_put(f"{prefix}sa/{path}", json.dumps(record, separators=(",", ":"))))
                if sa.replay is None:
                    ops.append(_delete(f"{prefix}replay/{path}"))
                else:
                    ops.append(_put(f"{prefix}replay/{path}", sa.replay))
                pols.update((p.policy_id, p.entry) for p in sa.policies)
            ops += [_put(f"{prefix}policy/{pid.hex()}", entry) for pid, entry in pols.items()]
            ops += [_put(f"{prefix}replay/{_sa_path(k)}", r) for k, r in batch.replay]
            if self._etcd.txn(compare, ops).get("succeeded"):
                return
        raise store.StoreUnavailableError(f"server {server_id}: write kept losing races")

    def keys_for_spi(self, server_id: str, spi: int, proto: int) -> list[SaKey]:
        base = f"{_server_prefix(server_id)}sa/{proto:03d}/"
        resp = self._etcd.range(base, _prefix_end(base), keys_only=True)
        keys = [_sa_from_path(k[len(_server_prefix(server_id)) + 3 :]) for k, _ in _kvs(resp)]
        return [k for k in keys if k.spi == spi]

    def sa_cursor(self, key: SaKey) -> bytes:
        return b"S" + _sa_path(key).encode()

    def policy_cursor(self, policy_id: bytes) -> bytes:
        return b"P" + policy_id

    def get_page(self, server_id: str, cursor: bytes | None = None, limit: int = 256) -> Page:
        check_server_id(server_id)
        if not 0 < limit <= 10_000:
            raise store.InvalidRequestError("page limit must be 1..10000")
        prefix = _server_prefix(server_id)
        # Cursors are compact (at most 64 bytes): "S" + SA path, or "P" + policy ID.
        phase, after = "sa", ""
        if cursor is not None:
            try:
                if len(cursor) > MAX_CURSOR_LEN or cursor[:1] not in (b"S", b"P"):
                    raise ValueError
                phase = "sa" if cursor[:1] == b"S" else "pol"
                after = cursor[1:].decode("ascii") if phase == "sa" else cursor[1:].hex()
                if phase == "sa":
                    _sa_from_path(after)
            except ValueError:
                raise store.InvalidRequestError("malformed page cursor") from None
        sas: list[SaRecord] = []
        revision = 0
        epoch_resp = self._etcd.range(_epoch_key(server_id))
        revision = int(epoch_resp["header"]["revision"])
        kv_epoch = _kvs(epoch_resp)
        epoch = int(kv_epoch[0][1]) if kv_epoch else 0
        at = {"revision": str(revision)}
        if phase == "sa":
            base = f"{prefix}sa/"
            start = base + after + "\x00" if after else base
            resp = self._etcd.range(start, _prefix_end(base), limit=str(limit), **at)
            rows = _kvs(resp)
            if rows:
                rbase = f"{prefix}replay/"
                first, last = rows[0][0][len(base) :], rows[-1][0][len(base) :]
                replays = dict(_kvs(self._etcd.range(rbase + first, rbase + last + "\x00", **at)))
                for key, raw in rows:
                    path = key[len(base) :]
                    rec = json.loads(raw)
                    sas.append(
                        SaRecord(
                            _sa_from_path(path),
                            _unb64(rec["entry"]),
                            tuple(bytes.fromhex(h) for h in rec["policies"]),
                            replays.get(rbase + path),
                            None if rec["ike_sa"] is None else _unb64(rec["ike_sa"]),
                        )
                    )
            if resp.get("more"):
                return Page(epoch, tuple(sas), (), b"S" + rows[-1][0][len(base) :].encode())
            phase, after, limit = "pol", "", limit - len(rows)
            if limit == 0:
                return Page(epoch, tuple(sas), (), b"P")
        base = f"{prefix}policy/"
        start = base + after + "\x00" if after else base
        resp = self._etcd.range(start, _prefix_end(base), limit=str(limit), **at)
        pols = tuple(PolicyRecord(bytes.fromhex(k[len(base) :]), v) for k, v in _kvs(resp))
        next_cursor = b"P" + pols[-1].policy_id if resp.get("more") and pols else None
        return Page(epoch, tuple(sas), pols, next_cursor)

    def get_by_spi(self, key: SaKey) -> SaLookup | None:
        resp = self._etcd.range(_owner_key(key))
        kvs = _kvs(resp)
        if not kvs:
            return None
        server_id = kvs[0][1].decode()
        revision = int(resp["header"]["revision"])
        prefix = _server_prefix(server_id)
        path = _sa_path(key)
        values = self._etcd.get_many(
            [f"{prefix}sa/{path}", f"{prefix}replay/{path}", _epoch_key(server_id)], revision
        )
        raw = values.get(f"{prefix}sa/{path}")
        if raw is None:
            return None
        rec = json.loads(raw)
        pids = [bytes.fromhex(h) for h in rec["policies"]]
        pvalues = self._etcd.get_many([f"{prefix}policy/{p.hex()}" for p in pids], revision)
        pols = tuple(
            PolicyRecord(p, pvalues[f"{prefix}policy/{p.hex()}"])
            for p in sorted(pids)
            if f"{prefix}policy/{p.hex()}" in pvalues
        )
        return SaLookup(
            server_id,
            int(values.get(_epoch_key(server_id), b"0")),
            SaRecord(
                key,
                _unb64(rec["entry"]),
                tuple(p.policy_id for p in pols),
                values.get(f"{prefix}replay/{path}"),
                None if rec["ike_sa"] is None else _unb64(rec["ike_sa"]),
            ),
            pols,
        )

    def stats(self) -> StoreStats:
        base = f"{PREFIX}epoch/"
        servers = []
        for key, raw in _kvs(self._etcd.range(base, _prefix_end(base))):
            sid = key[len(base) :]
            prefix = _server_prefix(sid)
            counts = self._etcd.txn(
                [],
                [
                    _range(f"{prefix}sa/", _prefix_end(f"{prefix}sa/"), count_only=True),
                    _range(f"{prefix}policy/", _prefix_end(f"{prefix}policy/"), count_only=True),
                ],
            )["responses"]
            n_sa, n_pol = (int(r["response_range"].get("count", 0)) for r in counts)
            servers.append(ServerStats(sid, int(raw), n_sa, n_pol))
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
        for i in range(0, len(page), 32):  # 64 count ranges per txn: etcd's default allows 128
            chunk = [(key[len(base) :], int(raw)) for key, raw in page[i : i + 32]]
            ops = [
                _range(f"{p}{kind}/", _prefix_end(f"{p}{kind}/"), count_only=True)
                for p in (_server_prefix(sid) for sid, _ in chunk)
                for kind in ("sa", "policy")
            ]
            counts = [
                int(r["response_range"].get("count", 0))
                for r in self._etcd.txn([], ops)["responses"]
            ]
            for j, (sid, epoch) in enumerate(chunk):
                servers.append(ServerStats(sid, epoch, counts[2 * j], counts[2 * j + 1]))
        return tuple(servers)

    def close(self) -> None:
        self._etcd.close()
