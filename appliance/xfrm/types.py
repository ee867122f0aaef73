"""Small value types of the XFRM API that the model does not cover."""

from __future__ import annotations

import errno as errno_mod
from dataclasses import dataclass

from appliance.errors import KernelError
from appliance.model import Address, LifetimeCur, Mark, ReplayState, ReplayStateEsn


class XfrmError(KernelError):
    """The kernel refused an XFRM request; ``errno`` is its answer (0 if none)."""

    def __init__(self, message: str, errno: int = 0, extack: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.extack = extack


@dataclass(frozen=True, slots=True)
class AeState:
    """What GETAE returns for one SA (``xfrm_aevent_id`` plus attributes)."""

    replay: ReplayState | None
    """XFRMA_REPLAY_VAL (SAs without ESN)."""
    replay_esn: ReplayStateEsn | None
    """XFRMA_REPLAY_ESN_VAL (ESN SAs)."""
    lifetime_cur: LifetimeCur | None
    """XFRMA_LTIME_VAL: bytes/packets and timestamps."""
    replay_thresh: int | None = None
    """XFRMA_REPLAY_THRESH."""
    etimer_thresh: int | None = None
    """XFRMA_ETIMER_THRESH (in 100 ms units)."""
    mark: Mark | None = None
    """XFRMA_MARK of the SA."""

    @property
    def oseq64(self) -> int | None:
        """The outbound sequence number (64-bit with ESN)."""
        if self.replay_esn is not None:
            return self.replay_esn.oseq64
        if self.replay is not None:
            return self.replay.oseq
        return None


@dataclass(frozen=True, slots=True)
class Migration:
    """``struct xfrm_user_migrate``: move SAs/templates from one address pair to another."""

    old_daddr: Address
    """Old tunnel destination."""
    old_saddr: Address
    """Old tunnel source."""
    new_daddr: Address
    """New tunnel destination."""
    new_saddr: Address
    """New tunnel source."""
    proto: int = 50
    """IPPROTO_ESP (50), IPPROTO_AH (51) or IPPROTO_COMP (108)."""
    mode: int = 1
    """XFRM_MODE_* (1 = tunnel)."""
    reqid: int = 0
    """reqid of the SAs and templates to move (0 = any)."""
    reserved: int = 0
    """``reserved`` member, kept for lossless decoding."""


@dataclass(frozen=True, slots=True)
class KmAddress:
    """``struct xfrm_user_kmaddress``: addresses IKE should use after a MIGRATE."""

    local: Address
    """Local IKE address."""
    remote: Address
    """Remote IKE address."""
    reserved: int = 0
    """``reserved`` member."""


@dataclass(frozen=True, slots=True)
class BatchFailure:
    """One entry of a batch the kernel refused."""

    index: int
    """Position of the entry in the list given to ``install_batch``."""
    errno: int
    """The kernel's errno (positive)."""
    message: str
    """A sentence naming the entry and the problem."""

    @property
    def errno_name(self) -> str:
        """``EEXIST`` etc."""
        return errno_mod.errorcode.get(self.errno, str(self.errno))
