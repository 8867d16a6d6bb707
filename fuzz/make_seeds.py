#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/seed-*.

Run from anywhere: python3 fuzz/make_seeds.py. Seeds are small real examples of each
format (a signed envelope, layer tars with whiteouts and links, docker-save and OCI
archives, the spec's JSON examples, devnet-shaped blocks and transactions, Core RPC
bodies, openraft messages); what the fuzzer finds beyond them is kept next to them,
minimised with `cargo fuzz cmin`. Needs python3 with `cryptography` (ed25519).
"""

import gzip
import hashlib
import io
import json
import os
import struct
import tarfile

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- envelope

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58(b):
    n = int.from_bytes(b, "big")
    s = ""
    while n:
        n, r = divmod(n, 58)
        s = B58[r] + s
    return "1" * (len(b) - len(b.lstrip(b"\0"))) + s


def keypair(seed):
    sk = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest())
    pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    proto = b"\x08\x01\x12\x20" + pk  # libp2p PublicKey protobuf: ed25519
    peer = b58(b"\x00\x24" + proto)  # identity multihash
    return sk, proto, peer


def put(b, field):
    return b + struct.pack(">I", len(field)) + field


def envelope(kind, sender_seed, receiver, ts, nonce, state, version, delegate_seed=None):
    sk, _, peer = keypair(sender_seed)
    checksum = hashlib.sha256(state.encode()).hexdigest()
    e = {"type": kind, "sender": peer, "receiver": receiver, "timestamp": ts, "nonce": nonce,
         "payload": {"state": state, "version": version, "checksum": checksum}}
    signer = sk
    if delegate_seed:
        dsk, dproto, _ = keypair(delegate_seed)
        not_after = ts + 3600
        dbytes = b"micro-os/delegation/1\0" + struct.pack(">I", len(dproto)) + dproto + struct.pack(">Q", not_after)
        e["delegation"] = {"key": dproto.hex(), "not_after": not_after, "signature": sk.sign(dbytes).hex()}
        signer = dsk
    b = b"micro-os/msg/1\0"
    for f in (kind.encode(), peer.encode(), receiver.encode()):
        b = put(b, f)
    b += struct.pack(">Q", ts)
    b = put(b, nonce.encode())
    b = put(b, state.encode())
    b += struct.pack(">Q", version)
    b = put(b, checksum.encode())
    if "delegation" in e:
        d = e["delegation"]
        b += b"\x01"
        b = put(b, d["key"].encode())
        b += struct.pack(">Q", d["not_after"])
        b = put(b, d["signature"].encode())
    else:
        b += b"\x00"
    e["signature"] = signer.sign(b).hex()
    return json.dumps(e, separators=(",", ":"))


def envelopes():
    _, _, vm2 = keypair(b"vm-2")
    write("envelope", "sync", envelope("SYNC", b"vm-1", vm2, 1_700_000_000, "00112233445566778899aabbccddeeff",
                                       '{"key":"k","value":"v"}', 2))
    write("envelope", "ping-delegated", envelope("PING", b"vm-1", vm2, 1_700_000_010, "ffeeddccbbaa99887766554433221100",
                                                 "", 0, delegate_seed=b"vm-1-rotated"))
    write("envelope", "data-broadcast", envelope("DATA", b"host", "*", 1_699_999_990, "0a0b0c0d0e0f10111213141516171819",
                                                 "x" * 64, 7))
    write("envelope", "spec-example", json.dumps({
        "type": "SYNC", "sender": "vm-id-1234", "receiver": "vm-id-5678", "timestamp": 1620000000,
        "nonce": "00", "signature": "...", "payload": {"state": "...", "version": 2, "checksum": "..."}}))


# ---------------------------------------------------------------- tars

def tar(entries, fmt=tarfile.GNU_FORMAT):
    """entries: (name, kind, data) with kind file|dir|sym|hard."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, data in entries:
            i = tarfile.TarInfo(name)
            i.mtime = 1_700_000_000
            if kind == "file":
                i.size = len(data)
                i.mode = 0o644
                t.addfile(i, io.BytesIO(data))
            elif kind == "dir":
                i.type, i.mode = tarfile.DIRTYPE, 0o755
                t.addfile(i)
            elif kind == "sym":
                i.type, i.linkname = tarfile.SYMTYPE, data
                t.addfile(i)
            elif kind == "hard":
                i.type, i.linkname = tarfile.LNKTYPE, data
                t.addfile(i)
    # end at the end-of-archive blocks, without tarfile's padding to 10 KiB
    data = buf.getvalue().rstrip(b"\0")
    return data + b"\0" * (-len(data) % 512) + b"\0" * 1024


def layers():
    lower = tar([("etc/", "dir", None), ("etc/keep", "file", b"keep"), ("etc/gone", "file", b"gone"),
                 ("data/", "dir", None), ("data/old", "file", b"old"), ("bin/", "dir", None),
                 ("bin/sh", "file", b"#!shell"), ("usr/lib/", "dir", None), ("lib", "sym", "usr/lib"),
                 ("etc/passwd.lnk", "hard", "etc/keep")])
    upper = tar([("etc/.wh.gone", "file", b""), ("data/.wh..wh..opq", "file", b""), ("data/new", "file", b"new"),
                 ("lib/libx.so", "file", b"\x7fELF")])
    write("image_layer", "lower", lower)
    write("image_layer", "two-layers", lower + upper)
    write("image_layer", "whiteouts", upper)
    # what must be refused or stay inside: writes through the lower layer's symlinks out
    # of the root (`up`, `abs`, `canary` in the target), hard links out, parent components
    write("image_layer", "escapes", tar([("up/x", "file", b"out"), ("canary", "file", b"over"),
                                         ("h", "hard", "canary"), ("h2", "hard", "up/canary"),
                                         ("abs/y", "file", b"out"), ("up/.wh.canary", "file", b""),
                                         ("../z", "file", b"z")]))
    write("image_layer", "symlink-then-write", tar([("s", "sym", "../../outside"), ("s/w", "file", b"w")])
          + tar([("s", "sym", "/"), ("s/tmp/w", "file", b"w"), ("s/.wh.tmp", "file", b"")]))
    write("image_layer", "pax-long", tar([("d" * 120 + "/", "dir", None), ("d" * 120 + "/" + "f" * 120, "file", b"x"),
                                          ("l", "sym", "e" * 200)], fmt=tarfile.PAX_FORMAT))
    return lower, upper


def images(lower, upper):
    # docker save: manifest.json, the config, one tar per layer
    cfg = json.dumps({"config": {"Cmd": ["cat", "/etc/keep"], "Env": ["A=1"], "WorkingDir": "/data"}}).encode()
    manifest = json.dumps([{"Config": "cfg.json", "RepoTags": ["docker.io/library/demo:2"],
                            "Layers": ["l0/layer.tar", "l1/layer.tar"]}]).encode()
    write("image_import", "docker-save", tar([("cfg.json", "file", cfg), ("l0/", "dir", None),
                                              ("l0/layer.tar", "file", lower), ("l1/", "dir", None),
                                              ("l1/layer.tar", "file", upper), ("manifest.json", "file", manifest)]))
    # an OCI layout with gzip layers and an index naming the image
    blobs = {}

    def blob(data):
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return "sha256:" + d
    config = blob(json.dumps({"config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"]}}).encode())
    ls = [blob(gzip.compress(l, mtime=0)) for l in (lower, upper)]
    m = blob(json.dumps({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                                        "digest": config},
                         "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d}
                                    for d in ls]}).encode())
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m,
        "annotations": {"org.opencontainers.image.ref.name": "demo:1.0"}}]}).encode()
    entries = [("oci-layout", "file", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", "file", index),
               ("blobs/", "dir", None), ("blobs/sha256/", "dir", None)]
    entries += [("blobs/sha256/" + d, "file", data) for d, data in blobs.items()]
    write("image_import", "oci-layout", tar(entries))
    # a root filesystem tarball, gzip'd; and an archive whose manifest points outside
    write("image_import", "rootfs-gz", gzip.compress(lower, mtime=0))
    write("image_import", "evil-manifest", tar([("manifest.json", "file", json.dumps(
        [{"Config": "../../outside/canary", "Layers": ["/etc/hostname"]}]).encode())]))
    write("image_import", "symlinked-layer", tar([("cfg.json", "file", cfg), ("l0", "sym", "../../outside/canary"),
                                                  ("manifest.json", "file", json.dumps(
                                                      [{"Config": "cfg.json", "Layers": ["l0"]}]).encode())]))


# ---------------------------------------------------------------- specs

def specs():
    docs = {
        "deploy-spec": {"containers": [{"name": "blockchain-node", "template": "blockchain-full-node",
                                        "network": {"mode": "overlay", "discovery": True}}]},
        "deploy-depends": {"containers": [
            {"name": "db", "image": "busybox", "command": ["sleep", "1000"],
             "health_check": {"type": "cmd", "command": ["true"], "interval_s": 2}},
            {"name": "app", "image": "busybox", "ports": ["8080:80/tcp"], "env": {"A": "1"},
             "resources": {"memory": "256M", "cpu": 0.5}, "restart": "on-failure:3",
             "depends_on": [{"name": "db", "condition": "healthy"}]}]},
        "create-rest": {"name": "api-container", "template": "blockchain-light"},
        "create-full": {"name": "web", "image": "busybox", "command": ["httpd", "-f"], "ports": ["9000:80"],
                        "resources": {"memory": "512M", "cpu": 1}, "restart": "always",
                        "health_check": {"type": "http", "port": 80, "path": "/", "interval_s": 2},
                        "config": {"LOG": "debug"}, "vm": "vm-1",
                        "network": {"mode": "overlay", "encryption": True, "name": "n1",
                                    "ports": {"8080": {"mode": "ingress"}}}},
        "vm-definitions": {"vms": [{"name": "vm-1", "memory": 4096, "cpu": 2},
                                   {"name": "vm-2", "memory": 512, "cpu": 0.5, "driver": "qemu",
                                    "image": "blockchain-base", "restart": "always"}]},
        "vm-list": [{"name": "vm-from-sdk", "memory": 2048, "cpu": 1}],
        "vm-spec": {"name": "vm-1", "memory_mib": 4096, "cpus": 2.0, "image": "blockchain-base",
                    "driver": "sandbox", "restart": "no"},
        "container-spec": {"name": "n", "image": "busybox", "ports": ["9000:9000/udp", "9000:80/tcp"]},
        "template": {"name": "x", "image": "busybox", "resources": {"memory": "400M", "cpu": 1}},
        "alert": {"name": "crash-loop", "metric": "restarts", "above": 2, "increase_over_s": 60,
                  "objects": "container/*"},
        "alert-for": {"name": "hot", "metric": "cpu_percent", "above": 90, "for_s": 30, "severity": "critical"},
        "raft": {"heartbeat_ms": 100, "election_timeout_ms": 500, "snapshot_every": 5000},
        "tx-config": {"batch_size": 256, "model_update_interval": 3600},
        "health": {"type": "http", "port": 80, "interval_s": 2},
        "agent-hello": {"type": "hello", "peer_id": "12D3KooWx", "version": "0.1.0"},
        "agent-health": {"type": "health", "load1": 0.5, "processes": 12, "problems": []},
        "local-request": {"token": "t", "request": {"call": "status", "circuit": "c"}},
        "network": {"mode": "host", "ports": {"8080": {}}},
    }
    for name, doc in docs.items():
        write("spec_json", name, json.dumps(doc, indent=2))
    for i, s in enumerate(["9000:80/tcp", "127.0.0.1:53:53/udp", "cpu=1,memory=512M", "4G", "512M",
                           "on-failure:3", "http://:8080/health", "A=1", "2024-01-01T10:00:00Z", "-1h,now",
                           "batch_size=512", "circuit/key.1"]):
        write("spec_json", "string-%02d" % i, s)


# ---------------------------------------------------------------- chain

def varint(n):
    if n < 0xfd:
        return bytes([n])
    if n <= 0xffff:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def script_num(n):
    b = n.to_bytes((n.bit_length() + 8) // 8, "little")
    return bytes([len(b)]) + b


def tx(inputs, outputs, witness=None, locktime=0, version=2):
    """inputs: (txid bytes, vout, scriptSig, sequence); outputs: (sats, script)."""
    body = varint(len(inputs))
    for txid, vout, ss, seq in inputs:
        body += txid + struct.pack("<I", vout) + varint(len(ss)) + ss + struct.pack("<I", seq)
    body += varint(len(outputs))
    for v, spk in outputs:
        body += struct.pack("<q", v) + varint(len(spk)) + spk
    if witness is None:
        return struct.pack("<i", version) + body + struct.pack("<I", locktime)
    w = b""
    for stack in witness:
        w += varint(len(stack)) + b"".join(varint(len(x)) + x for x in stack)
    return struct.pack("<i", version) + b"\x00\x01" + body + w + struct.pack("<I", locktime)


def dsha(b):
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def chain():
    p2wpkh = b"\x00\x14" + bytes(range(20))
    p2pkh = b"\x76\xa9\x14" + bytes(range(20, 40)) + b"\x88\xac"
    sig = bytes.fromhex("3044022020" + "11" * 31 + "022020" + "22" * 31 + "01")
    pub = b"\x02" + bytes(range(1, 33))
    prev = dsha(b"a coinbase")
    segwit = tx([(prev, 0, b"", 0xfffffffd)], [(49_9999_0000, p2wpkh), (1000, p2pkh)], witness=[[sig, pub]])
    legacy = tx([(prev, 1, bytes([len(sig)]) + sig + bytes([len(pub)]) + pub, 0xffffffff)], [(1_0000_0000, p2pkh)],
                version=1)
    two_in = tx([(prev, 0, b"", 0), (dsha(b"other"), 3, b"", 0)], [(5_000, b"\x6a\x04MOSU")],
                witness=[[sig, pub], []], locktime=100)
    for name, t in (("segwit", segwit), ("legacy", legacy), ("two-inputs", two_in)):
        write("chain_tx", name, b"\x00" + t)
        write("chain_tx", name + "-funded", b"\x01" + t)
    # a block at height 13 (the target's node has 12): BIP34 height, the devnet subsidy
    # (50 coins), a witness commitment; the target fixes parent, bits, time, root, nonce
    coinbase_wit = tx([(b"\0" * 32, 0xffffffff, script_num(13) + b"\x00", 0xffffffff)],
                      [(50_0000_0000, p2wpkh),
                       (0, b"\x6a\x24\xaa\x21\xa9\xed" + dsha(b"\0" * 32 + b"\0" * 32))],
                      witness=[[b"\0" * 32]])
    coinbase = tx([(b"\0" * 32, 0xffffffff, script_num(13) + b"\x00", 0xffffffff)], [(50_0000_0000, p2wpkh)])

    def block(txs, prev_hash=b"\0" * 32, bits=0x207fffff):
        txids = [dsha(t) for t in txs]  # legacy txids; the target recomputes the root anyway
        header = struct.pack("<i", 0x20000000) + prev_hash + txids[0] + struct.pack("<III", 1_700_000_000, bits, 0)
        return header + varint(len(txs)) + b"".join(txs)
    b1 = block([coinbase])
    b2 = block([coinbase_wit, segwit])
    write("chain_block", "coinbase-only", b"\x00" + b1)
    write("chain_block", "coinbase-only-fitted", b"\x01" + b1)
    write("chain_block", "with-tx-fitted", b"\x01" + b2)
    write("chain_block", "header", b"\x02" + b1[:80])
    write("chain_block", "seal", b"\x03" + bytes(range(200)))
    return segwit, b1


# ---------------------------------------------------------------- rpc

def rpc(segwit, b1):
    genesis_like = "00" * 32
    bodies = {
        "getblockcount": {"jsonrpc": "1.0", "id": 1, "method": "getblockcount", "params": []},
        "getblockchaininfo": {"jsonrpc": "1.0", "id": "curl", "method": "getblockchaininfo", "params": []},
        "getblockhash": {"jsonrpc": "1.0", "id": 2, "method": "getblockhash", "params": [0]},
        "getblock": {"jsonrpc": "1.0", "id": 3, "method": "getblock", "params": [genesis_like, 2]},
        "getblockheader": {"id": 4, "method": "getblockheader", "params": {"blockhash": genesis_like, "verbose": False}},
        "decoderawtransaction": {"id": 5, "method": "decoderawtransaction", "params": [segwit.hex()]},
        "sendrawtransaction": {"id": 6, "method": "sendrawtransaction", "params": [segwit.hex(), 0.1]},
        "submitblock": {"id": 7, "method": "submitblock", "params": [b1.hex()]},
        "getblocktemplate": {"id": 8, "method": "getblocktemplate", "params": [{"rules": ["segwit"]}]},
        "generatetoaddress": {"id": 9, "method": "generatetoaddress",
                              "params": [1, "bcrt1qqqqsyqcyq5rqwzqfpg9scrgwpugpzysn2a0ykh"]},
        "getnewaddress": {"id": 10, "method": "getnewaddress", "params": ["", "bech32"]},
        "sendtoaddress": {"id": 11, "method": "sendtoaddress",
                          "params": ["bcrt1qqqqsyqcyq5rqwzqfpg9scrgwpugpzysn2a0ykh", 0.5]},
        "getrawmempool": {"id": 12, "method": "getrawmempool", "params": [True]},
        "getrawtransaction": {"id": 13, "method": "getrawtransaction", "params": [genesis_like, True]},
        "listunspent": {"id": 14, "method": "listunspent", "params": [1, 9999999]},
        "getaiinfo": {"id": 15, "method": "getaiinfo", "params": []},
        "setaiconfig": {"id": 16, "method": "setaiconfig", "params": [True, {"batch_size": 128}]},
        "getmempoolentry": {"id": 17, "method": "getmempoolentry", "params": [genesis_like]},
        "batch": [{"jsonrpc": "2.0", "id": 1, "method": "getbestblockhash"}, {"id": 2, "method": "getdifficulty"},
                  {"id": 3, "method": "getmininginfo"}, {"id": 4, "method": "getbalances"}, 5],
    }
    for name, b in bodies.items():
        write("rpc_request", name, json.dumps(b))


# ---------------------------------------------------------------- raft

def raft():
    def lid(term, node, index):
        return {"leader_id": {"term": term, "node_id": node}, "index": index}
    vote = {"leader_id": {"term": 2, "node_id": 1}, "committed": True}
    members = {"1": {"peer": "12D3KooWA", "addr": "/ip4/10.88.0.2/tcp/4001"},
               "2": {"peer": "12D3KooWB", "addr": "/ip4/10.88.0.3/tcp/4001"}}
    membership = {"configs": [[1, 2]], "nodes": members}
    entries = [
        {"log_id": lid(2, 1, 5), "payload": "Blank"},
        {"log_id": lid(2, 1, 6), "payload": {"Normal": {"op": "set", "key": "head", "value": "{\"height\":1}"}}},
        {"log_id": lid(2, 1, 7), "payload": {"Normal": {"op": "compare_and_set", "key": "head",
                                                       "expected_version": 1, "value": "v2"}}},
        {"log_id": lid(2, 1, 8), "payload": {"Normal": {"op": "delete", "key": "head"}}},
        {"log_id": lid(2, 1, 9), "payload": {"Membership": membership}},
    ]
    applied = {"kv": {"entries": {"a": {"value": "1", "version": 3,
                                        "checksum": hashlib.sha256(b"1").hexdigest()}}},
               "last_applied": lid(2, 1, 9), "membership": {"log_id": lid(2, 1, 9), "membership": membership}}
    msgs = {
        "append": {"circuit": "c1", "body": {"append": {"vote": vote, "prev_log_id": lid(2, 1, 4), "entries": entries,
                                                        "leader_commit": lid(2, 1, 4)}}},
        "heartbeat": {"circuit": "c1", "body": {"append": {"vote": vote, "prev_log_id": None, "entries": [],
                                                           "leader_commit": None}}},
        "vote": {"circuit": "c1", "body": {"vote": {"vote": {"leader_id": {"term": 3, "node_id": 2},
                                                             "committed": False},
                                                    "last_log_id": lid(2, 1, 9)}}},
        "snapshot": {"circuit": "c1", "body": {"snapshot": {
            "vote": vote, "meta": {"last_log_id": lid(2, 1, 9), "last_membership":
                                   {"log_id": lid(2, 1, 9), "membership": membership}, "snapshot_id": "9-abc"},
            "offset": 0, "data": json.dumps(applied).encode().hex(), "done": True}}},
        "client-write": {"circuit": "c1", "body": {"client": {"write": {"op": "set", "key": "k", "value": "v"}}}},
        "client-read-index": {"circuit": "c1", "body": {"client": "read_index"}},
        "client-add": {"circuit": "c1", "body": {"client": {"add_member": {"node_id": 3, "member": {
            "peer": "12D3KooWC", "addr": "/ip4/10.88.0.4/tcp/4001"}}}}},
        "client-remove": {"circuit": "c1", "body": {"client": {"remove_member": {"node_id": 3}}}},
    }
    for name, m in msgs.items():
        write("raft_message", name, json.dumps(m))


if __name__ == "__main__":
    envelopes()
    lower, upper = layers()
    images(lower, upper)
    specs()
    segwit, b1 = chain()
    rpc(segwit, b1)
    raft()
