"""The local stack's ports: a LiveKit node whose port is taken between our probe and its bind
(CI: it exited with code 0 and failed a whole test module) starts again on fresh ports."""

from __future__ import annotations

import socket
from pathlib import Path

from jarvis_local.stack import PORT_RANGE, LocalStack, free_port


def test_free_ports_are_outside_the_kernels_ephemeral_range_and_never_handed_out_twice() -> None:
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(300)] + [free_port(socket.SOCK_DGRAM) for _ in range(300)]
    tcp, udp = ports[:300], ports[300:]
    assert len(set(tcp)) == len(tcp) and len(set(udp)) == len(udp)
    assert all(p in PORT_RANGE and not low <= p <= high for p in ports)


def test_a_livekit_node_whose_port_was_taken_meanwhile_starts_on_fresh_ports(stack: LocalStack) -> None:
    taken = socket.socket()
    taken.bind(("0.0.0.0", free_port()))
    taken.listen()
    attempts: list[int] = []

    def config() -> dict[str, object]:
        # The first attempt's RTC TCP port is held by someone else, as an outgoing connection did on CI.
        rtc_tcp = taken.getsockname()[1] if not attempts else free_port()
        attempts.append(rtc_tcp)
        config = stack.livekit_config("127.0.0.4", free_port(), 7)
        config["rtc"] = {**config["rtc"], "tcp_port": rtc_tcp}  # type: ignore[dict-item]
        return config

    try:
        proc = stack._start_livekit("livekit-port-race", config)
        assert proc.poll() is None
        assert len(attempts) == 2
        assert "address already in use" in stack.log_tail("livekit-port-race", 40)
    finally:
        taken.close()  # the node itself stops with this module (tests/conftest.py)
