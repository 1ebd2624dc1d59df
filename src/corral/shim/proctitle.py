"""A process's name in /proc/PID/cmdline, rewritten in place."""

from __future__ import annotations


def retitle(title: str) -> None:
    """Name this process in /proc/PID/cmdline (ps, pgrep -f) as what it is: a shim
    forked by the zygote would otherwise show the zygote's command line all its life, and
    the shims that rightly outlive corrald would pass for zygotes left behind (and a
    pooled shim, once claimed, names its pod).  The argv area is
    rewritten in place (what setproctitle does), cut to its size: the title, a NUL, then
    non-NUL filler, so the kernel reports the title up to that NUL."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
    size = end - start
    if size < 2:
        return
    text = title.encode()[:size - 2] + b"\0"
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(start)
        mem.write(text + b" " * (size - len(text)))
