"""Opening a shard or its ``sizes.json`` by path or URL, never waiting forever.

webdataset opens ``http(s)://`` URLs with ``curl --connect-timeout 30 --retry 30`` and no limit on a stalled
transfer: a server that accepts the connection and then sends nothing holds a loader worker, and with it the whole
run, for good (and a run waiting for data cannot act on SIGTERM). Here curl also gives up on a transfer that moves
less than a byte a second for ``stall_s`` seconds, and retries once only; the read then fails as a damaged
shard does, counted and skipped.
"""
from __future__ import annotations

from typing import IO

import webdataset as wds
from webdataset.gopen import Pipe

#: Seconds a remote read may stall (or take to connect) before it is abandoned (``--remote-timeout``).
DEFAULT_STALL_S = 60
_CURL_SCHEMES = ("http://", "https://")


def open_url(url: str, stall_s: float = DEFAULT_STALL_S) -> IO[bytes]:
    """A binary stream of a local path or URL; an HTTP(S) read that stalls for ``stall_s`` seconds fails."""
    if not url.startswith(_CURL_SCHEMES):
        return wds.gopen(url)
    seconds = str(max(1, round(stall_s)))
    return Pipe(["curl", "--connect-timeout", seconds, "--speed-limit", "1", "--speed-time", seconds,
                 "--retry", "1", "--retry-delay", "1", "-f", "-s", "-L", url],
                mode="rb", bufsize=8192, ignore_status=[141, 23])
