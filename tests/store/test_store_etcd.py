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
