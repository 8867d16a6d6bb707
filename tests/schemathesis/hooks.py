"""schemathesis hooks for micro-os's API (loaded by scripts/schemathesis.sh through
SCHEMATHESIS_HOOKS): strategies for the string formats of our own that the document
names, so that generated requests are what the format says."""

import os

import schemathesis
from hypothesis import strategies as st

# a host address: a real multiaddr ending in /p2p/<peer id> of a key nobody holds, on
# loopback ports nothing of this test listens on (the daemon's own address is "this host")
def _register_formats():
    schemathesis.openapi.format(
    "multiaddr",
        st.builds(
            lambda port, peer, quic: f"/ip4/127.0.0.1/{'udp' if quic else 'tcp'}/{port}"
            + ("/quic-v1" if quic else "")
            + f"/p2p/{peer}",
            st.integers(min_value=1, max_value=65535),
            st.sampled_from([_peer_id() for _ in range(4)]),
            st.booleans(),
        ),
    )


def _peer_id() -> str:
    """A real peer id of a key nobody holds: the identity multihash of a protobuf-encoded
    ed25519 public key, in base58btc."""
    raw = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + os.urandom(32)
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    n, out = int.from_bytes(raw, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = alphabet[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


_register_formats()
