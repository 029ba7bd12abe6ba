"""Whether a loopback connection comes from a program of this process's user,
as the Rust host's listener checks (``host/src/authorize.rs`` ``same_user``):
another local user may have read the start URL on the browser opener's
command line, and must get neither the authorization URL nor a say in the
redirect. Linux tells: ``/proc/net/tcp`` and ``tcp6`` list every socket with
its owner's uid. Elsewhere every connection is allowed (the one-use start URL
and the component's state check are what protect there)."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import Optional


def same_user(conn: socket.socket) -> bool:
    """True when the socket at the other end of ``conn`` is owned by this
    process's (effective) uid. A peer socket missing from a readable table (it
    reset, or its program closed it: a row without an inode has no owner left
    and shows uid 0) is refused: failing open there would serve whoever made
    its socket unfindable. Where the table cannot be read at all, allowed. Any
    state counts: a peer that half-closed after its request is FIN_WAIT2 and
    still reads the answer."""
    if sys.platform != "linux":
        return True
    try:
        peer, local = conn.getpeername(), conn.getsockname()
    except OSError:
        return False
    try:
        uid = socket_uid(peer, local)
    except OSError:
        return True
    return uid == os.geteuid()


def socket_uid(local: tuple, remote: tuple) -> Optional[int]:
    """The uid owning the live TCP socket ``local`` -> ``remote`` (socket
    addresses as ``getsockname`` gives them), or None; OSError when the table
    cannot be read. Read row by row and stopped at ours: the table grows with
    every socket on the machine, and each connection is looked up."""
    ip = ipaddress.ip_address(local[0].split("%")[0])
    want_local, want_remote = proc_address(local), proc_address(remote)
    key = f" {want_local} {want_remote} "
    with open("/proc/net/tcp" if ip.version == 4 else "/proc/net/tcp6", encoding="latin-1") as rows:
        for row in rows:
            if key not in row:
                continue
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            f = row.split()
            if len(f) > 9 and f[1] == want_local and f[2] == want_remote and f[9] != "0":
                return int(f[7])
    return None


def proc_address(address: tuple) -> str:
    """An address as ``/proc/net/tcp*`` prints it: each 32-bit word of the
    address in host byte order, in hex, then ``:`` and the port."""
    packed = ipaddress.ip_address(address[0].split("%")[0]).packed
    words = "".join(f"{int.from_bytes(packed[i:i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4))
    return f"{words}:{address[1]:04X}"
