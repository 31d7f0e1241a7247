"""pldns with real DNS software from Debian around it: unbound and dnsmasq as upstreams
(serving example.test from local data), and dnsmasq as a forwarder in front of pldns.
"""

from __future__ import annotations

import dns.flags
import dns.rcode
import pytest

from tests.fakes import clients
from tests.fakes.clients import a_records, make_query, rrsets_text
from tests.fakes.peers import BIG, BIG_TXT_RECORDS, MISSING, WWW, WWW_IPS, Dnsmasq
from tests.fakes.proc import OWNED, OWNED_IPS, free_port


@pytest.fixture(params=["unbound", "dnsmasq"])
def peer(request):  # type: ignore[no-untyped-def]
    """unbound, then dnsmasq (each skipped if not installed) as the upstream."""
    return request.getfixturevalue(request.param)


def test_answers_from_the_peer_pass_through(pldns, peer) -> None:
    server = pldns(upstreams=[peer.address])
    query = make_query(WWW, "A", use_edns=0, payload=1232)
    via_pldns = clients.udp(server.addr, query)
    direct = clients.udp(peer.addr, make_query(WWW, "A", use_edns=0, payload=1232))
    assert via_pldns.id == query.id
    assert a_records(via_pldns) == set(WWW_IPS)
    assert rrsets_text(via_pldns.answer) == rrsets_text(direct.answer)
    assert via_pldns.rcode() == direct.rcode() == dns.rcode.NOERROR
    # An owned name is answered by pldns, never asked of the peer.
    assert a_records(clients.udp(server.addr, OWNED)) == set(OWNED_IPS)


@pytest.mark.parametrize("send", [clients.udp, clients.tcp], ids=["udp", "tcp"])
def test_nxdomain_from_the_peer_stays_nxdomain(pldns, peer, send) -> None:
    server = pldns(upstreams=[peer.address])
    reply = send(server.addr, MISSING, "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.answer == []


def test_dig_through_pldns_gets_the_peers_answers(pldns, peer) -> None:
    if not clients.have("dig"):
        pytest.skip("dig is not installed")
    server = pldns(upstreams=[peer.address])
    got = clients.dig(server.addr, WWW, "A")
    assert got.status == "NOERROR", got.text
    assert set(got.rdata("A")) == set(WWW_IPS), got.text
    got = clients.dig(server.addr, MISSING, "A")
    assert got.status == "NXDOMAIN", got.text
    got = clients.dig(server.addr, BIG, "TXT")  # TC over UDP, then dig retries over TCP
    assert got.status == "NOERROR", got.text
    assert len(got.rdata("TXT")) == BIG_TXT_RECORDS, got.text


def test_big_answer_from_the_peer_is_fetched_over_tcp(pldns, peer) -> None:
    # forward.max_udp_size raised to 4096: by default (1232) a UDP reply this big goes TC=1.
    server = pldns(upstreams=[peer.address], forward={"max_udp_size": 4096})
    capped = pldns(upstreams=[peer.address])
    reply = clients.udp(capped.addr, make_query(BIG, "TXT", use_edns=0, payload=4096))
    assert reply.flags & dns.flags.TC and len(reply.to_wire()) <= 1232
    reply = clients.udp(server.addr, make_query(BIG, "TXT", use_edns=0, payload=4096))
    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0]) == BIG_TXT_RECORDS
    truncated = clients.udp(server.addr, make_query(BIG, "TXT"))
    assert truncated.flags & dns.flags.TC
    whole = clients.tcp(server.addr, make_query(BIG, "TXT"))
    assert len(whole.answer[0]) == BIG_TXT_RECORDS


def test_dnsmasq_in_front_of_pldns(pldns, upstream, tmp_path) -> None:
    if not Dnsmasq.available():
        pytest.skip("dnsmasq is not installed")
    upstream.answer("www.forwarded.test", "192.0.2.77")
    server = pldns()
    front = Dnsmasq(tmp_path / "front", free_port(), forward_to=f"127.0.0.1#{server.port}")
    try:
        front.start()
        assert a_records(clients.udp(front.addr, OWNED)) == set(OWNED_IPS)
        nodata = clients.udp(front.addr, OWNED, "AAAA")
        assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == []
        assert a_records(clients.tcp(front.addr, "www.forwarded.test")) == {"192.0.2.77"}
    finally:
        front.stop()
