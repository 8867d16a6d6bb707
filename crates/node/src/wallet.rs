//! The node's wallet: P2WPKH keys in their own SQLite file, balances from the chain state's
//! UTXO set (and the mempool), and signed spends for `sendtoaddress`.
//!
//! Key design decisions: the wallet keeps no transaction history and no UTXO set of its
//! own — the chain state is the one source of truth, asked per wallet script
//! (`ChainState::coins_for`), so a reorganisation or a `kill -9` can never leave the wallet
//! disagreeing with the chain. A key is committed (SQLite `synchronous=FULL`, i.e. fsync'd)
//! before its address is handed out, so an address once shown is never lost. Keys are stored
//! unencrypted in a 0600 file: this is a node's hot wallet for tests and mining payouts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{rand, All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{
    absolute::LockTime, Address, Amount, CompressedPublicKey, FeeRate, OutPoint, Script, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Witness,
};
use micro_os_chain::chainstate::ChainState;
use micro_os_chain::mempool::Mempool;
use micro_os_chain::params::Params;
use rusqlite::{params, Connection};

/// The fee rate `sendtoaddress` pays unless told otherwise.
pub const DEFAULT_FEE_RATE: FeeRate = FeeRate::from_sat_per_kwu(500); // 2 sat/vB

/// Outputs below this are not created (Core's dust limit of a P2WPKH output at 3 sat/vB).
pub const DUST: Amount = Amount::from_sat(294);

/// What the wallet could not do.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("wallet store {path}: {source}")]
    Store { path: PathBuf, source: rusqlite::Error },
    #[error("wallet file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("wallet {path}: key {id} is not a valid secret key")]
    CorruptKey { path: PathBuf, id: i64 },
    #[error("address {address:?} is not valid: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("amount {} sat is below the dust limit of {} sat", amount.to_sat(), DUST.to_sat())]
    Dust { amount: Amount },
    #[error("insufficient funds: sending {} sat with fee needs {} sat, the wallet has {} sat spendable", amount.to_sat(), needed.to_sat(), available.to_sat())]
    InsufficientFunds { amount: Amount, needed: Amount, available: Amount },
    #[error("chain state: {0}")]
    Chain(#[from] micro_os_chain::error::Error),
}

/// Parses `s` as an address of `params`' network.
pub fn parse_address(s: &str, params: &Params) -> Result<Address, WalletError> {
    let bad = |reason: String| WalletError::BadAddress { address: s.to_string(), reason };
    let unchecked: Address<NetworkUnchecked> = Address::from_str(s).map_err(|e| bad(e.to_string()))?;
    unchecked.require_network(params.network).map_err(|_| bad(format!("not an address of the {} network", params.name)))
}

struct Key {
    sk: SecretKey,
    pk: CompressedPublicKey,
}

/// A wallet coin: a spendable-or-not output paying one of the wallet's scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletCoin {
    pub outpoint: OutPoint,
    pub output: TxOut,
    /// Confirmations: 0 for an output of a mempool transaction.
    pub confirmations: u32,
    pub coinbase: bool,
    /// Mature and not spent by a mempool transaction.
    pub spendable: bool,
}

/// The wallet's balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balance {
    /// Confirmed and mature, not spent by the mempool.
    pub confirmed: Amount,
    /// Outputs of mempool transactions paying the wallet.
    pub unconfirmed: Amount,
    /// Coinbase outputs that are not mature yet.
    pub immature: Amount,
}

impl Balance {
    /// The balances of a list of coins (a light wallet's).
    pub fn of(coins: &[WalletCoin]) -> Balance {
        let mut b = Balance::default();
        for c in coins {
            match (c.confirmations, c.spendable) {
                (0, _) => b.unconfirmed += c.output.value,
                (_, true) => b.confirmed += c.output.value,
                (_, false) if c.coinbase => b.immature += c.output.value,
                (_, false) => {}
            }
        }
        b
    }

    /// What `getbalance` reports: confirmed plus unconfirmed (Core's trusted balance, as the
    /// only unconfirmed outputs a node wallet sees paying it are usually its own change).
    pub fn trusted(&self) -> Amount {
        self.confirmed + self.unconfirmed
    }
}

/// The wallet. See the module documentation.
pub struct Wallet {
    conn: Connection,
    path: PathBuf,
    params: &'static Params,
    secp: Secp256k1<All>,
    keys: Vec<Key>,
    by_script: HashMap<ScriptBuf, usize>,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet").field("path", &self.path).field("keys", &self.keys.len()).finish()
    }
}

impl Wallet {
    /// Opens (creating) the wallet file at `path`.
    pub fn open(path: impl AsRef<Path>, params: &'static Params) -> Result<Wallet, WalletError> {
        let path = path.as_ref().to_path_buf();
        let store = |source| WalletError::Store { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(store)?;
        set_private(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(store)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(store)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS keys (id INTEGER PRIMARY KEY, secret BLOB NOT NULL, change INTEGER NOT NULL)",
        )
        .map_err(store)?;
        let secp = Secp256k1::new();
        let rows: Vec<(i64, Vec<u8>)> = {
            let mut stmt = conn.prepare("SELECT id, secret FROM keys ORDER BY id").map_err(store)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(store)?;
            rows.collect::<rusqlite::Result<_>>().map_err(store)?
        };
        let mut wallet = Wallet { conn, path, params, secp, keys: Vec::new(), by_script: HashMap::new() };
        for (id, secret) in rows {
            let sk = SecretKey::from_slice(&secret)
                .map_err(|_| WalletError::CorruptKey { path: wallet.path.clone(), id })?;
            wallet.remember(sk);
        }
        Ok(wallet)
    }

    fn remember(&mut self, sk: SecretKey) -> usize {
        let pk = CompressedPublicKey(sk.public_key(&self.secp));
        let script = ScriptBuf::new_p2wpkh(&pk.wpubkey_hash());
        self.keys.push(Key { sk, pk });
        self.by_script.insert(script, self.keys.len() - 1);
        self.keys.len() - 1
    }

    fn store_err(&self, source: rusqlite::Error) -> WalletError {
        WalletError::Store { path: self.path.clone(), source }
    }

    fn new_key(&mut self, change: bool) -> Result<usize, WalletError> {
        let sk = SecretKey::new(&mut rand::thread_rng());
        self.conn
            .execute("INSERT INTO keys (secret, change) VALUES (?1, ?2)", params![sk.secret_bytes().to_vec(), change])
            .map_err(|e| self.store_err(e))?;
        Ok(self.remember(sk))
    }

    fn address_of(&self, i: usize) -> Address {
        Address::p2wpkh(&self.keys[i].pk, self.params.hrp())
    }

    /// A new receiving address; its key is on disk before this returns.
    pub fn new_address(&mut self) -> Result<Address, WalletError> {
        let i = self.new_key(false)?;
        Ok(self.address_of(i))
    }

    /// The first receiving address, created when the wallet has none (the default payout).
    pub fn default_address(&mut self) -> Result<Address, WalletError> {
        match self.keys.is_empty() {
            true => self.new_address(),
            false => Ok(self.address_of(0)),
        }
    }

    /// Whether `script` pays this wallet.
    pub fn is_mine(&self, script: &Script) -> bool {
        self.by_script.contains_key(script)
    }

    /// Every script of the wallet (what a light node asks proofs for).
    pub fn scripts(&self) -> Vec<ScriptBuf> {
        self.by_script.keys().cloned().collect()
    }

    pub fn params(&self) -> &'static Params {
        self.params
    }

    /// Number of keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The wallet's coins: confirmed (from the chain state) and unconfirmed (outputs of
    /// mempool transactions not spent in the pool), largest first.
    pub fn coins(&self, chain: &ChainState, pool: &Mempool) -> Result<Vec<WalletCoin>, WalletError> {
        let tip = chain.tip().0;
        let maturity = chain.params().coinbase_maturity;
        let mut coins = Vec::new();
        for script in self.by_script.keys() {
            for (outpoint, coin) in chain.coins_for(script)? {
                // Spending at the next height, as the next block would.
                let mature = !coin.coinbase || (tip + 1).saturating_sub(coin.height) >= maturity;
                coins.push(WalletCoin {
                    outpoint,
                    output: coin.output,
                    confirmations: tip + 1 - coin.height.min(tip),
                    coinbase: coin.coinbase,
                    spendable: mature && pool.spender(&outpoint).is_none(),
                });
            }
        }
        for txid in pool.txids() {
            let Some(entry) = pool.get(&txid) else { continue };
            for (vout, out) in entry.tx.output.iter().enumerate() {
                let outpoint = OutPoint { txid, vout: vout as u32 };
                if self.is_mine(&out.script_pubkey) && pool.output(&outpoint).is_some() {
                    coins.push(WalletCoin {
                        outpoint,
                        output: out.clone(),
                        confirmations: 0,
                        coinbase: false,
                        spendable: true,
                    });
                }
            }
        }
        coins.sort_by(|a, b| b.output.value.cmp(&a.output.value).then(a.outpoint.cmp(&b.outpoint)));
        Ok(coins)
    }

    /// The wallet's balances.
    pub fn balance(&self, chain: &ChainState, pool: &Mempool) -> Result<Balance, WalletError> {
        let mut b = Balance::default();
        for c in self.coins(chain, pool)? {
            match (c.confirmations, c.spendable) {
                (0, _) => b.unconfirmed += c.output.value,
                (_, true) => b.confirmed += c.output.value,
                (_, false) if c.coinbase && pool.spender(&c.outpoint).is_none() => b.immature += c.output.value,
                (_, false) => {}
            }
        }
        Ok(b)
    }

    /// The address of a wallet script, for `listunspent`.
    pub fn address_for(&self, script: &Script) -> Option<Address> {
        self.by_script.get(script).map(|&i| self.address_of(i))
    }

    /// A signed transaction paying `amount` to `to` at `fee_rate`: the largest spendable
    /// coins first, change (when above dust) to a new wallet address.
    pub fn create_send(
        &mut self,
        chain: &ChainState,
        pool: &Mempool,
        to: ScriptBuf,
        amount: Amount,
        fee_rate: FeeRate,
    ) -> Result<Transaction, WalletError> {
        let coins = self.coins(chain, pool)?;
        self.create_send_from(coins, to, amount, fee_rate)
    }

    /// [`Wallet::create_send`] from the given coins (a light node's, proven by merkle proofs).
    pub fn create_send_from(
        &mut self,
        coins: Vec<WalletCoin>,
        to: ScriptBuf,
        amount: Amount,
        fee_rate: FeeRate,
    ) -> Result<Transaction, WalletError> {
        if amount < DUST {
            return Err(WalletError::Dust { amount });
        }
        let coins: Vec<WalletCoin> = coins.into_iter().filter(|c| c.spendable).collect();
        let available = coins.iter().map(|c| c.output.value).sum::<Amount>();
        let pay = TxOut { value: amount, script_pubkey: to };
        // A change output's script has the same size whatever the key: estimate with a dummy.
        let dummy_change = TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([0u8; 20])),
        };
        let mut selected: Vec<&WalletCoin> = Vec::new();
        let mut total = Amount::ZERO;
        let mut plan = None;
        for coin in &coins {
            selected.push(coin);
            total += coin.output.value;
            let fee_change = fee_for(&selected, &[pay.clone(), dummy_change.clone()], fee_rate);
            if total >= amount + fee_change + DUST {
                plan = Some(Some(total - amount - fee_change));
                break;
            }
            let fee_plain = fee_for(&selected, std::slice::from_ref(&pay), fee_rate);
            if total >= amount + fee_plain {
                plan = Some(None); // the rest (less than dust plus a change output's fee) goes to fee
                break;
            }
        }
        let Some(change) = plan else {
            let needed = amount + fee_for(&coins.iter().collect::<Vec<_>>(), std::slice::from_ref(&pay), fee_rate);
            return Err(WalletError::InsufficientFunds { amount, needed, available });
        };
        let mut outputs = vec![pay];
        if let Some(value) = change {
            let i = self.new_key(true)?;
            outputs.push(TxOut { value, script_pubkey: self.address_of(i).script_pubkey() });
        }
        let mut tx = unsigned(&selected, outputs);
        self.sign(&mut tx, &selected);
        Ok(tx)
    }

    /// Signs every input (each spends a P2WPKH output of this wallet) with SIGHASH_ALL.
    pub(crate) fn sign(&self, tx: &mut Transaction, spent: &[&WalletCoin]) {
        let mut witnesses = Vec::with_capacity(spent.len());
        {
            let mut cache = SighashCache::new(&*tx);
            for (i, coin) in spent.iter().enumerate() {
                let key = &self.keys[self.by_script[&coin.output.script_pubkey]];
                let hash = cache
                    .p2wpkh_signature_hash(i, &coin.output.script_pubkey, coin.output.value, EcdsaSighashType::All)
                    .expect("input index in range and script is p2wpkh");
                let sig = self.secp.sign_ecdsa(&Message::from_digest(hash.to_byte_array()), &key.sk);
                let sig = bitcoin::ecdsa::Signature { signature: sig, sighash_type: EcdsaSighashType::All };
                witnesses.push(Witness::p2wpkh(&sig, &key.pk.0));
            }
        }
        for (input, w) in tx.input.iter_mut().zip(witnesses) {
            input.witness = w;
        }
    }
}

pub(crate) fn unsigned(spent: &[&WalletCoin], output: Vec<TxOut>) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: spent
            .iter()
            .map(|c| TxIn {
                previous_output: c.outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output,
    }
}

/// The fee of spending `spent` to `outputs` at `rate`, sized with the largest P2WPKH
/// witness (a 72-byte signature and a 33-byte key), so the signed transaction never pays less.
fn fee_for(spent: &[&WalletCoin], outputs: &[TxOut], rate: FeeRate) -> Amount {
    let mut tx = unsigned(spent, outputs.to_vec());
    for input in &mut tx.input {
        input.witness = Witness::from_slice(&[vec![0u8; 72], vec![0u8; 33]]);
    }
    rate.fee_vb(tx.vsize() as u64).expect("fee in range")
}

#[cfg(unix)]
fn set_private(path: &Path) -> Result<(), WalletError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| WalletError::Io { path: path.to_path_buf(), source })
}

#[cfg(not(unix))]
fn set_private(_path: &Path) -> Result<(), WalletError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_os_chain::validation::check_tx_inputs;

    #[test]
    fn addresses_survive_reopen_and_belong_to_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let p = Params::devnet();
        let a = {
            let mut w = Wallet::open(dir.path().join("wallet.sqlite"), p).unwrap();
            let a = w.new_address().unwrap();
            assert!(a.to_string().starts_with("bcrt1q"), "{a}");
            assert!(w.is_mine(&a.script_pubkey()));
            a
        };
        let w = Wallet::open(dir.path().join("wallet.sqlite"), p).unwrap();
        assert!(w.is_mine(&a.script_pubkey()));
        assert_eq!(w.key_count(), 1);
        let mode = std::fs::metadata(dir.path().join("wallet.sqlite")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        assert!(parse_address(&a.to_string(), p).is_ok());
        let e = parse_address(&a.to_string(), Params::mainnet()).unwrap_err().to_string();
        assert!(e.contains("not an address of the mainnet network"), "{e}");
        let e = parse_address("nope", p).unwrap_err().to_string();
        assert!(e.starts_with("address \"nope\" is not valid"), "{e}");
    }

    #[test]
    fn fee_estimate_covers_the_signed_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = Params::devnet();
        let mut w = Wallet::open(dir.path().join("w.sqlite"), p).unwrap();
        let a = w.new_address().unwrap();
        let coin = WalletCoin {
            outpoint: OutPoint { txid: bitcoin::Txid::all_zeros(), vout: 0 },
            output: TxOut { value: Amount::from_sat(100_000), script_pubkey: a.script_pubkey() },
            confirmations: 20,
            coinbase: false,
            spendable: true,
        };
        let outs = [TxOut { value: Amount::from_sat(50_000), script_pubkey: a.script_pubkey() }];
        let mut tx = unsigned(&[&coin], outs.to_vec());
        w.sign(&mut tx, &[&coin]);
        let estimate = fee_for(&[&coin], &outs, FeeRate::from_sat_per_vb_u32(1));
        assert!(estimate.to_sat() >= tx.vsize() as u64, "estimate {estimate} for {} vB", tx.vsize());
        assert!(estimate.to_sat() <= tx.vsize() as u64 + 1);
        // The signature verifies under the chain's own rules.
        let view: HashMap<OutPoint, micro_os_chain::validation::Coin> = [(
            coin.outpoint,
            micro_os_chain::validation::Coin { output: coin.output.clone(), height: 1, coinbase: false },
        )]
        .into();
        assert_eq!(check_tx_inputs(&tx, &view, 30, p).unwrap(), Amount::from_sat(50_000));
    }
}
