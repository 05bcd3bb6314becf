"""The kiosk's own network link: a network namespace the test creates, with loss and jitter on it.

The kiosk process runs inside the namespace (``ip netns exec``); everything else (LiveKit, the
worker, the engines) stays in the host namespace and is reached at ``host_ip``. Every packet the
kiosk sends or receives, signalling and media, crosses the impaired link.

The impairment is ``tc netem`` on both ends of a veth pair when the kernel has it. Some kernels are
built without sch_netem (this project's CI and dev VMs: "Specified qdisc kind is unknown"); there
the link is a pair of TUN devices, one in the namespace, one in the host, joined by a relay thread
that drops and delays the real IP packets the same way netem would (uniform delay, independent
loss, both directions). Which one ran is in ``KioskLink.how``.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import random
import secrets
import select
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


@dataclass(frozen=True)
class Impairment:
    """netem's words: ``delay <delay_ms>ms <jitter_ms>ms loss <loss_percent>% rate 100mbit`` on each
    direction (the rate keeps packets in order, as a real link's queue does)."""

    loss_percent: float = 10.0
    delay_ms: float = 100.0
    jitter_ms: float = 100.0

    def netem_args(self) -> list[str]:
        # With a rate, netem queues each packet behind the previous one: jitter without reordering.
        return [
            "netem",
            "delay",
            f"{self.delay_ms:g}ms",
            f"{self.jitter_ms:g}ms",
            "loss",
            f"{self.loss_percent:g}%",
            "rate",
            "100mbit",
        ]

    def packet_delay_s(self, rng: random.Random) -> float:
        # netem's default (no distribution table): uniform in delay ± jitter, never negative.
        return max(0.0, self.delay_ms + rng.uniform(-self.jitter_ms, self.jitter_ms)) / 1000

    def dropped(self, rng: random.Random) -> bool:
        return rng.random() < self.loss_percent / 100


@dataclass
class RelayCounts:
    sent: int = 0
    dropped: int = 0


@dataclass
class KioskLink:
    netns: str
    host_ip: str
    kiosk_ip: str
    how: str  # "netem" or "tun-relay"
    counts: RelayCounts = field(default_factory=RelayCounts)

    def exec_prefix(self) -> list[str]:
        """Put before a command to run it as the kiosk, inside the namespace."""
        return ["ip", "netns", "exec", self.netns]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netem_available() -> bool:
    """Whether this kernel has sch_netem (tried on a throwaway dummy-free namespace)."""
    probe = f"jk-probe-{secrets.token_hex(3)}"
    _ip("netns", "add", probe)
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            capture_output=True, text=True,
        )  # fmt: skip
        return done.returncode == 0
    finally:
        _ip("netns", "del", probe)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class _Relay(threading.Thread):
    """Carries IP packets between the two TUN devices, dropping and delaying each one."""

    def __init__(self, kiosk_fd: int, host_fd: int, impairment: Impairment, counts: RelayCounts, seed: int) -> None:
        super().__init__(name="kiosk-link-relay", daemon=True)
        self._fds = (kiosk_fd, host_fd)
        self._impairment = impairment
        self._counts = counts
        self._rng = random.Random(seed)
        self._due: list[tuple[float, int, int, bytes]] = []  # (when, seq, out fd, packet)
        self._seq = 0
        self._last_due: dict[int, float] = {}
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def run(self) -> None:
        kiosk_fd, host_fd = self._fds
        while not self._halt.is_set():
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                _when, _seq, out, packet = heapq.heappop(self._due)
                with contextlib.suppress(OSError):
                    os.write(out, packet)
            wait = min(0.05, max(0.0, self._due[0][0] - now)) if self._due else 0.05
            readable, _, _ = select.select([kiosk_fd, host_fd], [], [], wait)
            for fd in readable:
                try:
                    packet = os.read(fd, 65536)
                except OSError:
                    continue
                if self._impairment.dropped(self._rng):
                    self._counts.dropped += 1
                    continue
                self._counts.sent += 1
                self._seq += 1
                out = host_fd if fd == kiosk_fd else kiosk_fd
                # A link's queue is first in, first out: a packet's delay varies, it never overtakes
                # the one before it (with reordering as well as loss the WebRTC handshake never
                # completed here; either alone, it did in 0.1-1.3 s).
                due = max(time.monotonic() + self._impairment.packet_delay_s(self._rng), self._last_due.get(out, 0.0))
                self._last_due[out] = due
                heapq.heappush(self._due, (due, self._seq, out, packet))


@contextlib.contextmanager
def impaired_kiosk_link(impairment: Impairment, subnet: int | None = None, seed: int = 14) -> Iterator[KioskLink]:
    """A namespace for the kiosk and its impaired link to the host; removed on exit."""
    tag = secrets.token_hex(3)
    octet = subnet if subnet is not None else 64 + secrets.randbelow(128)
    host_ip, kiosk_ip = f"10.{octet}.14.1", f"10.{octet}.14.2"
    netns, host_dev, kiosk_dev = f"jarvis-kiosk-{tag}", f"jkh{tag}", f"jkk{tag}"
    use_netem = netem_available()
    _ip("netns", "add", netns)
    relay: _Relay | None = None
    fds: list[int] = []
    link = KioskLink(netns, host_ip, kiosk_ip, "netem" if use_netem else "tun-relay")
    try:
        in_ns = ["netns", "exec", netns, "ip"]
        _ip(*in_ns, "link", "set", "lo", "up")
        if use_netem:
            _ip("link", "add", host_dev, "type", "veth", "peer", "name", kiosk_dev)
        else:
            fds = [_open_tun(kiosk_dev), _open_tun(host_dev)]
        _ip("link", "set", kiosk_dev, "netns", netns)
        _ip(*in_ns, "addr", "add", kiosk_ip, "peer", host_ip, "dev", kiosk_dev)
        _ip(*in_ns, "link", "set", kiosk_dev, "up")
        _ip("addr", "add", host_ip, "peer", kiosk_ip, "dev", host_dev)
        _ip("link", "set", host_dev, "up")
        if use_netem:
            for prefix, dev in ((["ip", "netns", "exec", netns], kiosk_dev), ([], host_dev)):
                subprocess.run([*prefix, "tc", "qdisc", "add", "dev", dev, "root", *impairment.netem_args()],
                               check=True, capture_output=True)  # fmt: skip
        else:
            relay = _Relay(fds[0], fds[1], impairment, link.counts, seed)
            relay.start()
        yield link
    finally:
        if relay is not None:
            relay.stop()
        for fd in fds:
            os.close(fd)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_dev], capture_output=True)
