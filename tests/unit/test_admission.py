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
