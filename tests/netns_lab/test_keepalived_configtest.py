"""``keepalived -t`` (config test mode) accepts the rendered config inside a gateway namespace."""

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from netns_lab import Lab, keepalived

pytestmark = pytest.mark.netns


def test_keepalived_accepts_the_rendered_config_and_rejects_a_broken_one(
    require_root: None,
) -> None:
    with Lab.create(start_keepalived=False) as lab:
        for gw in ("gw1", "gw2"):
            files = keepalived.write_config(gw, lab.run_dir, 0.2)
            keepalived.check_config(files.config, lab.ns(gw))
            assert (files.config.stat().st_mode & 0o777) == 0o600

        broken = Path(lab.run_dir) / "broken.conf"
        text = (lab.run_dir / "gw1-keepalived.conf").read_text()
        broken.write_text(text.replace("interface out0", "interface nosuch0"))
        with pytest.raises(ConfigError, match="keepalived rejects"):
            keepalived.check_config(broken, lab.ns("gw1"))
