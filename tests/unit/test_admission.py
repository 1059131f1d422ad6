"""Admission of connections (api/admission.py): caps per address, the reserved share, eviction."""

from __future__ import annotations

import logging
import socket
from typing import cast

import pytest

from ferrohsm.api.admission import Admission
from ferrohsm.api.connection import BUSY, HANDSHAKE, HEAD, IDLE, Conn

LOG = logging.getLogger("test")


def conn(ip: str, admission: Admission, at: float, *, trusted: bool = False) -> Conn:
    c = Conn(cast(socket.socket, None), (ip, 1000))
    admission.opened(c, at, trusted)
    return c


def test_per_address_caps_on_open_and_unproductive_connections() -> None:
    adm = Admission(100, per_ip=3, unproductive_per_ip=2, reserved_share=0.0)
    first, _ = conn("10.0.0.1", adm, 1.0), conn("10.0.0.1", adm, 2.0)
    assert adm.admit("10.0.0.1", [], LOG)[0] is False  # two unproductive: the cap
    assert adm.admit("10.0.0.2", [], LOG)[0] is True  # another address is not affected
    adm.productive(first)
    assert adm.admit("10.0.0.1", [], LOG)[0] is True
    conn("10.0.0.1", adm, 3.0)
    adm.productive(_)
    assert adm.admit("10.0.0.1", [], LOG)[0] is False  # three open: the cap
    adm.closed(first)
    assert adm.admit("10.0.0.1", [], LOG)[0] is True
    assert adm.turned_away == 2


def test_eviction_order_unproductive_first_then_idle_anonymous_before_trusted() -> None:
    adm = Admission(100, None, None, 0.0)
    busy, idle_trusted, idle_anon, silent = (conn("a", adm, 1.0), conn("b", adm, 2.0),
                                             conn("c", adm, 3.0), conn("d", adm, 4.0))
    busy.state, busy.productive = BUSY, True
    for c, since in ((idle_trusted, 5.0), (idle_anon, 9.0)):
        c.state, c.productive, c.idle_since = IDLE, True, since
    adm.trust(idle_trusted)
    silent.state = HANDSHAKE
    conns = [busy, idle_trusted, idle_anon, silent]
    assert adm.victim(conns, anonymous_only=False) is silent
    silent.state = HEAD  # a slowloris dribbling its first head is unproductive too
    assert adm.victim(conns, anonymous_only=False) is silent
    conns.remove(silent)
    assert adm.victim(conns, anonymous_only=False) is idle_anon
    conns.remove(idle_anon)
    assert adm.victim(conns, anonymous_only=False) is idle_trusted
    assert adm.victim(conns, anonymous_only=True) is None
    assert adm.victim([busy], anonymous_only=False) is None


def test_reserved_share_keeps_slots_for_authenticated_peers() -> None:
    adm = Admission(4, None, None, reserved_share=0.5)  # 2 anonymous slots, 2 reserved
    anon = [conn("10.0.0.9", adm, 1.0), conn("10.0.0.8", adm, 2.0)]
    for c in anon:
        c.state = BUSY
    assert adm.admit("10.0.0.7", anon, LOG) == (False, False, None)  # all anonymous ones busy
    anon[1].state = HANDSHAKE
    assert adm.admit("10.0.0.7", anon, LOG) == (True, False, anon[1])  # replaces the silent one
    trusted = conn("10.0.0.5", adm, 3.0)
    adm.trust(trusted)  # authenticated: its address may use the reserved slots from now on
    assert adm.admit("10.0.0.5", anon, LOG) == (True, True, None)


def test_a_new_client_replaces_an_anonymous_connection_stalled_mid_request(
        caplog: pytest.LogCaptureFixture) -> None:
    """A peer answered once (``/healthz``) that then dribbles a body on each of its connections
    held every anonymous slot: every new client was closed after accept for as long as it
    kept that up (an outside tester's 75 of 75 refused). A connection whose request has been
    arriving for STALLED seconds gives way to a new client; one just started, or one being
    answered, does not; and being turned away is logged at warning, once a minute."""
    from ferrohsm.api.admission import STALLED
    from ferrohsm.api.connection import BODY

    adm = Admission(4, None, None, reserved_share=0.5)  # 2 anonymous slots
    held = [conn("10.0.0.99", adm, 1.0), conn("10.0.0.99", adm, 1.0)]
    for c in held:
        adm.productive(c)  # one /healthz answered on each
        c.state, c.received_at = BODY, 10.0
    assert adm.admit("10.1.2.3", held, LOG, now=10.0 + STALLED / 2) == (False, False, None)
    assert adm.admit("10.1.2.3", held, LOG, now=10.0 + STALLED + 0.1) == (True, False, held[0])
    held[0].state = BUSY  # being answered: never evicted
    held[1].received_at = 20.0
    with caplog.at_level(logging.WARNING, logger="test"):
        assert adm.admit("10.1.2.4", held, LOG, now=20.5)[0] is False
        assert adm.admit("10.1.2.5", held, LOG, now=21.0)[0] is False
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1
    assert "anonymous share full" in caplog.text


def test_a_new_client_replaces_an_anonymous_connection_that_does_not_read_its_answers() -> None:
    """The red team's second way: pipelined requests on every connection and a receive buffer
    never read, so each connection sat in WRITING, neither unproductive, idle nor arriving."""
    from ferrohsm.api.admission import STALLED
    from ferrohsm.api.connection import WRITING

    adm = Admission(4, None, None, reserved_share=0.5)
    held = [conn("10.0.0.98", adm, 1.0), conn("10.0.0.98", adm, 1.0)]
    for c in held:
        adm.productive(c)
        c.state, c.write_since = WRITING, 10.0
    assert adm.admit("10.1.2.3", held, LOG, now=10.0 + STALLED / 2)[0] is False
    assert adm.admit("10.1.2.3", held, LOG, now=10.0 + STALLED + 0.1) == (True, False, held[0])


def test_an_address_holding_many_replaces_its_own_not_a_new_client() -> None:
    """The stalling peer re-opened what the server closed: its new connection replaced the new
    client's (unproductive until its first answer, so first in line) again and again."""
    adm = Admission(8, None, None, reserved_share=0.5)  # 4 anonymous slots
    mine = [conn("10.0.0.99", adm, 1.0) for _ in range(3)]
    for c in mine:
        adm.productive(c)
        c.state, c.received_at = HEAD, 2.0
    client = conn("10.1.1.1", adm, 0.0)  # no answer yet: first in line for anyone else
    conns = [*mine, client]
    assert adm.admit("10.2.2.2", conns, LOG, now=5.0)[2] is client
    fourth = conn("10.0.0.99", adm, 1.0)
    adm.productive(fourth)
    fourth.state, fourth.received_at = HEAD, 2.0
    conns.append(fourth)  # the address holds FLOODING now: it gives way to itself
    assert adm.admit("10.0.0.99", conns, LOG, now=5.0)[2] in [*mine, fourth]


def test_share_must_leave_anonymous_slots() -> None:
    with pytest.raises(ValueError):
        Admission(10, None, None, 1.0)


def test_trusted_proxies_are_not_capped_per_address() -> None:
    adm = Admission(100, per_ip=1, unproductive_per_ip=1, reserved_share=0.0,
                    exempt=lambda ip: ip == "10.9.9.9")
    conn("10.9.9.9", adm, 1.0)
    conn("10.0.0.1", adm, 1.0)
    assert adm.admit("10.9.9.9", [], LOG)[0] is True
    assert adm.admit("10.0.0.1", [], LOG)[0] is False
