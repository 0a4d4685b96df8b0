"""What the CPU says of itself in /proc/cpuinfo: its vendor and its flags (Linux; empty elsewhere)."""

from __future__ import annotations

import functools


@functools.cache
def cpuinfo() -> str:
    """The text of /proc/cpuinfo, read once per process; "" where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            return f.read()
    except OSError:
        return ""


def cpu_vendor() -> str | None:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD"), None where /proc/cpuinfo has none."""
    for line in cpuinfo().splitlines():
        if line.startswith("vendor_id"):
            return line.partition(":")[2].strip()
    return None
