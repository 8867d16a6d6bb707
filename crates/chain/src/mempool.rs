//! The transaction memory pool, in Bitcoin Core's shape: entries with in-pool parent/child
//! links and Core's `CTxMemPoolEntry` package statistics (ancestor count/size/fees,
//! descendant count/size/fees), a spent-outpoint index (`mapNextTx`), package limits, a size
//! cap enforced by evicting the lowest descendant-score package with a rolling minimum fee,
//! an orphan pool, and block-template selection by ancestor fee rate
//! (`BlockAssembler::addPackageTxs`).
//!
//! Key design decisions:
//! * The pool validates no scripts and looks up no chain state: the caller checks a
//!   transaction against the chain plus [`Mempool::output`] (outputs of pool transactions) and
//!   passes the fee in. The pool enforces only its own rules: no conflicts (no replacement),
//!   no duplicates, the minimum fee rate and the package limits.
//! * Package statistics are recomputed from the graph (breadth-first over the links) for every
//!   entry an insertion or removal touches, rather than adjusted incrementally. Packages are
//!   bounded by the limits (25 transactions), so this costs little, and one code path serves
//!   the ordinary insertion, the removal of a mined parent whose children stay, and the re-add
//!   after a disconnected block of a parent whose children are already in the pool.
//! * Sizes are virtual sizes (BIP141 weight / 4, rounded up) without Core's sigop adjustment;
//!   the cap (`max_bytes`) applies to the sum of virtual sizes, not to memory usage.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bitcoin::{Amount, Block, FeeRate, OutPoint, Transaction, TxOut, Txid, Weight};

/// Core's `ROLLING_FEE_HALFLIFE`: the rolling minimum fee halves every 12 hours once a block
/// has been connected since it was last raised (faster when the pool is mostly empty).
const ROLLING_FEE_HALFLIFE: f64 = 12.0 * 60.0 * 60.0;

/// Core's `MAX_CONSECUTIVE_FAILURES` in block assembly.
const MAX_CONSECUTIVE_FAILURES: u32 = 1000;

/// Estimated bookkeeping bytes per entry beyond the serialized transaction, for `usage`.
const ENTRY_OVERHEAD: u64 = 256;

/// The pool's rules. [`Policy::default`] is Core's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Transactions paying less are refused (Core's `-minrelaytxfee`); also the block
    /// template's minimum package fee rate (`-blockmintxfee`).
    pub min_fee_rate: FeeRate,
    /// Added to the fee rate of an evicted package to get the new rolling minimum
    /// (`-incrementalrelayfee`).
    pub incremental_relay_fee: FeeRate,
    /// Most in-pool ancestors a transaction may have, counting itself (`-limitancestorcount`).
    pub ancestor_count: u64,
    /// Largest virtual size of a transaction with its ancestors (`-limitancestorsize`).
    pub ancestor_vsize: u64,
    /// Most in-pool descendants a transaction may have, counting itself.
    pub descendant_count: u64,
    /// Largest virtual size of a transaction with its descendants.
    pub descendant_vsize: u64,
    /// Orphans held at most (Core's `DEFAULT_MAX_ORPHAN_TRANSACTIONS`).
    pub max_orphans: usize,
    /// Seconds an orphan is held (Core's `ORPHAN_TX_EXPIRE_TIME` is 20 minutes).
    pub orphan_ttl: u64,
    /// Heaviest orphan held (Core's `MAX_STANDARD_TX_WEIGHT`).
    pub max_orphan_weight: Weight,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_fee_rate: FeeRate::from_sat_per_vb_u32(1),
            incremental_relay_fee: FeeRate::from_sat_per_vb_u32(1),
            ancestor_count: 25,
            ancestor_vsize: 101_000,
            descendant_count: 25,
            descendant_vsize: 101_000,
            max_orphans: 100,
            orphan_ttl: 20 * 60,
            max_orphan_weight: Weight::from_wu(400_000),
        }
    }
}

/// Why the pool refused a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("tx {txid} is already in the mempool")]
    Duplicate { txid: Txid },
    #[error("tx {txid} is already held as an orphan")]
    DuplicateOrphan { txid: Txid },
    #[error("tx {txid} is a coinbase, which only a block may contain")]
    Coinbase { txid: Txid },
    #[error("tx {txid} spends {outpoint}, already spent by mempool tx {spent_by} (no replacement)")]
    Conflict { txid: Txid, outpoint: OutPoint, spent_by: Txid },
    #[error(
        "tx {txid} pays {} sat for {vsize} vB, below the mempool minimum of {} sat ({} sat/kvB)",
        fee.to_sat(), required.to_sat(), min_rate_kvb
    )]
    FeeTooLow { txid: Txid, fee: Amount, vsize: u64, required: Amount, min_rate_kvb: u64 },
    #[error("tx {txid} would have {count} unconfirmed ancestors counting itself; the limit is {limit}")]
    TooManyAncestors { txid: Txid, count: u64, limit: u64 },
    #[error("tx {txid} with its unconfirmed ancestors would be {vsize} vB; the limit is {limit}")]
    AncestorsTooLarge { txid: Txid, vsize: u64, limit: u64 },
    #[error("tx {txid} would give its ancestor {ancestor} {count} descendants counting itself; the limit is {limit}")]
    TooManyDescendants { txid: Txid, ancestor: Txid, count: u64, limit: u64 },
    #[error("tx {txid} would make its ancestor {ancestor} and its descendants {vsize} vB; the limit is {limit}")]
    DescendantsTooLarge { txid: Txid, ancestor: Txid, vsize: u64, limit: u64 },
    /// `evicted`: other transactions evicted before it while trimming.
    #[error("tx {txid} was accepted and at once evicted: the mempool is full and it pays too little")]
    MempoolFull { txid: Txid, evicted: Vec<Transaction> },
    #[error("orphan tx {txid} weighs {} wu; at most {} are held", weight.to_wu(), limit.to_wu())]
    OrphanTooLarge { txid: Txid, weight: Weight, limit: Weight },
}

/// A pool transaction with its package statistics (Core's `CTxMemPoolEntry`). The ancestor
/// and descendant figures count the entry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub tx: Transaction,
    pub txid: Txid,
    pub fee: Amount,
    pub vsize: u64,
    pub weight: Weight,
    /// When it entered the pool (unix seconds).
    pub time: u64,
    /// In-pool transactions it spends from (getrawmempool's `depends`).
    pub parents: BTreeSet<Txid>,
    /// In-pool transactions spending from it (getrawmempool's `spentby`).
    pub children: BTreeSet<Txid>,
    pub ancestor_count: u64,
    pub ancestor_vsize: u64,
    pub ancestor_fees: Amount,
    pub descendant_count: u64,
    pub descendant_vsize: u64,
    pub descendant_fees: Amount,
}

impl Entry {
    /// The entry's own fee rate.
    pub fn fee_rate(&self) -> FeeRate {
        rate(self.fee.to_sat(), self.vsize)
    }

    /// Core's ancestor score: the lower of the entry's own fee rate and its package's with
    /// ancestors, as `(fees, vsize)`.
    fn ancestor_score(&self) -> (u64, u64) {
        min_rate((self.fee.to_sat(), self.vsize), (self.ancestor_fees.to_sat(), self.ancestor_vsize))
    }

    /// Core's descendant score: the higher of the entry's own fee rate and its package's with
    /// descendants.
    fn descendant_score(&self) -> (u64, u64) {
        let own = (self.fee.to_sat(), self.vsize);
        let desc = (self.descendant_fees.to_sat(), self.descendant_vsize);
        if rate_cmp(own, desc).is_gt() {
            own
        } else {
            desc
        }
    }
}

/// What [`Mempool::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub txid: Txid,
    /// Packages evicted to bring the pool back under its cap.
    pub evicted: Vec<Transaction>,
}

/// What [`Mempool::remove_for_block`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockRemoval {
    /// Pool transactions the block contains.
    pub mined: Vec<Txid>,
    /// Pool transactions spending an output a block transaction spends, with their
    /// descendants.
    pub conflicted: Vec<Transaction>,
    /// Orphans the block contains or conflicts with.
    pub orphans: Vec<Txid>,
}

/// The figures of RPC `getmempoolinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MempoolInfo {
    /// Transactions.
    pub size: usize,
    /// Sum of virtual sizes.
    pub bytes: u64,
    /// Estimated memory used.
    pub usage: u64,
    pub total_fee: Amount,
    /// The cap on `bytes`.
    pub max_mempool: u64,
    /// The fee rate a transaction needs now: the larger of `min_relay_tx_fee` and the rolling
    /// minimum raised by evictions.
    pub mempool_min_fee: FeeRate,
    pub min_relay_tx_fee: FeeRate,
    pub incremental_relay_fee: FeeRate,
    /// Orphans held.
    pub orphans: usize,
}

#[derive(Debug, Clone)]
struct Orphan {
    tx: Transaction,
    time: u64,
}

/// The memory pool. See the module documentation.
#[derive(Debug, Clone)]
pub struct Mempool {
    max_bytes: u64,
    policy: Policy,
    entries: HashMap<Txid, Entry>,
    /// Outpoint → the pool transaction spending it (Core's `mapNextTx`).
    spenders: HashMap<OutPoint, Txid>,
    total_vsize: u64,
    total_fee: u64,
    usage: u64,
    /// Core's `rollingMinimumFeeRate`, in sat/kvB.
    rolling_min_fee: f64,
    last_rolling_update: u64,
    block_since_bump: bool,
    orphans: BTreeMap<Txid, Orphan>,
    /// Parent txid → orphans spending one of its outputs.
    orphans_by_parent: HashMap<Txid, BTreeSet<Txid>>,
}

impl Mempool {
    /// An empty pool holding at most `max_bytes` of virtual size, with Core's default policy.
    pub fn new(max_bytes: u64) -> Mempool {
        Mempool::with_policy(max_bytes, Policy::default())
    }

    pub fn with_policy(max_bytes: u64, policy: Policy) -> Mempool {
        Mempool {
            max_bytes,
            policy,
            entries: HashMap::new(),
            spenders: HashMap::new(),
            total_vsize: 0,
            total_fee: 0,
            usage: 0,
            rolling_min_fee: 0.0,
            last_rolling_update: 0,
            block_since_bump: false,
            orphans: BTreeMap::new(),
            orphans_by_parent: HashMap::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Changes the minimum fee rate (and the block template's minimum package fee rate).
    pub fn set_min_fee_rate(&mut self, rate: FeeRate) {
        self.policy.min_fee_rate = rate;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }

    /// The entry of `txid` with its fee, size, time and package statistics.
    pub fn get(&self, txid: &Txid) -> Option<&Entry> {
        self.entries.get(txid)
    }

    /// All pool txids, sorted.
    pub fn txids(&self) -> Vec<Txid> {
        let mut txids: Vec<Txid> = self.entries.keys().copied().collect();
        txids.sort();
        txids
    }

    /// An output of a pool transaction that no pool transaction spends, for validating a
    /// transaction that spends it.
    pub fn output(&self, outpoint: &OutPoint) -> Option<TxOut> {
        if self.spenders.contains_key(outpoint) {
            return None;
        }
        let entry = self.entries.get(&outpoint.txid)?;
        entry.tx.output.get(usize::try_from(outpoint.vout).ok()?).cloned()
    }

    /// The pool transaction spending `outpoint`, if any.
    pub fn spender(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.spenders.get(outpoint).copied()
    }

    /// The fee rate a transaction needs at `now`: the larger of the policy minimum and the
    /// rolling minimum raised by evictions (Core's `GetMinFee` and `-minrelaytxfee`).
    pub fn min_fee_rate(&self, now: u64) -> FeeRate {
        let rolling = self.rolling_min_fee_kvb(now);
        let rolling = FeeRate::from_sat_per_kwu((rolling / 4.0).round() as u64);
        rolling.max(self.policy.min_fee_rate)
    }

    /// `getmempoolinfo`.
    pub fn info(&self, now: u64) -> MempoolInfo {
        MempoolInfo {
            size: self.entries.len(),
            bytes: self.total_vsize,
            usage: self.usage,
            total_fee: Amount::from_sat(self.total_fee),
            max_mempool: self.max_bytes,
            mempool_min_fee: self.min_fee_rate(now),
            min_relay_tx_fee: self.policy.min_fee_rate,
            incremental_relay_fee: self.policy.incremental_relay_fee,
            orphans: self.orphans.len(),
        }
    }

    /// Admits `tx` paying `fee` (the caller has checked it against the chain and
    /// [`Mempool::output`]), then evicts the lowest-scoring packages while the pool is over its
    /// cap. Refused when it conflicts with or duplicates a pool transaction, pays less than
    /// [`Mempool::min_fee_rate`], exceeds a package limit, or is itself evicted at once.
    pub fn insert(&mut self, tx: Transaction, fee: Amount, now: u64) -> Result<Accepted, Refused> {
        let txid = self.add(tx, fee, now, false)?;
        let mut evicted = self.trim_to_size();
        if !self.entries.contains_key(&txid) {
            evicted.retain(|t| t.compute_txid() != txid);
            return Err(Refused::MempoolFull { txid, evicted });
        }
        Ok(Accepted { txid, evicted })
    }

    /// Re-admits a transaction of a disconnected block, as Core does after a reorganisation:
    /// without the fee-rate check and without trimming (call [`Mempool::trim_to_size`] once
    /// all are back); duplicates, conflicts and package limits are still refused. Re-add in
    /// block order, parents first, after validating each against the rolled-back chain and
    /// [`Mempool::output`]; pool transactions that already spend its outputs become its
    /// children and their package statistics are updated.
    pub fn readd(&mut self, tx: Transaction, fee: Amount, now: u64) -> Result<Txid, Refused> {
        self.add(tx, fee, now, true)
    }

    fn add(&mut self, tx: Transaction, fee: Amount, now: u64, bypass_limits: bool) -> Result<Txid, Refused> {
        let txid = tx.compute_txid();
        if self.entries.contains_key(&txid) {
            return Err(Refused::Duplicate { txid });
        }
        if tx.is_coinbase() {
            return Err(Refused::Coinbase { txid });
        }
        for input in &tx.input {
            if let Some(&spent_by) = self.spenders.get(&input.previous_output) {
                return Err(Refused::Conflict { txid, outpoint: input.previous_output, spent_by });
            }
        }
        let weight = tx.weight();
        let vsize = weight.to_vbytes_ceil();
        if !bypass_limits {
            self.commit_rolling_decay(now);
            let min_rate_kvb = self.min_fee_rate(now).to_sat_per_kwu() * 4;
            let required = fee_for(min_rate_kvb, vsize);
            if fee.to_sat() < required {
                return Err(Refused::FeeTooLow {
                    txid,
                    fee,
                    vsize,
                    required: Amount::from_sat(required),
                    min_rate_kvb,
                });
            }
        }

        let parents: BTreeSet<Txid> =
            tx.input.iter().map(|i| i.previous_output.txid).filter(|p| self.entries.contains_key(p)).collect();
        let mut ancestors = self.closure(parents.iter().copied(), |e| &e.parents);
        ancestors.extend(parents.iter().copied());
        self.check_limits(txid, vsize, &ancestors)?;

        // After a disconnected block, pool transactions may already spend this one.
        let children: BTreeSet<Txid> = (0..tx.output.len() as u32)
            .filter_map(|vout| self.spenders.get(&OutPoint { txid, vout }).copied())
            .collect();
        for p in &parents {
            self.entries.get_mut(p).expect("parent in pool").children.insert(txid);
        }
        for c in &children {
            self.entries.get_mut(c).expect("child in pool").parents.insert(txid);
        }
        for input in &tx.input {
            self.spenders.insert(input.previous_output, txid);
        }
        self.total_vsize += vsize;
        self.total_fee += fee.to_sat();
        self.usage += entry_usage(&tx);
        self.entries.insert(
            txid,
            Entry {
                tx,
                txid,
                fee,
                vsize,
                weight,
                time: now,
                parents,
                children,
                ancestor_count: 1,
                ancestor_vsize: vsize,
                ancestor_fees: fee,
                descendant_count: 1,
                descendant_vsize: vsize,
                descendant_fees: fee,
            },
        );
        let descendants = self.closure([txid], |e| &e.children);
        self.refresh(ancestors.iter().chain(&descendants).chain([&txid]).copied().collect());
        self.forget_orphan(&txid);
        Ok(txid)
    }

    fn check_limits(&self, txid: Txid, vsize: u64, ancestors: &BTreeSet<Txid>) -> Result<(), Refused> {
        let p = &self.policy;
        let count = ancestors.len() as u64 + 1;
        if count > p.ancestor_count {
            return Err(Refused::TooManyAncestors { txid, count, limit: p.ancestor_count });
        }
        let size = vsize + ancestors.iter().map(|a| self.entries[a].vsize).sum::<u64>();
        if size > p.ancestor_vsize {
            return Err(Refused::AncestorsTooLarge { txid, vsize: size, limit: p.ancestor_vsize });
        }
        for a in ancestors {
            let e = &self.entries[a];
            if e.descendant_count + 1 > p.descendant_count {
                return Err(Refused::TooManyDescendants {
                    txid,
                    ancestor: *a,
                    count: e.descendant_count + 1,
                    limit: p.descendant_count,
                });
            }
            if e.descendant_vsize + vsize > p.descendant_vsize {
                return Err(Refused::DescendantsTooLarge {
                    txid,
                    ancestor: *a,
                    vsize: e.descendant_vsize + vsize,
                    limit: p.descendant_vsize,
                });
            }
        }
        Ok(())
    }

    /// Evicts, while the pool's virtual size exceeds its cap, the entry with the lowest
    /// descendant score (Core's: the higher of its own and its descendant package's fee rate;
    /// the newest first on a tie) together with its descendants, and raises the rolling
    /// minimum fee to the evicted package's rate plus the incremental relay fee. Returns the
    /// evicted transactions.
    pub fn trim_to_size(&mut self) -> Vec<Transaction> {
        let mut evicted = Vec::new();
        while self.total_vsize > self.max_bytes {
            let (worst, fees, vsize) = self
                .entries
                .values()
                .min_by(|a, b| {
                    rate_cmp(a.descendant_score(), b.descendant_score())
                        .then(b.time.cmp(&a.time))
                        .then(a.txid.cmp(&b.txid))
                })
                .map(|e| (e.txid, e.descendant_fees.to_sat(), e.descendant_vsize))
                .expect("a pool over its cap is not empty");
            let removed_kvb =
                fees as f64 * 1000.0 / vsize as f64 + (self.policy.incremental_relay_fee.to_sat_per_kwu() * 4) as f64;
            if removed_kvb > self.rolling_min_fee {
                self.rolling_min_fee = removed_kvb;
                self.block_since_bump = false;
            }
            let package = self.closure([worst], |e| &e.children).into_iter().chain([worst]).collect();
            evicted.extend(self.remove_set(&package));
        }
        evicted
    }

    /// Removes `txid` and its descendants (e.g. when they turn out invalid); returns them.
    pub fn remove_recursive(&mut self, txid: &Txid) -> Vec<Transaction> {
        if !self.entries.contains_key(txid) {
            return Vec::new();
        }
        let set = self.closure([*txid], |e| &e.children).into_iter().chain([*txid]).collect();
        self.remove_set(&set)
    }

    /// Updates the pool for a connected block (Core's `removeForBlock`): removes the pool
    /// transactions the block contains (their children stay, with updated statistics), then
    /// every pool transaction spending an outpoint a block transaction spends, with its
    /// descendants, and the orphans the block contains or conflicts with. Starts the decay of
    /// the rolling minimum fee, with the block's time as the clock.
    pub fn remove_for_block(&mut self, block: &Block) -> BlockRemoval {
        let mut removal = BlockRemoval::default();
        let mut spent = HashSet::new();
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            if self.entries.contains_key(&txid) {
                self.remove_set(&BTreeSet::from([txid]));
                removal.mined.push(txid);
            }
            for input in &tx.input {
                spent.insert(input.previous_output);
                if let Some(&other) = self.spenders.get(&input.previous_output) {
                    removal.conflicted.extend(self.remove_recursive(&other));
                }
            }
            if self.forget_orphan(&txid) {
                removal.orphans.push(txid);
            }
        }
        let conflicting: Vec<Txid> = self
            .orphans
            .iter()
            .filter(|(_, o)| o.tx.input.iter().any(|i| spent.contains(&i.previous_output)))
            .map(|(txid, _)| *txid)
            .collect();
        for txid in conflicting {
            self.forget_orphan(&txid);
            removal.orphans.push(txid);
        }
        self.last_rolling_update = u64::from(block.header.time);
        self.block_since_bump = true;
        removal
    }

    /// Transactions for a block template, parents before children, by ancestor fee rate as
    /// Core's `BlockAssembler::addPackageTxs`: repeatedly take the best package (an entry with
    /// its not-yet-included ancestors) by ancestor score, where the scores of entries whose
    /// ancestors were included are recomputed without them ("modified" entries); skip packages
    /// that do not fit `max_weight` (the block's weight limit) minus what is already used,
    /// starting from `coinbase_reserve` (header and coinbase); stop at the first package below
    /// the minimum fee rate, or after 1000 consecutive misfits once the block is nearly full.
    /// Sigops are not counted.
    pub fn select(&self, max_weight: Weight, coinbase_reserve: Weight) -> Vec<Transaction> {
        // (score fees, score vsize, txid): best first.
        let key = |score: (u64, u64), txid: Txid| Candidate { fees: score.0, vsize: score.1, txid };
        let mut order: Vec<Candidate> = self.entries.values().map(|e| key(e.ancestor_score(), e.txid)).collect();
        order.sort();
        // txid → (ancestor vsize, ancestor fees) without the included ancestors.
        let mut modified: HashMap<Txid, (u64, u64)> = HashMap::new();
        let mut modified_order: BTreeSet<Candidate> = BTreeSet::new();
        let mut in_block: HashSet<Txid> = HashSet::new();
        let mut failed: HashSet<Txid> = HashSet::new();
        let mut selected: Vec<Txid> = Vec::new();
        let max_weight = max_weight.to_wu();
        let mut weight = coinbase_reserve.to_wu();
        let min_rate_kvb = self.policy.min_fee_rate.to_sat_per_kwu() * 4;
        let mut consecutive_failed = 0;
        let mut next = 0;

        loop {
            while next < order.len() {
                let t = &order[next].txid;
                if in_block.contains(t) || modified.contains_key(t) || failed.contains(t) {
                    next += 1;
                } else {
                    break;
                }
            }
            let (txid, using_modified) = match (order.get(next), modified_order.first()) {
                (None, None) => break,
                (None, Some(m)) => (m.txid, true),
                (Some(o), Some(m)) if m < o => (m.txid, true),
                (Some(o), _) => {
                    next += 1;
                    (o.txid, false)
                }
            };
            let entry = &self.entries[&txid];
            let (package_vsize, package_fees) =
                if using_modified { modified[&txid] } else { (entry.ancestor_vsize, entry.ancestor_fees.to_sat()) };
            if package_fees < fee_for(min_rate_kvb, package_vsize) {
                break;
            }
            if weight + 4 * package_vsize >= max_weight {
                if using_modified {
                    let (v, f) = modified.remove(&txid).expect("modified entry");
                    modified_order.remove(&key(min_rate((entry.fee.to_sat(), entry.vsize), (f, v)), txid));
                    failed.insert(txid);
                }
                consecutive_failed += 1;
                if consecutive_failed > MAX_CONSECUTIVE_FAILURES && weight + 4000 > max_weight {
                    break;
                }
                continue;
            }
            consecutive_failed = 0;

            let mut package: Vec<&Entry> = self
                .closure([txid], |e| &e.parents)
                .into_iter()
                .chain([txid])
                .filter(|t| !in_block.contains(t))
                .map(|t| &self.entries[&t])
                .collect();
            // Core's SortForBlock: an ancestor always has fewer ancestors than its descendant.
            package.sort_by_key(|e| (e.ancestor_count, e.txid));
            for e in &package {
                weight += e.weight.to_wu();
                in_block.insert(e.txid);
                selected.push(e.txid);
                if let Some((v, f)) = modified.remove(&e.txid) {
                    modified_order.remove(&key(min_rate((e.fee.to_sat(), e.vsize), (f, v)), e.txid));
                }
            }
            // Core's UpdatePackagesForAdded.
            for e in &package {
                for d in self.closure([e.txid], |x| &x.children) {
                    if in_block.contains(&d) {
                        continue;
                    }
                    let de = &self.entries[&d];
                    let own = (de.fee.to_sat(), de.vsize);
                    let (v, f) = match modified.get(&d) {
                        Some(&(v, f)) => {
                            modified_order.remove(&key(min_rate(own, (f, v)), d));
                            (v, f)
                        }
                        None => (de.ancestor_vsize, de.ancestor_fees.to_sat()),
                    };
                    let updated = (v - e.vsize, f - e.fee.to_sat());
                    modified.insert(d, updated);
                    modified_order.insert(key(min_rate(own, (updated.1, updated.0)), d));
                }
            }
        }
        selected.into_iter().map(|t| self.entries[&t].tx.clone()).collect()
    }

    /// Holds `tx`, some of whose inputs are unknown, until a parent arrives
    /// ([`Mempool::take_orphans_spending`]) or it expires. Expired orphans are dropped first;
    /// when more than `max_orphans` are held, the oldest go.
    pub fn add_orphan(&mut self, tx: Transaction, now: u64) -> Result<Txid, Refused> {
        let txid = tx.compute_txid();
        if self.entries.contains_key(&txid) {
            return Err(Refused::Duplicate { txid });
        }
        if self.orphans.contains_key(&txid) {
            return Err(Refused::DuplicateOrphan { txid });
        }
        let weight = tx.weight();
        if weight > self.policy.max_orphan_weight {
            return Err(Refused::OrphanTooLarge { txid, weight, limit: self.policy.max_orphan_weight });
        }
        self.expire_orphans(now);
        for input in &tx.input {
            self.orphans_by_parent.entry(input.previous_output.txid).or_default().insert(txid);
        }
        self.orphans.insert(txid, Orphan { tx, time: now });
        while self.orphans.len() > self.policy.max_orphans {
            let oldest = self
                .orphans
                .iter()
                .min_by_key(|(t, o)| (o.time, **t))
                .map(|(t, _)| *t)
                .expect("orphans over the limit");
            tracing::debug!(%oldest, "orphan pool full: dropping the oldest");
            self.forget_orphan(&oldest);
        }
        Ok(txid)
    }

    /// Drops the orphans held `orphan_ttl` seconds or longer; returns their txids.
    pub fn expire_orphans(&mut self, now: u64) -> Vec<Txid> {
        let ttl = self.policy.orphan_ttl;
        let expired: Vec<Txid> =
            self.orphans.iter().filter(|(_, o)| now >= o.time.saturating_add(ttl)).map(|(t, _)| *t).collect();
        for t in &expired {
            self.forget_orphan(t);
        }
        expired
    }

    /// Removes and returns the orphans spending an output of `parent` (oldest first), for the
    /// caller to retry now that the parent is known.
    pub fn take_orphans_spending(&mut self, parent: &Txid) -> Vec<Transaction> {
        let Some(txids) = self.orphans_by_parent.get(parent).cloned() else {
            return Vec::new();
        };
        let mut orphans: Vec<(u64, Txid, Transaction)> =
            txids.into_iter().filter_map(|t| self.orphans.get(&t).map(|o| (o.time, t, o.tx.clone()))).collect();
        orphans.sort_by_key(|(time, txid, _)| (*time, *txid));
        for (_, t, _) in &orphans {
            self.forget_orphan(t);
        }
        orphans.into_iter().map(|(_, _, tx)| tx).collect()
    }

    pub fn orphan_count(&self) -> usize {
        self.orphans.len()
    }

    pub fn is_orphan(&self, txid: &Txid) -> bool {
        self.orphans.contains_key(txid)
    }

    fn forget_orphan(&mut self, txid: &Txid) -> bool {
        let Some(orphan) = self.orphans.remove(txid) else {
            return false;
        };
        for input in &orphan.tx.input {
            let parent = input.previous_output.txid;
            if let Some(set) = self.orphans_by_parent.get_mut(&parent) {
                set.remove(txid);
                if set.is_empty() {
                    self.orphans_by_parent.remove(&parent);
                }
            }
        }
        true
    }

    /// The transactions reachable from `start` along `links` (parents or children), without
    /// `start` itself unless it is reachable.
    fn closure(
        &self,
        start: impl IntoIterator<Item = Txid>,
        links: impl Fn(&Entry) -> &BTreeSet<Txid>,
    ) -> BTreeSet<Txid> {
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<Txid> = start.into_iter().collect();
        while let Some(t) = queue.pop_front() {
            let Some(e) = self.entries.get(&t) else { continue };
            for n in links(e) {
                if seen.insert(*n) {
                    queue.push_back(*n);
                }
            }
        }
        seen
    }

    /// Recomputes the package statistics of `txids` from the graph.
    fn refresh(&mut self, txids: BTreeSet<Txid>) {
        for t in txids {
            if !self.entries.contains_key(&t) {
                continue;
            }
            let sum = |set: &BTreeSet<Txid>| {
                set.iter().fold((1, 0, 0), |(n, v, f), x| {
                    let e = &self.entries[x];
                    (n + 1, v + e.vsize, f + e.fee.to_sat())
                })
            };
            let (an, av, af) = sum(&self.closure([t], |e| &e.parents));
            let (dn, dv, df) = sum(&self.closure([t], |e| &e.children));
            let e = self.entries.get_mut(&t).expect("checked");
            e.ancestor_count = an;
            e.ancestor_vsize = av + e.vsize;
            e.ancestor_fees = Amount::from_sat(af) + e.fee;
            e.descendant_count = dn;
            e.descendant_vsize = dv + e.vsize;
            e.descendant_fees = Amount::from_sat(df) + e.fee;
        }
    }

    /// Removes `set` (not necessarily closed under descendants: the children of a mined
    /// transaction stay), refreshes the statistics of the entries linked to it and returns
    /// the removed transactions, parents before children.
    fn remove_set(&mut self, set: &BTreeSet<Txid>) -> Vec<Transaction> {
        let mut affected: BTreeSet<Txid> = BTreeSet::new();
        for t in set {
            affected.extend(self.closure([*t], |e| &e.parents));
            affected.extend(self.closure([*t], |e| &e.children));
        }
        // Parents first, so that the caller can re-add them in order.
        let mut order: Vec<(u64, Txid)> =
            set.iter().filter_map(|t| self.entries.get(t).map(|e| (e.ancestor_count, *t))).collect();
        order.sort();
        let mut removed = Vec::with_capacity(set.len());
        for (_, t) in &order {
            let Some(e) = self.entries.remove(t) else { continue };
            for p in &e.parents {
                if let Some(pe) = self.entries.get_mut(p) {
                    pe.children.remove(t);
                }
            }
            for c in &e.children {
                if let Some(ce) = self.entries.get_mut(c) {
                    ce.parents.remove(t);
                }
            }
            for input in &e.tx.input {
                if self.spenders.get(&input.previous_output) == Some(t) {
                    self.spenders.remove(&input.previous_output);
                }
            }
            self.total_vsize -= e.vsize;
            self.total_fee -= e.fee.to_sat();
            self.usage -= entry_usage(&e.tx);
            removed.push(e.tx);
        }
        self.refresh(affected.difference(set).copied().collect());
        removed
    }

    /// Core's `GetMinFee` rolling part in sat/kvB at `now`, without storing the decay.
    fn rolling_min_fee_kvb(&self, now: u64) -> f64 {
        if !self.block_since_bump || self.rolling_min_fee == 0.0 {
            return self.rolling_min_fee;
        }
        let rolling = self.decayed_rolling_min_fee(now);
        if rolling == 0.0 {
            return 0.0;
        }
        rolling.max((self.policy.incremental_relay_fee.to_sat_per_kwu() * 4) as f64)
    }

    /// The rolling minimum after its decay since the last update (halving every 12 hours,
    /// every 6 or 3 while the pool is under half or a quarter full), zero once below half
    /// the incremental relay fee.
    fn decayed_rolling_min_fee(&self, now: u64) -> f64 {
        let mut rolling = self.rolling_min_fee;
        if now > self.last_rolling_update + 10 {
            let mut halflife = ROLLING_FEE_HALFLIFE;
            if self.total_vsize < self.max_bytes / 4 {
                halflife /= 4.0;
            } else if self.total_vsize < self.max_bytes / 2 {
                halflife /= 2.0;
            }
            rolling /= 2f64.powf((now - self.last_rolling_update) as f64 / halflife);
            if rolling < (self.policy.incremental_relay_fee.to_sat_per_kwu() * 4) as f64 / 2.0 {
                rolling = 0.0;
            }
        }
        rolling
    }

    /// Stores the decay, as Core's `GetMinFee` does when called.
    fn commit_rolling_decay(&mut self, now: u64) {
        if self.block_since_bump && self.rolling_min_fee > 0.0 && now > self.last_rolling_update + 10 {
            self.rolling_min_fee = self.decayed_rolling_min_fee(now);
            self.last_rolling_update = now;
        }
    }
}

/// A block-assembly candidate ordered best first: higher score rate, then lower txid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    fees: u64,
    vsize: u64,
    txid: Txid,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        rate_cmp((other.fees, other.vsize), (self.fees, self.vsize)).then(self.txid.cmp(&other.txid))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares the fee rates of `(fees, vsize)` pairs exactly.
fn rate_cmp(a: (u64, u64), b: (u64, u64)) -> std::cmp::Ordering {
    (u128::from(a.0) * u128::from(b.1)).cmp(&(u128::from(b.0) * u128::from(a.1)))
}

fn min_rate(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    if rate_cmp(a, b).is_gt() {
        b
    } else {
        a
    }
}

fn rate(fee_sat: u64, vsize: u64) -> FeeRate {
    FeeRate::from_sat_per_kwu((fee_sat * 250).checked_div(vsize).unwrap_or(0))
}

/// Core's `CFeeRate::GetFee`: the fee for `vsize` at `rate_kvb` sat/kvB, rounded up.
fn fee_for(rate_kvb: u64, vsize: u64) -> u64 {
    (rate_kvb * vsize).div_ceil(1000)
}

fn entry_usage(tx: &Transaction) -> u64 {
    tx.total_size() as u64 + ENTRY_OVERHEAD + 48 * tx.input.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::block::{Header, Version};
    use bitcoin::hashes::{sha256d, Hash};
    use bitcoin::{absolute, transaction, BlockHash, CompactTarget, ScriptBuf, Sequence, TxIn, TxMerkleNode, Witness};

    const NOW: u64 = 1_700_000_000;

    /// A confirmed coin the caller has validated.
    fn coin(n: u32) -> OutPoint {
        OutPoint { txid: Txid::from_raw_hash(sha256d::Hash::hash(&n.to_le_bytes())), vout: 0 }
    }

    fn out(tx: &Transaction, vout: u32) -> OutPoint {
        OutPoint { txid: tx.compute_txid(), vout }
    }

    /// A transaction spending `inputs` with `outputs` P2WPKH-sized outputs and an OP_RETURN
    /// of `pad` bytes to make it larger. No signatures: the pool checks no scripts.
    fn tx(inputs: &[OutPoint], outputs: u32, pad: usize) -> Transaction {
        let mut output: Vec<TxOut> = (0..outputs)
            .map(|i| TxOut {
                value: Amount::from_sat(10_000 + u64::from(i)),
                script_pubkey: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([7; 20])),
            })
            .collect();
        if pad > 0 {
            output.push(TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from_bytes(vec![0x6a; pad]) });
        }
        Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: inputs
                .iter()
                .map(|o| TxIn {
                    previous_output: *o,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                })
                .collect(),
            output,
        }
    }

    /// The fee paying `sat_vb` sat per vB for `tx`.
    fn fee(tx: &Transaction, sat_vb: u64) -> Amount {
        Amount::from_sat(tx.vsize() as u64 * sat_vb)
    }

    fn add(pool: &mut Mempool, tx: &Transaction, sat_vb: u64) -> Txid {
        let txid = pool.insert(tx.clone(), fee(tx, sat_vb), NOW).unwrap_or_else(|e| panic!("{e}")).txid;
        assert_consistent(pool);
        txid
    }

    fn block(time: u32, txs: Vec<Transaction>) -> Block {
        Block {
            header: Header {
                version: Version::TWO,
                prev_blockhash: BlockHash::all_zeros(),
                merkle_root: TxMerkleNode::all_zeros(),
                time,
                bits: CompactTarget::from_consensus(0x207fffff),
                nonce: 0,
            },
            txdata: txs,
        }
    }

    /// Core's `CTxMemPool::check`: links, spent index, totals and every entry's package
    /// statistics recomputed independently from the transactions alone.
    fn assert_consistent(pool: &Mempool) {
        let by_txid: HashMap<Txid, &Entry> = pool.entries.iter().map(|(t, e)| (*t, e)).collect();
        let parents_of = |t: &Txid| -> BTreeSet<Txid> {
            by_txid[t].tx.input.iter().map(|i| i.previous_output.txid).filter(|p| by_txid.contains_key(p)).collect()
        };
        let mut spenders = HashMap::new();
        let (mut vsize, mut fees) = (0, 0);
        for (t, e) in &by_txid {
            assert_eq!(e.txid, *t);
            assert_eq!(e.parents, parents_of(t), "parents of {t}");
            let children: BTreeSet<Txid> = by_txid.keys().filter(|c| parents_of(c).contains(t)).copied().collect();
            assert_eq!(e.children, children, "children of {t}");
            for i in &e.tx.input {
                assert!(spenders.insert(i.previous_output, *t).is_none(), "double spend in the pool");
            }
            vsize += e.vsize;
            fees += e.fee.to_sat();
        }
        assert_eq!(pool.spenders, spenders);
        assert_eq!((pool.total_vsize, pool.total_fee), (vsize, fees));
        let walk = |t: Txid, up: bool| -> BTreeSet<Txid> {
            let mut seen = BTreeSet::new();
            let mut stack = vec![t];
            while let Some(x) = stack.pop() {
                let next: Vec<Txid> = if up {
                    parents_of(&x).into_iter().collect()
                } else {
                    by_txid.keys().filter(|c| parents_of(c).contains(&x)).copied().collect()
                };
                for n in next {
                    if seen.insert(n) {
                        stack.push(n);
                    }
                }
            }
            seen.insert(t);
            seen
        };
        for (t, e) in &by_txid {
            let stats = |set: BTreeSet<Txid>| {
                let n = set.len() as u64;
                let v = set.iter().map(|x| by_txid[x].vsize).sum::<u64>();
                let f = set.iter().map(|x| by_txid[x].fee).sum::<Amount>();
                (n, v, f)
            };
            assert_eq!(
                (e.ancestor_count, e.ancestor_vsize, e.ancestor_fees),
                stats(walk(*t, true)),
                "ancestors of {t}"
            );
            assert_eq!(
                (e.descendant_count, e.descendant_vsize, e.descendant_fees),
                stats(walk(*t, false)),
                "descendants of {t}"
            );
        }
    }

    #[test]
    fn refusals() {
        let a = tx(&[coin(1)], 2, 0);
        let conflict = tx(&[coin(9), coin(1)], 1, 0);
        let cheap = tx(&[coin(2)], 1, 0);
        let exact = tx(&[coin(3)], 1, 0);
        let coinbase = tx(&[OutPoint::null()], 1, 0);
        let mut pool = Mempool::new(1_000_000);
        let a_id = add(&mut pool, &a, 1);
        let cheap_id = cheap.compute_txid();
        let cheap_fee = Amount::from_sat(cheap.vsize() as u64 - 1);
        let cases: Vec<(&str, Transaction, Amount, Result<Txid, Refused>)> = vec![
            ("duplicate", a.clone(), fee(&a, 5), Err(Refused::Duplicate { txid: a_id })),
            (
                "conflict, no replacement",
                conflict.clone(),
                fee(&conflict, 100),
                Err(Refused::Conflict { txid: conflict.compute_txid(), outpoint: coin(1), spent_by: a_id }),
            ),
            (
                "one sat short of 1 sat/vB",
                cheap.clone(),
                cheap_fee,
                Err(Refused::FeeTooLow {
                    txid: cheap_id,
                    fee: cheap_fee,
                    vsize: cheap.vsize() as u64,
                    required: fee(&cheap, 1),
                    min_rate_kvb: 1000,
                }),
            ),
            ("exactly 1 sat/vB", exact.clone(), fee(&exact, 1), Ok(exact.compute_txid())),
            ("coinbase", coinbase.clone(), Amount::ZERO, Err(Refused::Coinbase { txid: coinbase.compute_txid() })),
        ];
        for (name, tx, fee, expected) in cases {
            let got = pool.insert(tx, fee, NOW).map(|a| a.txid);
            assert_eq!(got, expected, "{name}");
            if let Err(e) = got {
                let msg = e.to_string();
                assert!(msg.starts_with(|c: char| c.is_lowercase()), "{name}: {msg}");
            }
            assert_consistent(&pool);
        }
        assert_eq!(pool.len(), 2);
        assert!(Refused::Conflict { txid: a_id, outpoint: coin(1), spent_by: a_id }
            .to_string()
            .contains(&a_id.to_string()));
        // A configured minimum applies.
        pool.set_min_fee_rate(FeeRate::from_sat_per_vb_u32(10));
        let t = tx(&[coin(4)], 1, 0);
        assert!(matches!(pool.insert(t.clone(), fee(&t, 9), NOW), Err(Refused::FeeTooLow { .. })));
        assert!(pool.insert(t.clone(), fee(&t, 10), NOW).is_ok());
    }

    #[test]
    fn outputs_and_spenders_of_pool_transactions() {
        let mut pool = Mempool::new(1_000_000);
        let parent = tx(&[coin(1)], 2, 0);
        add(&mut pool, &parent, 1);
        assert_eq!(pool.output(&out(&parent, 0)), Some(parent.output[0].clone()));
        assert_eq!(pool.output(&out(&parent, 2)), None, "no such output");
        assert_eq!(pool.output(&coin(1)), None, "a confirmed coin is the chain's business");
        assert_eq!(pool.spender(&coin(1)), Some(parent.compute_txid()));
        let child = tx(&[out(&parent, 0)], 1, 0);
        add(&mut pool, &child, 1);
        assert_eq!(pool.output(&out(&parent, 0)), None, "spent in the pool");
        assert_eq!(pool.spender(&out(&parent, 0)), Some(child.compute_txid()));
        assert_eq!(pool.output(&out(&parent, 1)), Some(parent.output[1].clone()));
        let p = pool.get(&parent.compute_txid()).unwrap();
        assert_eq!((p.descendant_count, p.children.len()), (2, 1));
        let c = pool.get(&child.compute_txid()).unwrap();
        assert_eq!((c.ancestor_count, c.ancestor_fees), (2, fee(&parent, 1) + fee(&child, 1)));
        assert_eq!(c.parents, BTreeSet::from([parent.compute_txid()]));
    }

    #[test]
    fn an_orphan_is_retried_when_its_parent_arrives() {
        let mut pool = Mempool::new(1_000_000);
        let parent = tx(&[coin(1)], 2, 0);
        let child = tx(&[out(&parent, 0), out(&parent, 1)], 1, 0);
        let unrelated = tx(&[coin(77)], 1, 0);
        // The caller finds the child's inputs neither in the chain nor in the pool.
        assert_eq!(pool.output(&child.input[0].previous_output), None);
        let child_id = pool.add_orphan(child.clone(), NOW).unwrap();
        pool.add_orphan(unrelated.clone(), NOW).unwrap();
        assert_eq!(pool.add_orphan(child.clone(), NOW), Err(Refused::DuplicateOrphan { txid: child_id }));
        assert!(pool.is_orphan(&child_id) && !pool.contains(&child_id));

        let parent_id = add(&mut pool, &parent, 1);
        let retry = pool.take_orphans_spending(&parent_id);
        assert_eq!(retry, vec![child.clone()], "once, although it spends two outputs");
        assert!(pool.take_orphans_spending(&parent_id).is_empty());
        assert_eq!(pool.orphan_count(), 1);
        add(&mut pool, &child, 5);
        let c = pool.get(&child_id).unwrap();
        assert_eq!((c.ancestor_count, c.ancestor_vsize), (2, (parent.vsize() + child.vsize()) as u64));
        assert_eq!(pool.get(&parent_id).unwrap().descendant_fees, fee(&parent, 1) + fee(&child, 5));
        // A pool transaction is not an orphan.
        assert_eq!(pool.add_orphan(child, NOW), Err(Refused::Duplicate { txid: child_id }));
    }

    #[test]
    fn orphans_are_bounded_in_number_weight_and_time() {
        let policy = Policy::default();
        let mut pool = Mempool::new(1_000_000);
        let orphans: Vec<Transaction> = (0..=policy.max_orphans as u32).map(|i| tx(&[coin(1000 + i)], 1, 0)).collect();
        for (i, o) in orphans.iter().enumerate() {
            pool.add_orphan(o.clone(), NOW + i as u64).unwrap();
        }
        assert_eq!(pool.orphan_count(), policy.max_orphans);
        assert!(!pool.is_orphan(&orphans[0].compute_txid()), "the oldest goes");
        assert!(pool.is_orphan(&orphans[1].compute_txid()));

        let heavy = tx(&[coin(5)], 1, 100_001);
        assert!(matches!(pool.add_orphan(heavy, NOW), Err(Refused::OrphanTooLarge { .. })));

        // Held for orphan_ttl seconds: orphan i arrived at NOW + i.
        assert!(pool.expire_orphans(NOW + policy.orphan_ttl).is_empty());
        assert_eq!(pool.expire_orphans(NOW + policy.orphan_ttl + 1), vec![orphans[1].compute_txid()]);
        assert_eq!(pool.expire_orphans(NOW + policy.orphan_ttl + 1000).len(), policy.max_orphans - 1);
        assert_eq!(pool.orphan_count(), 0);
        assert!(pool.take_orphans_spending(&coin(1005).txid).is_empty(), "the index is emptied too");
        assert!(pool.orphans_by_parent.is_empty());
    }

    fn txids(txs: &[Transaction]) -> Vec<Txid> {
        txs.iter().map(|t| t.compute_txid()).collect()
    }

    const RESERVE: Weight = Weight::from_wu(4000);

    #[test]
    fn cpfp_a_low_fee_parent_with_a_high_fee_child_goes_before_a_middling_single() {
        let parent = tx(&[coin(1)], 1, 0);
        let child = tx(&[out(&parent, 0)], 1, 0);
        let middling = tx(&[coin(2)], 1, 0);
        let mut pool = Mempool::new(1_000_000);
        add(&mut pool, &parent, 1);
        add(&mut pool, &child, 50);
        add(&mut pool, &middling, 10);
        let all = Weight::MAX_BLOCK;
        assert_eq!(txids(&pool.select(all, RESERVE)), txids(&[parent.clone(), child.clone(), middling.clone()]));

        // Room for the package only: the middling tx waits.
        let package = 4 * (parent.vsize() + child.vsize()) as u64;
        let room = Weight::from_wu(RESERVE.to_wu() + package + 1);
        assert_eq!(txids(&pool.select(room, RESERVE)), txids(&[parent.clone(), child.clone()]));

        // Room for less than the package: the middling tx alone fits, the package never
        // splits into a child without its parent.
        let room = Weight::from_wu(RESERVE.to_wu() + package - 1);
        assert_eq!(txids(&pool.select(room, RESERVE)), txids(std::slice::from_ref(&middling)));

        // Without the child the parent is last.
        let mut pool = Mempool::new(1_000_000);
        add(&mut pool, &parent, 1);
        add(&mut pool, &middling, 10);
        assert_eq!(txids(&pool.select(all, RESERVE)), txids(&[middling, parent]));
    }

    #[test]
    fn select_rescores_descendants_of_included_packages() {
        // G (1 sat/vB) has children X (30) and Y (12). Y's ancestor score is about 6.5 until
        // G is in the block, then 12: it must go before M (9) though it starts below it.
        let g = tx(&[coin(1)], 2, 0);
        let x = tx(&[out(&g, 0)], 1, 0);
        let y = tx(&[out(&g, 1)], 1, 0);
        let m = tx(&[coin(2)], 1, 0);
        let low = tx(&[coin(3)], 1, 0);
        let mut pool = Mempool::new(1_000_000);
        for (t, rate) in [(&g, 1), (&x, 30), (&y, 12), (&m, 9), (&low, 1)] {
            add(&mut pool, t, rate);
        }
        let selected = pool.select(Weight::MAX_BLOCK, RESERVE);
        assert_eq!(txids(&selected), txids(&[g, x, y, m, low]));

        // A block-minimum above some packages stops selection there.
        let mut pool2 = pool.clone();
        pool2.set_min_fee_rate(FeeRate::from_sat_per_vb_u32(5));
        assert_eq!(pool2.select(Weight::MAX_BLOCK, RESERVE).len(), 4, "the 1 sat/vB single is left out");
    }

    #[test]
    fn select_respects_the_weight_limit_and_orders_parents_first() {
        // A chain of 10 and 20 independent txs with decreasing fee rates.
        let mut pool = Mempool::new(10_000_000);
        let mut prev = coin(1);
        let mut chain = Vec::new();
        for i in 0..10 {
            let t = tx(&[prev], 1, 0);
            prev = out(&t, 0);
            add(&mut pool, &t, 40 - 3 * i);
            chain.push(t);
        }
        for i in 0..20 {
            let t = tx(&[coin(100 + i)], 1, 200);
            add(&mut pool, &t, 35 - u64::from(i));
        }
        for limit in [4_000, 6_000, 10_000, 20_000, 40_000, 4_000_000] {
            let selected = pool.select(Weight::from_wu(limit), RESERVE);
            let weight: u64 = RESERVE.to_wu() + selected.iter().map(|t| t.weight().to_wu()).sum::<u64>();
            assert!(weight < limit.max(RESERVE.to_wu() + 1), "limit {limit}: {weight}");
            let mut seen = HashSet::new();
            for t in &selected {
                for p in &pool.get(&t.compute_txid()).unwrap().parents {
                    assert!(seen.contains(p), "limit {limit}: a parent follows its child");
                }
                seen.insert(t.compute_txid());
            }
        }
        assert_eq!(pool.select(Weight::MAX_BLOCK, RESERVE).len(), 30);
    }

    #[test]
    fn the_cap_evicts_the_lowest_descendant_score_package_and_raises_the_minimum_fee() {
        let low = tx(&[coin(1)], 1, 0);
        let low_child = tx(&[out(&low, 0)], 1, 0);
        let high = tx(&[coin(2)], 1, 0);
        let mid = tx(&[coin(3)], 1, 0);
        let newcomer = tx(&[coin(4)], 1, 0);
        let v = low.vsize() as u64; // all five have the same size
        let mut pool = Mempool::new(4 * v);
        add(&mut pool, &low, 2);
        add(&mut pool, &low_child, 3); // low's descendant score: 2.5 sat/vB
        add(&mut pool, &high, 20);
        add(&mut pool, &mid, 5);
        assert_eq!(pool.info(NOW).mempool_min_fee, FeeRate::from_sat_per_vb_u32(1));

        let accepted = pool.insert(newcomer.clone(), fee(&newcomer, 10), NOW).unwrap();
        assert_eq!(accepted.evicted, vec![low.clone(), low_child.clone()]);
        assert_consistent(&pool);
        assert_eq!(pool.txids().len(), 3);
        assert!(pool.info(NOW).bytes <= 4 * v);

        // The rolling minimum is the evicted package's rate plus the incremental relay fee.
        let min = pool.info(NOW).mempool_min_fee;
        assert_eq!(min.to_sat_per_kwu(), 3500 / 4, "2.5 + 1 sat/vB");
        let t = tx(&[coin(5)], 1, 0);
        assert!(matches!(pool.insert(t.clone(), fee(&t, 3), NOW), Err(Refused::FeeTooLow { min_rate_kvb: 3500, .. })));

        // It decays only after a block, halving every 12 h (3 h while the pool is under a
        // quarter full), down to zero below half the incremental fee.
        assert_eq!(pool.min_fee_rate(NOW + 100_000), min);
        pool.remove_for_block(&block(NOW as u32, vec![high.clone(), mid.clone(), newcomer.clone()]));
        assert!(pool.is_empty());
        let quarter_day = pool.min_fee_rate(NOW + 3 * 3600).to_sat_per_kwu();
        assert_eq!(quarter_day, 438, "halved after one (quartered) half-life: 1750 sat/kvB = 437.5 sat/kwu");
        assert_eq!(pool.min_fee_rate(NOW + 48 * 3600), FeeRate::from_sat_per_vb_u32(1));
        assert!(pool.insert(t.clone(), fee(&t, 1), NOW + 48 * 3600).is_ok());
    }

    #[test]
    fn a_newcomer_that_would_be_evicted_at_once_is_refused() {
        let a = tx(&[coin(1)], 1, 0);
        let b = tx(&[coin(2)], 1, 0);
        let mut pool = Mempool::new(a.vsize() as u64);
        add(&mut pool, &a, 10);
        let b_id = b.compute_txid();
        assert_eq!(
            pool.insert(b, Amount::from_sat(2 * 100), NOW),
            Err(Refused::MempoolFull { txid: b_id, evicted: vec![] })
        );
        assert_consistent(&pool);
        assert_eq!(pool.txids(), vec![a.compute_txid()]);
    }

    #[test]
    fn remove_for_block_takes_mined_transactions_and_conflicts_with_their_descendants() {
        let a = tx(&[coin(1)], 1, 0);
        let a2 = tx(&[out(&a, 0)], 1, 0);
        let a3 = tx(&[out(&a2, 0)], 1, 0);
        let m = tx(&[coin(2)], 2, 0);
        let mc = tx(&[out(&m, 0)], 1, 0);
        let untouched = tx(&[coin(3)], 1, 0);
        let double_spend = tx(&[coin(1), coin(50)], 1, 0); // in the block, conflicts with a
        let orphan_conflict = tx(&[coin(50), OutPoint { txid: Txid::all_zeros(), vout: 9 }], 1, 0);
        let mut pool = Mempool::new(1_000_000);
        for t in [&a, &a2, &a3, &m, &mc, &untouched] {
            add(&mut pool, t, 2);
        }
        pool.add_orphan(orphan_conflict.clone(), NOW).unwrap();
        let coinbase = tx(&[OutPoint::null()], 1, 0);
        let removal = pool.remove_for_block(&block(NOW as u32, vec![coinbase, m.clone(), double_spend]));
        assert_consistent(&pool);
        assert_eq!(removal.mined, vec![m.compute_txid()]);
        let mut conflicted = txids(&removal.conflicted);
        conflicted.sort();
        let mut expected = txids(&[a, a2, a3]);
        expected.sort();
        assert_eq!(conflicted, expected);
        assert_eq!(removal.orphans, vec![orphan_conflict.compute_txid()]);
        assert_eq!(pool.txids().len(), 2);
        // The mined parent's child stays, now without in-pool ancestors.
        let c = pool.get(&mc.compute_txid()).unwrap();
        assert_eq!((c.ancestor_count, c.parents.len()), (1, 0));
        assert_eq!(pool.output(&out(&m, 1)), None, "confirmed outputs are the chain's business");
    }

    #[test]
    fn readd_after_a_disconnected_block_links_children_already_in_the_pool() {
        // Block [p, q]: q spends p; r spends q and stayed in the pool.
        let p = tx(&[coin(1)], 2, 0);
        let q = tx(&[out(&p, 0)], 1, 0);
        let r = tx(&[out(&q, 0), out(&p, 1)], 1, 0);
        let mut pool = Mempool::new(1_000_000);
        for t in [&p, &q, &r] {
            add(&mut pool, t, 3);
        }
        pool.remove_for_block(&block(NOW as u32, vec![p.clone(), q.clone()]));
        assert_consistent(&pool);
        assert_eq!(pool.get(&r.compute_txid()).unwrap().ancestor_count, 1);

        // Disconnect: the caller re-adds in block order, parents first, with the fees it
        // computes from the chain; a zero fee is fine (no fee check on re-add).
        pool.readd(p.clone(), Amount::ZERO, NOW).unwrap();
        assert_consistent(&pool);
        assert_eq!(pool.get(&r.compute_txid()).unwrap().ancestor_count, 2);
        pool.readd(q.clone(), fee(&q, 3), NOW).unwrap();
        assert_consistent(&pool);
        let r_entry = pool.get(&r.compute_txid()).unwrap();
        assert_eq!(r_entry.parents, BTreeSet::from([p.compute_txid(), q.compute_txid()]));
        assert_eq!(r_entry.ancestor_count, 3);
        assert_eq!(pool.get(&p.compute_txid()).unwrap().descendant_count, 3);
        assert_eq!(pool.readd(q.clone(), fee(&q, 3), NOW), Err(Refused::Duplicate { txid: q.compute_txid() }));
        assert!(pool.trim_to_size().is_empty());
        assert_eq!(txids(&pool.select(Weight::MAX_BLOCK, RESERVE)), txids(&[p, q, r]));
    }

    #[test]
    fn package_limits() {
        fn chain(n: u32, pad: usize) -> Vec<Transaction> {
            let mut prev = coin(1);
            (0..n)
                .map(|_| {
                    let t = tx(&[prev], 1, pad);
                    prev = out(&t, 0);
                    t
                })
                .collect()
        }
        fn fan(children: u32) -> Vec<Transaction> {
            let parent = tx(&[coin(1)], children, 0);
            let mut txs = vec![parent.clone()];
            txs.extend((0..children).map(|i| tx(&[out(&parent, i)], 1, 0)));
            txs
        }
        let default = Policy::default();
        let small = |f: fn(&mut Policy)| {
            let mut p = Policy::default();
            f(&mut p);
            p
        };
        type Check = fn(&Refused, &[Transaction]) -> bool;
        let cases: Vec<(&str, Policy, Vec<Transaction>, Check)> = vec![
            ("25 in a chain are fine, the 26th is refused", default, chain(26, 0), |e, txs| {
                *e == Refused::TooManyAncestors { txid: txs[25].compute_txid(), count: 26, limit: 25 }
            }),
            ("a parent with 24 children is fine, the 25th is refused", default, fan(25), |e, txs| {
                *e == Refused::TooManyDescendants {
                    txid: txs[25].compute_txid(),
                    ancestor: txs[0].compute_txid(),
                    count: 26,
                    limit: 25,
                }
            }),
            (
                "ancestor size",
                small(|p| p.ancestor_vsize = 1_000),
                chain(3, 350),
                |e, txs| matches!(e, Refused::AncestorsTooLarge { txid, limit: 1_000, vsize } if *txid == txs[2].compute_txid() && *vsize > 1_000),
            ),
            (
                "descendant size",
                small(|p| p.descendant_vsize = 500),
                fan(6),
                |e, txs| matches!(e, Refused::DescendantsTooLarge { ancestor, limit: 500, .. } if *ancestor == txs[0].compute_txid()),
            ),
        ];
        for (name, policy, txs, check) in cases {
            let mut pool = Mempool::with_policy(10_000_000, policy);
            let (last, accepted) = txs.split_last().unwrap();
            let mut refused = None;
            for t in accepted {
                if let Err(e) = pool.insert(t.clone(), fee(t, 1), NOW) {
                    refused = Some(e);
                    break;
                }
            }
            let err = match refused {
                Some(e) => e,
                None => pool.insert(last.clone(), fee(last, 1), NOW).expect_err(name),
            };
            assert!(check(&err, &txs), "{name}: {err}");
            assert_consistent(&pool);
        }
    }

    #[test]
    fn info_and_entries_report_getmempoolinfo_and_verbose_figures() {
        let mut pool = Mempool::new(123_456);
        let a = tx(&[coin(1)], 1, 0);
        let b = tx(&[out(&a, 0)], 1, 0);
        add(&mut pool, &a, 2);
        pool.insert(b.clone(), fee(&b, 4), NOW + 5).unwrap();
        let info = pool.info(NOW);
        assert_eq!((info.size, info.bytes, info.max_mempool), (2, (a.vsize() + b.vsize()) as u64, 123_456));
        assert_eq!(info.total_fee, fee(&a, 2) + fee(&b, 4));
        assert!(info.usage > info.bytes);
        assert_eq!(info.mempool_min_fee, FeeRate::from_sat_per_vb_u32(1));
        let e = pool.get(&b.compute_txid()).unwrap();
        assert_eq!((e.time, e.fee, e.vsize, e.weight), (NOW + 5, fee(&b, 4), b.vsize() as u64, b.weight()));
        assert_eq!(e.fee_rate(), FeeRate::from_sat_per_vb_u32(4));
        let mut ids = vec![a.compute_txid(), b.compute_txid()];
        ids.sort();
        assert_eq!(pool.txids(), ids);
        assert_eq!(pool.remove_recursive(&a.compute_txid()).len(), 2);
        assert_consistent(&pool);
        assert_eq!(pool.info(NOW).usage, 0);
    }
}
