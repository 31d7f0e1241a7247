"""A programmable fake upstream DNS server for tests: UDP and TCP on one loopback port.

It runs an asyncio loop in a daemon thread. Behaviour is set per query name (case-insensitive)
with a `Behaviour`; names without one get `default` (NXDOMAIN with an SOA unless changed):

    fake = FakeUpstream().start()
    fake.answer("www.example.test", "192.0.2.1", "192.0.2.2")   # A records (+ NS, glue)
    fake.big("big.example.test")              # ~2.9 KB of TXT: TC=1 over UDP, whole over TCP
    fake.blackhole("slow.example.test")       # never answers
    fake.fail("bad.example.test", dns.rcode.SERVFAIL)
    fake.answer("late.example.test", "192.0.2.9", delay=1.0)
    fake.answer("spoof.example.test", "192.0.2.7", impostors=True)
    ...
    fake.queries("www.example.test")          # every Received query for that name
    fake.stop()

A UDP reply larger than the query's limit (512 without EDNS, else its payload size) goes out
as header + question with TC=1; over TCP the whole reply goes out. With `impostors=True` the
server first sends a reply with a wrong ID and one with a wrong question (both carrying
IMPOSTOR_IP), then the right reply IMPOSTOR_LEAD seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

IMPOSTOR_IP = "203.0.113.66"
IMPOSTOR_LEAD = 0.05
TTL = 60
BIG_TXT_RECORDS = 40  # 40 x 60-byte strings: about 2.9 KB on the wire, > 512 and > 1232


@dataclass(frozen=True)
class Behaviour:
    """What the fake does for one name."""

    rcode: int = dns.rcode.NOERROR
    a: tuple[str, ...] = ()
    txt: tuple[str, ...] = ()
    delay: float = 0.0
    blackhole: bool = False
    impostors: bool = False
    exists: bool = True  # False: NXDOMAIN with an SOA (what unknown names get by default)


NXDOMAIN = Behaviour(rcode=dns.rcode.NXDOMAIN, exists=False)


@dataclass(frozen=True)
class Received:
    """One query as the fake saw it."""

    qid: int
    transport: str  # "udp" | "tcp"
    host: str
    port: int  # the sender's source port
    qname: str = ""  # as sent (case kept), with the trailing dot; "" if it did not parse
    qtype: int = 0
    flags: int = 0
    payload: int | None = None  # EDNS UDP payload size, None without OPT
    edns_version: int | None = None
    do: bool = False
    options: tuple[tuple[int, bytes], ...] = ()  # (code, option data) of each EDNS option
    wire: bytes = b""
    at: float = 0.0  # time.monotonic() when received


@dataclass(frozen=True)
class Sent:
    qid: int
    transport: str
    qname: str
    wire: bytes
    genuine: bool  # False for impostor replies


@dataclass
class _State:
    received: list[Received] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)


def _key(name: str) -> str:
    return name.rstrip(".").lower() + "."


def _bind_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """A TCP and a UDP socket bound to the same free port on `host`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.bind((host, 0))
        port = tcp.getsockname()[1]
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.bind((host, port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        tcp.setblocking(False)
        udp.setblocking(False)
        return tcp, udp
    raise RuntimeError("no free port for the fake upstream")


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        loop = asyncio.get_running_loop()
        for delay, wire in self.fake._respond(data, "udp", addr):
            loop.call_later(delay, self._send, wire, addr)

    def _send(self, wire: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.1", default: Behaviour = NXDOMAIN) -> None:
        self.host = host
        self.port = 0
        self.default = default
        self.behaviours: dict[str, Behaviour] = {}
        self._state = _State()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: list[BaseException] = []  # exceptions inside the fake (should stay empty)

    # --- programming it -------------------------------------------------------------
    @property
    def address(self) -> str:
        """As pldns's config wants it: 127.0.0.1:PORT or [::1]:PORT."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def set(self, name: str, behaviour: Behaviour) -> None:
        self.behaviours[_key(name)] = behaviour

    def answer(self, name: str, *ips: str, delay: float = 0.0, impostors: bool = False) -> None:
        self.set(name, Behaviour(a=tuple(ips), delay=delay, impostors=impostors))

    def big(self, name: str, records: int = BIG_TXT_RECORDS, delay: float = 0.0) -> None:
        txt = tuple(f"{i:03d}-" + "x" * 55 for i in range(records))
        self.set(name, Behaviour(txt=txt, delay=delay))

    def blackhole(self, name: str) -> None:
        self.set(name, Behaviour(blackhole=True))

    def fail(self, name: str, rcode: int) -> None:
        self.set(name, Behaviour(rcode=rcode))

    # --- looking at what happened ---------------------------------------------------
    def queries(self, name: str | None = None, transport: str | None = None) -> list[Received]:
        with self._lock:
            got = list(self._state.received)
        return [
            r
            for r in got
            if (name is None or _key(r.qname) == _key(name))
            and (transport is None or r.transport == transport)
        ]

    def sent(self, name: str | None = None, genuine: bool = True) -> list[Sent]:
        with self._lock:
            got = list(self._state.sent)
        return [
            s for s in got if (name is None or _key(s.qname) == _key(name)) and s.genuine == genuine
        ]

    def wait_for(self, count: int, name: str | None = None, timeout: float = 5.0) -> list[Received]:
        """Wait until at least `count` queries (for `name`) arrived; return them."""
        end = time.monotonic() + timeout
        while True:
            got = self.queries(name)
            if len(got) >= count or time.monotonic() > end:
                return got
            time.sleep(0.01)

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        tcp, udp = _bind_pair(self.host)
        self.port = udp.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        errors: list[BaseException] = []

        async def setup() -> None:
            self._udp_transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), sock=udp
            )
            self._server = await asyncio.start_server(self._serve_tcp, sock=tcp)

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(setup())
            except BaseException as err:  # surfaced to start()
                errors.append(err)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

        self._thread = threading.Thread(target=run, name=f"fake-upstream-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(5.0) or errors:
            self.stop()
            raise RuntimeError(f"fake upstream did not start: {errors}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def shutdown() -> None:
            with contextlib.suppress(AttributeError):
                self._udp_transport.close()
            with contextlib.suppress(AttributeError):
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            loop.stop()

        if loop.is_running():
            loop.call_soon_threadsafe(shutdown)
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the server -----------------------------------------------------------------
    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
                for delay, wire in self._respond(data, "tcp", peer):
                    task = asyncio.get_running_loop().create_task(
                        self._write_later(writer, delay, wire)
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _write_later(writer: asyncio.StreamWriter, delay: float, wire: bytes) -> None:
        if delay:
            await asyncio.sleep(delay)
        if not writer.is_closing():
            writer.write(len(wire).to_bytes(2, "big") + wire)

    def _respond(self, data: bytes, transport: str, peer: tuple) -> list[tuple[float, bytes]]:  # type: ignore[type-arg]
        """Record the query; return the (delay, wire) replies to send."""
        try:
            return self._reply(data, transport, peer)
        except Exception as err:  # a bug in the fake: tests check `errors` at teardown
            self.errors.append(err)
            return []

    def _reply(self, data: bytes, transport: str, peer: tuple) -> list[tuple[float, bytes]]:  # type: ignore[type-arg]
        try:
            query = dns.message.from_wire(data)
        except Exception:
            self._record(data, transport, peer, None)
            return []
        self._record(data, transport, peer, query)
        if not query.question:
            return []
        question = query.question[0]
        behaviour = self.behaviours.get(_key(question.name.to_text()), self.default)
        if behaviour.blackhole:
            return []
        response = self._build(query, behaviour)
        wire = response.to_wire(max_size=65535)
        limit = 65535 if transport == "tcp" else (query.payload if query.edns >= 0 else 512)
        if len(wire) > limit:
            short = dns.message.make_response(query)
            short.set_rcode(dns.rcode.Rcode(behaviour.rcode))
            short.flags |= dns.flags.TC
            wire = short.to_wire()
        qname = question.name.to_text()
        out: list[tuple[float, bytes]] = []
        delay = behaviour.delay
        if behaviour.impostors:
            for fake in self._impostors(query):
                out.append((delay, fake))
                self._note(Sent(query.id, transport, qname, fake, genuine=False))
            delay += IMPOSTOR_LEAD
        out.append((delay, wire))
        self._note(Sent(query.id, transport, qname, wire, genuine=True))
        return out

    @staticmethod
    def _build(query: dns.message.Message, b: Behaviour) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.Rcode(b.rcode))
        question = query.question[0]
        name, qtype = question.name, question.rdtype
        if b.rcode != dns.rcode.NOERROR and b.exists:
            return response
        if b.a and qtype in (dns.rdatatype.A, dns.rdatatype.ANY):
            response.answer.append(dns.rrset.from_text_list(name, TTL, "IN", "A", list(b.a)))
            ns = "ns1.fake.test."
            response.authority.append(dns.rrset.from_text(name, TTL, "IN", "NS", ns))
            response.additional.append(dns.rrset.from_text(ns, TTL, "IN", "A", "192.0.2.53"))
        elif b.txt and qtype in (dns.rdatatype.TXT, dns.rdatatype.ANY):
            strings = [f'"{t}"' for t in b.txt]
            response.answer.append(dns.rrset.from_text_list(name, TTL, "IN", "TXT", strings))
        else:  # NODATA or NXDOMAIN: an SOA in the authority section (RFC 2308)
            soa = "ns1.fake.test. hostmaster.fake.test. 1 3600 600 86400 60"
            zone = name.parent() if len(name) > 2 else name
            response.authority.append(dns.rrset.from_text(zone, TTL, "IN", "SOA", soa))
        return response

    @staticmethod
    def _impostors(query: dns.message.Message) -> list[bytes]:
        """A reply with the wrong ID, then one with the wrong question; both lie."""
        question = query.question[0]
        wrong_id = dns.message.make_response(query)
        wrong_id.id = (query.id + 1) & 0xFFFF
        wrong_id.answer.append(dns.rrset.from_text(question.name, TTL, "IN", "A", IMPOSTOR_IP))
        other = dns.message.make_query("impostor.invalid.", question.rdtype)
        other.id = query.id
        wrong_q = dns.message.make_response(other)
        wrong_q.answer.append(dns.rrset.from_text("impostor.invalid.", TTL, "IN", "A", IMPOSTOR_IP))
        return [wrong_id.to_wire(), wrong_q.to_wire()]

    def _record(
        self,
        data: bytes,
        transport: str,
        peer: tuple,  # type: ignore[type-arg]
        query: dns.message.Message | None,
    ) -> None:
        if query is None:
            qid = int.from_bytes(data[:2], "big") if len(data) >= 2 else -1
            got = Received(qid, transport, peer[0], peer[1], wire=data, at=time.monotonic())
        else:
            q = query.question[0] if query.question else None
            has_opt = query.edns >= 0
            got = Received(
                qid=query.id,
                transport=transport,
                host=peer[0],
                port=peer[1],
                qname=q.name.to_text() if q is not None else "",
                qtype=int(q.rdtype) if q is not None else 0,
                flags=query.flags,
                payload=query.payload if has_opt else None,
                edns_version=query.edns if has_opt else None,
                do=bool(query.ednsflags & dns.flags.DO),
                options=tuple((int(o.otype), o.to_wire() or b"") for o in query.options),
                wire=data,
                at=time.monotonic(),
            )
        with self._lock:
            self._state.received.append(got)

    def _note(self, sent: Sent) -> None:
        with self._lock:
            self._state.sent.append(sent)
