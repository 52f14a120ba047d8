"""Loaded by any Python started with this folder on PYTHONPATH: records, then refuses, every attempt
to reach a host that is not this machine. The log, named by $OFFLINE_GUARD_LOG, is what tests read;
refusing as well keeps a library that swallows the error from getting through."""

import ipaddress
import os
import socket
import sys

LOG = os.environ["OFFLINE_GUARD_LOG"]


def _local(host: object) -> bool:
    if host in (None, "", "localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[-1]
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _refuse(event, address)
    elif event == "socket.getaddrinfo" and not _local(args[0]):
        _refuse(event, args[:2])


def _refuse(event: str, target: object) -> None:
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()} {event} {target!r}\n")
    raise ConnectionRefusedError(f"offline guard: {event} {target!r}")


with open(LOG + ".armed", "a", encoding="utf-8") as armed:
    armed.write(f"{os.getpid()} {' '.join(sys.argv)}\n")
sys.addaudithook(_guard)
