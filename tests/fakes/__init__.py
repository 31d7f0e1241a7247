"""Test doubles and runners for network tests: all on loopback, all bounded in time.

- `upstream.FakeUpstream`: a programmable upstream DNS server (UDP + TCP) that records
  every query it receives.
- `proc.PldnsProcess` / `proc.InProcessPldns`: pldns itself, as a subprocess or in a thread.
- `clients`: dnspython, raw-socket, dig and kdig helpers with fixed small timeouts.
- `peers`: real Debian DNS servers (unbound, dnsmasq) as upstreams.
- `ports.free_port`: a port for a server started later, below the ephemeral range.
"""
