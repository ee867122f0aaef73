"""netns_lab.keepalived: the rendered config parses back and says what we mean."""

from pathlib import Path
from typing import Any

import pytest
from keepalived_config import KeepAlivedConfigBlock

from appliance.errors import ConfigError
from netns_lab import keepalived
from netns_lab.plan import SYNC_GROUP

pytestmark = pytest.mark.unit


def block(params: list[Any], name: str) -> Any:
    (found,) = [p for p in params if isinstance(p, KeepAlivedConfigBlock) and p.name == name]
    return found


def values(blk: Any) -> dict[str, str]:
    return {p.name: p.value for p in blk.params if p.name}


def render(tmp_path: Path, name: str = "gw1", priority: int = 150, advert: float = 0.2) -> str:
    gw = keepalived.GatewayConfig(name, priority, advert, tmp_path / f"{name}-notify.jsonl")
    return keepalived.render_config(gw)


def test_rendered_config_parses_back_with_gateway_values(tmp_path: Path) -> None:
    config = keepalived.parse_config(render(tmp_path))
    params = config.params
    assert values(block(params, "global_defs"))["router_id"] == "ipsec-ha-gw1"
    assert values(block(params, "global_defs"))["vrrp_version"] == "3"
    group = block(params, f"vrrp_sync_group {SYNC_GROUP}")
    assert [p.name for p in block(group.params, "group").params if p.name] == [
        "VI_OUTSIDE",
        "VI_INSIDE",
    ]
    expected_notify = f'"{keepalived.NOTIFY_HOOK} --log {tmp_path}/gw1-notify.jsonl --node gw1"'
    assert values(group)["notify"] == expected_notify
    for instance, ifname, vrid, vip in (
        ("VI_OUTSIDE", "out0", "51", "192.0.2.1/24"),
        ("VI_INSIDE", "in0", "52", "198.51.100.1/24"),
    ):
        inst = block(params, f"vrrp_instance {instance}")
        v = values(inst)
        assert (v["interface"], v["virtual_router_id"], v["priority"]) == (ifname, vrid, "150")
        assert v["advert_int"] == "0.2"
        assert v["state"] == "BACKUP" and "nopreempt" in v
        assert v["notify"] == expected_notify
        assert [p.name for p in block(inst.params, "virtual_ipaddress").params if p.name] == [vip]


def test_gateways_differ_only_in_identity_priority_and_log(tmp_path: Path) -> None:
    gw1 = render(tmp_path, "gw1", 150).splitlines()
    gw2 = render(tmp_path, "gw2", 100).splitlines()
    differing = [(a.strip(), b.strip()) for a, b in zip(gw1, gw2, strict=True) if a != b]
    assert all(a.split()[0] in ("router_id", "priority", "notify") for a, _ in differing), differing


@pytest.mark.parametrize("advert", [0.0, 0.005, 41.0])
def test_advert_int_outside_vrrpv3_range_is_refused(tmp_path: Path, advert: float) -> None:
    with pytest.raises(ConfigError, match="advert_int"):
        render(tmp_path, advert=advert)


def test_notify_log_with_a_space_is_refused(tmp_path: Path) -> None:
    gw = keepalived.GatewayConfig("gw1", 150, 1.0, tmp_path / "my logs" / "n.jsonl")
    with pytest.raises(ConfigError, match="spaces"):
        keepalived.render_config(gw)


def test_template_without_an_instance_is_a_clear_error(tmp_path: Path) -> None:
    text = keepalived.TEMPLATE.read_text()
    broken = tmp_path / "broken.conf"
    broken.write_text(text.replace("vrrp_instance VI_INSIDE", "vrrp_instance VI_OTHER"))
    gw = keepalived.GatewayConfig("gw1", 150, 1.0, tmp_path / "n.jsonl")
    with pytest.raises(ConfigError, match="no 'vrrp_instance VI_INSIDE' block"):
        keepalived.render_config(gw, template=broken)


def test_notify_hook_is_executable_and_not_writable_by_others() -> None:
    # keepalived's enable_script_security refuses a hook others could modify
    mode = keepalived.NOTIFY_HOOK.stat().st_mode
    assert mode & 0o111 and not mode & 0o022
