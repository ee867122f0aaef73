"""The etcd backend against a real etcd started by the test: the backend contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_process import EtcdMember, start_single
from store_contract import BackendContract, sa_key, sa_put

from appliance.store.base import SchemaVersionError, StoreUnavailableError
from appliance.store.etcd import SCHEMA_KEY, EtcdClient, EtcdStore

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    member = start_single(tmp_path_factory.mktemp("etcd"))
    yield member
    member.stop()


@pytest.fixture
def store(etcd: EtcdMember) -> Iterator[EtcdStore]:
    # Each test starts from an empty keyspace.
    raw = EtcdClient([etcd.endpoint])
    raw.call("/v3/kv/deleterange", {"key": "AA==", "range_end": "AA=="})
    raw.close()
    s = EtcdStore([etcd.endpoint])
    yield s
    s.close()


class TestEtcdContract(BackendContract):
    pass


def test_future_layout_version_is_refused(store: EtcdStore, etcd: EtcdMember) -> None:
    store._etcd.call("/v3/kv/put", {"key": _b64(SCHEMA_KEY), "value": _b64("2")})
    with pytest.raises(SchemaVersionError, match="newer than this ipsec-ha knows"):
        EtcdStore([etcd.endpoint])


def test_unreachable_etcd_is_a_clear_error(tmp_path: Path) -> None:
    from etcd_process import free_port

    with pytest.raises(StoreUnavailableError, match="etcd unavailable"):
        EtcdStore([f"http://127.0.0.1:{free_port()}"], timeout=0.5, retry_for=1.0)


def test_second_endpoint_is_used_when_first_is_dead(etcd: EtcdMember, store: EtcdStore) -> None:
    from etcd_process import free_port

    s = EtcdStore([f"http://127.0.0.1:{free_port()}", etcd.endpoint], timeout=0.5)
    s.put("gw1", 1, [sa_put(1)])
    assert s.get_by_spi(sa_key(1)) is not None
    s.close()


def _b64(s: str) -> str:
    import base64

    return base64.b64encode(s.encode()).decode()


@pytest.fixture(scope="module")
def etcd_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """An etcd on 127.0.0.1 with authentication enabled: user ``ipsecha`` may use /ipsec-ha/."""
    member = start_single(tmp_path_factory.mktemp("etcd-auth"))
    try:
        raw = EtcdClient([member.endpoint])
        for path, body in [
            ("/v3/auth/user/add", {"name": "root", "password": "root-pw"}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/user/add", {"name": "ipsecha", "password": "good-pw"}),
            ("/v3/auth/role/add", {"name": "ipsecha"}),
            (
                "/v3/auth/role/grant",
                {
                    "name": "ipsecha",
                    "perm": {
                        "permType": "READWRITE",
                        "key": _b64("/ipsec-ha/"),
                        "range_end": _b64("/ipsec-ha0"),
                    },
                },
            ),
            ("/v3/auth/user/grant", {"user": "ipsecha", "role": "ipsecha"}),
            ("/v3/auth/enable", {}),
        ]:
            raw.call(path, body)
        raw.close()
        yield member
    finally:
        member.stop()


def test_user_authentication_and_a_stale_token_is_renewed(etcd_auth: EtcdMember) -> None:
    s = EtcdStore([etcd_auth.endpoint], user="ipsecha", password="good-pw")
    s.put("gw1", 1, [sa_put(1)])
    s._etcd._token = "stale.token"  # what etcd answers after a restart or the token's TTL
    found = s.get_by_spi(sa_key(1))
    assert found is not None and found.sa.entry == sa_put(1).entry
    s.close()


def test_wrong_password_or_no_user_is_a_clear_error(etcd_auth: EtcdMember) -> None:
    with pytest.raises(
        StoreUnavailableError, match=r"refused user ipsecha: .*authentication failed"
    ):
        EtcdStore([etcd_auth.endpoint], user="ipsecha", password="wrong-pw", retry_for=1.0)
    with pytest.raises(StoreUnavailableError, match="requires authentication"):
        EtcdStore([etcd_auth.endpoint], retry_for=1.0)
