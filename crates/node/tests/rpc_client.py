"""Drives a micro-os-node through python-bitcoinrpc, a client library of Bitcoin Core's RPC.

Run by crates/node/tests/rpc.rs:
  rpc_client.py run URL            -- the scenario; prints one JSON line with the final state
  rpc_client.py check URL STATE    -- after a kill -9 and restart: the state is unchanged
"""

import json
import sys
from decimal import Decimal

from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException


def expect_error(fn, code, what):
    try:
        fn()
    except JSONRPCException as e:
        assert e.error["code"] == code, f"{what}: code {e.error['code']} ({e.error['message']}), want {code}"
        assert e.error["message"], f"{what}: empty message"
        return e.error["message"]
    raise AssertionError(f"{what}: no error, want code {code}")


def bump_first_output(tx_hex, delta_sat):
    """The same inputs with output 0 lowered by delta_sat (a segwit tx with empty scriptSigs)."""
    b = bytearray(bytes.fromhex(tx_hex))
    assert b[4:6] == b"\x00\x01", "a segwit transaction"
    n_in = b[6]
    pos = 7 + 41 * n_in + 1  # inputs (outpoint, empty scriptSig, sequence), then the output count
    value = int.from_bytes(b[pos:pos + 8], "little") - delta_sat
    b[pos:pos + 8] = value.to_bytes(8, "little")
    return b.hex()


def run(url):
    rpc = AuthServiceProxy(url, timeout=60)
    info = rpc.getblockchaininfo()
    assert info["chain"] == "devnet" and info["blocks"] == 0, info
    assert rpc.getblockcount() == 0
    assert rpc.getpeerinfo() == []
    assert rpc.getnetworkinfo()["connections"] == 0
    assert rpc.uptime() >= 0

    addr = rpc.getnewaddress()
    assert addr.startswith("bcrt1q"), addr
    hashes = rpc.generatetoaddress(120, addr)
    assert len(hashes) == 120 and rpc.getbestblockhash() == hashes[-1]
    assert rpc.getblockhash(120) == hashes[-1]
    balance = rpc.getbalance()
    assert isinstance(balance, Decimal) and balance > 0, balance
    # Maturity 10 on devnet: coinbases of heights 1..111 are spendable at height 121.
    assert balance == Decimal(50 * 111), balance

    to = rpc.getnewaddress()
    txid = rpc.sendtoaddress(to, Decimal("1.5"))
    assert txid in rpc.getrawmempool(), "the wallet's tx is in the mempool"
    entry = rpc.getrawmempool(True)[txid]
    assert entry["vsize"] > 0 and entry["fees"]["base"] > 0, entry
    assert rpc.getmempoolinfo()["size"] == 1

    gbt = rpc.getblocktemplate({"rules": ["segwit"]})
    for field in ["previousblockhash", "transactions", "coinbasevalue", "target", "mintime", "curtime", "bits",
                  "height", "default_witness_commitment", "mutable", "noncerange", "sizelimit", "weightlimit",
                  "rules"]:
        assert field in gbt, f"getblocktemplate lacks {field}"
    assert gbt["previousblockhash"] == hashes[-1] and gbt["height"] == 121, gbt
    t = gbt["transactions"][0]
    assert t["txid"] == txid and t["fee"] > 0 and t["weight"] > 0 and t["depends"] == [] and t["data"], t
    assert gbt["coinbasevalue"] == 50 * 10**8 + t["fee"], gbt["coinbasevalue"]
    assert len(gbt["target"]) == 64 and len(gbt["bits"]) == 8

    mined = rpc.generatetoaddress(1, addr)
    assert rpc.getrawmempool() == []
    raw = rpc.getrawtransaction(txid, True)
    assert raw["blockhash"] == mined[0] and raw["confirmations"] == 1, raw
    assert any(o["value"] == Decimal("1.5") and o["scriptPubKey"]["address"] == to for o in raw["vout"]), raw

    block_hex = rpc.getblock(mined[0], 0)
    assert isinstance(block_hex, str) and len(block_hex) > 160
    b1 = rpc.getblock(mined[0], 1)
    assert b1["height"] == 121 and b1["tx"][1] == txid and b1["previousblockhash"] == hashes[-1], b1
    b2 = rpc.getblock(mined[0], 2)
    assert b2["tx"][1]["txid"] == txid and "vin" in b2["tx"][1] and "coinbase" in b2["tx"][0]["vin"][0], b2
    header = rpc.getblockheader(mined[0])
    assert header["height"] == 121 and header["confirmations"] == 1
    assert rpc.getblockheader(mined[0], False) == block_hex[:160]

    # submitblock: a decodable block with a broken merkle root gets a BIP22 reason; bytes
    # that are no block at all are a decode error; the tip itself is a duplicate.
    broken = bytearray(bytes.fromhex(block_hex))
    broken[36] ^= 0xFF
    reason = rpc.submitblock(broken.hex())
    assert reason in ("bad-txnmrklroot", "high-hash"), reason
    expect_error(lambda: rpc.submitblock("00"), -22, "garbage submitblock")
    assert rpc.submitblock(block_hex) == "duplicate"

    # Double spends: of a mempool transaction's input (conflict), and of a confirmed one.
    tx2 = rpc.sendtoaddress(to, Decimal("2"))
    tx2_hex = rpc.getrawtransaction(tx2)
    msg = expect_error(lambda: rpc.sendrawtransaction(bump_first_output(tx2_hex, 1000)), -26, "mempool double spend")
    assert "txn-mempool-conflict" in msg, msg
    msg = expect_error(lambda: rpc.sendrawtransaction(bump_first_output(raw["hex"], 1000)), -26, "chain double spend")
    assert "bad-txns-inputs-missingorspent" in msg, msg
    expect_error(lambda: rpc.sendrawtransaction(raw["hex"]), -27, "resending a confirmed tx")
    expect_error(lambda: rpc.sendtoaddress("bcrt1qnotanaddress", 1), -5, "bad address")
    expect_error(lambda: rpc.sendtoaddress(to, 10**7), -6, "too much")
    expect_error(lambda: rpc.nosuchmethod(), -32601, "unknown method")

    rpc.generatetoaddress(1, addr)
    count, best = rpc.batch_([["getblockcount"], ["getbestblockhash"]])
    assert count == 122, count
    mining = rpc.getmininginfo()
    assert mining["blocks"] == 122 and mining["pooledtx"] == 0, mining
    state = {"height": count, "tip": best, "balance": str(rpc.getbalance())}
    print(json.dumps(state))


def check(url, state):
    want = json.loads(state)
    rpc = AuthServiceProxy(url, timeout=60)
    got = {"height": rpc.getblockcount(), "tip": rpc.getbestblockhash(), "balance": str(rpc.getbalance())}
    assert got == want, f"after kill -9 and restart: {got}, before: {want}"
    # The node still works: a new block on the restored tip.
    rpc.generatetoaddress(1, rpc.getnewaddress())
    assert rpc.getblockcount() == want["height"] + 1
    print("ok")


if __name__ == "__main__":
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "run":
        run(url)
    else:
        check(url, sys.argv[3])
