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


def test_ready_check_is_left_out_by_default(tmp_path: Path) -> None:
    text = render(tmp_path)
    params = keepalived.parse_config(text).params
    assert not [p for p in params if p.name.startswith("vrrp_script")]
    assert "sync_group_tracking_weight" not in values(
        block(params, f"vrrp_sync_group {SYNC_GROUP}")
    )
    for instance in ("VI_OUTSIDE", "VI_INSIDE"):
        assert "track_script" not in values(block(params, f"vrrp_instance {instance}"))
    assert keepalived.READY_SCRIPT not in text


def test_ready_check_runs_status_ready_and_both_instances_track_it(tmp_path: Path) -> None:
    check = keepalived.ReadyCheck(
        tmp_path / "gw2-status.json",
        interval_s=1,
        weight=-70,
        fall=3,
        rise=1,
        max_lag_s=4.5,
        program=("/opt/ipsec-ha/bin/ipsec-ha", "status", "--ready"),
    )
    gw = keepalived.GatewayConfig("gw2", 100, 0.2, tmp_path / "n.jsonl", ready_check=check)
    params = keepalived.parse_config(keepalived.render_config(gw)).params
    script = values(block(params, f"vrrp_script {keepalived.READY_SCRIPT}"))
    assert script["script"] == (
        f'"/opt/ipsec-ha/bin/ipsec-ha status --ready --status {tmp_path}/gw2-status.json '
        '--max-lag 4.5"'
    )
    settings = ("interval", "timeout", "weight", "fall", "rise")
    assert [script[k] for k in settings] == ["1", "10", "-70", "3", "1"]
    # weights of a sync group's members count only with this (keepalived ignores them otherwise)
    assert "sync_group_tracking_weight" in values(block(params, f"vrrp_sync_group {SYNC_GROUP}"))
    for instance in ("VI_OUTSIDE", "VI_INSIDE"):
        inst = block(params, f"vrrp_instance {instance}")
        tracked = block(inst.params, "track_script")
        assert [p.name for p in tracked.params if p.name] == [keepalived.READY_SCRIPT]


def test_ready_check_defaults_to_the_cli_beside_the_interpreter(tmp_path: Path) -> None:
    command = keepalived.ReadyCheck(tmp_path / "s.json").command()
    assert command == f'"{keepalived.ipsec_ha_binary()} status --ready --status {tmp_path}/s.json"'


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"weight": 10}, "weight"),  # a positive weight would raise a node that is not ready
        ({"weight": -254}, "weight"),
        ({"interval_s": 0}, "interval_s"),
        ({"fall": 0}, "fall"),
        ({"max_lag_s": 0.0}, "max_lag_s"),
    ],
)
def test_ready_check_values_keepalived_would_refuse_are_named(
    tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    check = keepalived.ReadyCheck(tmp_path / "s.json", **change)
    gw = keepalived.GatewayConfig("gw2", 100, 0.2, tmp_path / "n.jsonl", ready_check=check)
    with pytest.raises(ConfigError, match=f"ready check: {key}"):
        keepalived.render_config(gw)


def test_ready_check_with_a_space_in_the_status_path_is_refused(tmp_path: Path) -> None:
    check = keepalived.ReadyCheck(tmp_path / "my status.json")
    gw = keepalived.GatewayConfig("gw2", 100, 0.2, tmp_path / "n.jsonl", ready_check=check)
    with pytest.raises(ConfigError, match=r"ready check argument .* spaces"):
        keepalived.render_config(gw)


def test_enabled_ready_check_is_kept_in_the_run_dir_for_every_later_render(
    tmp_path: Path,
) -> None:
    enabled = keepalived.enable_ready_check(tmp_path, "gw2")
    assert enabled.status_file == tmp_path / "gw2-status.json"
    assert keepalived.ready_check_of(tmp_path, "gw2") == enabled
    other = keepalived.ReadyCheck(
        tmp_path / "s.json", program=("/usr/bin/python3", "-m", "appliance.readycheck")
    )
    assert keepalived.enable_ready_check(tmp_path, "gw1", other) == other
    assert keepalived.ready_check_of(tmp_path, "gw1") == other
    assert '"/usr/bin/python3 -m appliance.readycheck --status' in other.command()
    (tmp_path / "gw1-ready-check.json").unlink()
    assert keepalived.ready_check_of(tmp_path, "gw1") is None
    gw2 = keepalived.write_config("gw2", tmp_path, 0.2).config.read_text()
    gw1 = keepalived.write_config("gw1", tmp_path, 0.2).config.read_text()
    assert f"--status {tmp_path}/gw2-status.json" in gw2
    assert keepalived.READY_SCRIPT not in gw1
    (tmp_path / "gw2-ready-check.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable ready check"):
        keepalived.ready_check_of(tmp_path, "gw2")


def test_effective_priority_is_the_last_change_keepalived_logged_per_instance() -> None:
    log = "\n".join(
        [
            "05:06:04: VRRP_Script(chk_ipsec_ha_ready) failed (exited with status 1)",
            "Sun Dec  6 05:06:04 2026: (VI_OUTSIDE) Changing effective priority from 100 to 40",
            "Sun Dec  6 05:06:04 2026: (VI_INSIDE) Changing effective priority from 100 to 40",
            "Sun Dec  6 05:06:09 2026: VRRP_Script(chk_ipsec_ha_ready) succeeded",
            "Sun Dec  6 05:06:09 2026: (VI_OUTSIDE) Changing effective priority from 40 to 100",
            "Sun Dec  6 05:06:09 2026: (VI_OTHER) Changing effective priority from 40 to 7",
        ]
    )
    assert keepalived.effective_priorities(log, 100) == {"VI_OUTSIDE": 100, "VI_INSIDE": 40}
    assert keepalived.effective_priorities("", 150) == {"VI_OUTSIDE": 150, "VI_INSIDE": 150}
