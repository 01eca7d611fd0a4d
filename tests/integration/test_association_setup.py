"""Association set-up: the Storage SCP's presentation contexts are shared, not copied.

pynetdicom deep-copies the server's contexts for every accepted association (~65 ms for
qcd's 171); qcd hands each association a new list of the same context objects
(``SharedContexts``), which is safe only while negotiation never changes them. These
tests negotiate what senders propose (several transfer syntaxes, role selection, an
abstract syntax qcd does not support, a transfer syntax it does not know) and check the
server's contexts are exactly as before, and that every association still got the
answers pynetdicom's own negotiation gives.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    Verification,
)

from qcd.app import Daemon
from qcd.ingest.scp import SharedContexts
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

EXPLICIT, IMPLICIT, JPEG_LS = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.80"
UNKNOWN_SYNTAX = "1.2.3.4.5.6.7.8.9"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(make_settings(tmp_path, QCD_WORKERS__THREADS="0"))
    d.start()
    yield d
    d.stop()


def snapshot(contexts: Sequence[Any]) -> bytes:
    """Everything about the contexts that negotiation could change, as bytes."""
    return pickle.dumps([(c.abstract_syntax, list(c.transfer_syntax), c.scu_role, c.scp_role,
                          c.context_id, c.result, c._as_scu, c._as_scp) for c in contexts])


def test_contexts_are_shared_and_negotiation_leaves_them_alone(daemon: Daemon) -> None:
    server = daemon.scp.server
    assert server is not None and isinstance(server.contexts, SharedContexts)
    copied = copy.deepcopy(server.contexts)
    assert copied is not server.contexts and copied == list(server.contexts)
    assert all(a is b for a, b in zip(copied, server.contexts))  # the same objects
    before = snapshot(server.contexts)

    ae = AE(ae_title="PROBE")
    ae.add_requested_context(CTImageStorage, [JPEG_LS, EXPLICIT, IMPLICIT])
    ae.add_requested_context(CTImageStorage, [UNKNOWN_SYNTAX])
    ae.add_requested_context(Verification)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)  # not served
    roles: list[Any] = [build_role(CTImageStorage, scu_role=True, scp_role=True)]
    for _ in range(3):
        assoc = ae.associate("127.0.0.1", daemon.scp.port, ae_title="QCD", ext_neg=roles)
        assert assoc.is_established
        results = {(c.abstract_syntax, c.context_id): c for c in assoc.rejected_contexts
                   + assoc.accepted_contexts}
        accepted = {c.abstract_syntax: c for c in assoc.accepted_contexts}
        # the first CT context: the first of ours qcd supports among the proposed
        assert accepted[CTImageStorage].transfer_syntax[0] in (JPEG_LS, EXPLICIT, IMPLICIT)
        assert Verification in accepted
        rejected = {c.abstract_syntax: c.result for c in assoc.rejected_contexts}
        assert rejected[PatientRootQueryRetrieveInformationModelFind] == 0x03
        assert any(c.abstract_syntax == CTImageStorage and c.result == 0x04
                   for c in assoc.rejected_contexts), results
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    assert snapshot(server.contexts) == before
