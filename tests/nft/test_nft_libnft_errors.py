"""libnftables' error reports become one line (inputs captured from libnftables 1.0.6)."""

import pytest

from appliance.nft.libnft import summarise_error

pytestmark = pytest.mark.unit

# libnftables 1.0.6 quotes line 1 of a buffer whatever line failed.
KERNEL_ENOENT = (
    "Error: Could not process rule: No such file or directory\n"
    "add table inet ipsec_ha\n"
    "                                                          ^^^^^\n"
    "Error: Could not process rule: No such file or directory\n"
    "add table inet ipsec_ha\n"
    "                                                          ^^^^^\n"
)
BAD_ADDRESS = (
    "Error: Could not resolve hostname: Name or service not known\n"
    "add table inet x\n"
    "                       ^^^^^^^^^^^\n"
)


def test_repeated_errors_collapse_and_the_misleading_line_is_left_out() -> None:
    assert summarise_error(KERNEL_ENOENT) == "Could not process rule: No such file or directory"


def test_missing_queue_support_gets_a_hint() -> None:
    summary = summarise_error(KERNEL_ENOENT, "add rule inet ipsec_ha input queue num 3\n")
    assert "CONFIG_NFT_QUEUE" in summary
    assert "trap_queue" in summary


def test_evaluation_errors_are_kept() -> None:
    assert summarise_error(BAD_ADDRESS) == "Could not resolve hostname: Name or service not known"


def test_unstructured_error_text_is_passed_on() -> None:
    assert summarise_error("netlink: Operation not permitted\n") == (
        "netlink: Operation not permitted"
    )
    assert summarise_error("") == "no reason given"
