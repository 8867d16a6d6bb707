//! Proof-of-work targets: aserti3-2d (ASERT) and Bitcoin's 2016-block retarget.
//!
//! Key design decision: ASERT is the integer algorithm of Bitcoin Cash's aserti3-2d spec
//! (2020-11-15), bit for bit — fixed-point exponent in 1/65536ths, cubic approximation of
//! 2^x, arithmetic shift — anchored at the genesis block, whose parent time is taken to be
//! genesis time minus one spacing. The product `anchor_target * factor` is formed in 512 bits
//! (rust-bitcoin keeps its `U256` private), so pow limits above 2^224 (devnet's regtest-easy
//! `0x207fffff`) work too; for limits below 2^224 the results equal the spec's 256-bit ones,
//! which the official test vectors below check.

use bitcoin::pow::{CompactTarget, Target};

use crate::params::{Difficulty, Params};

#[allow(clippy::all)]
mod wide {
    uint::construct_uint! {
        /// 512-bit unsigned integer for intermediate products.
        pub(super) struct U512(8);
    }
}
use wide::U512;

fn to_wide(t: Target) -> U512 {
    U512::from_big_endian(&t.to_be_bytes())
}

/// `None` when `w` does not fit 256 bits.
fn from_wide(w: U512) -> Option<Target> {
    if w.bits() > 256 {
        return None;
    }
    let be = w.to_big_endian();
    let mut out = [0u8; 32];
    out.copy_from_slice(&be[32..]);
    Some(Target::from_be_bytes(out))
}

/// Decodes compact `bits` as Bitcoin Core does, refusing negative, zero, overflowing values
/// and targets above `pow_limit`.
pub fn target_from_bits(bits: CompactTarget, pow_limit: Target) -> Option<Target> {
    let n = bits.to_consensus();
    let size = n >> 24;
    let word = n & 0x007f_ffff;
    let negative = word != 0 && (n & 0x0080_0000) != 0;
    let overflow = word != 0 && (size > 34 || (word > 0xff && size > 33) || (word > 0xffff && size > 32));
    if negative || overflow {
        return None;
    }
    let target = Target::from_compact(bits);
    if target == Target::ZERO || target > pow_limit {
        return None;
    }
    Some(target)
}

/// aserti3-2d: the target of the block after one that is `height_diff` blocks above the
/// anchor and whose time is `time_diff` seconds after the anchor's parent.
///
/// `next = anchor_target * 2^((time_diff - spacing * (height_diff + 1)) / half_life)`,
/// computed in fixed point as the spec does, then clamped to `[1, pow_limit]`.
pub fn asert_target(
    anchor_target: Target,
    pow_limit: Target,
    spacing_s: i64,
    half_life_s: i64,
    time_diff: i64,
    height_diff: i64,
) -> Target {
    debug_assert!(height_diff >= 0 && half_life_s > 0);
    // i128 so that no input can overflow; equal to the spec's i64 whenever that doesn't.
    let drift = i128::from(time_diff) - i128::from(spacing_s) * (i128::from(height_diff) + 1);
    let exponent = drift * 65536 / i128::from(half_life_s); // truncates toward zero, as C++
    let mut shifts = exponent >> 16; // arithmetic shift: floor
    let frac = (exponent & 0xffff) as u128;
    let factor: u128 = 65536
        + ((195_766_423_245_049 * frac + 971_821_376 * frac * frac + 5127 * frac * frac * frac + (1u128 << 47)) >> 48);
    let mut next = to_wide(anchor_target) * U512::from(factor as u64);
    shifts -= 16;
    let limit = to_wide(pow_limit);
    if shifts <= 0 {
        let right = -shifts;
        next = if right >= 512 { U512::zero() } else { next >> (right as usize) };
    } else if next.bits() as i128 + shifts > 512 {
        next = limit;
    } else {
        next <<= shifts as usize;
    }
    if next.is_zero() {
        next = U512::one();
    } else if next > limit {
        next = limit;
    }
    from_wide(next).expect("clamped to the pow limit")
}

/// Bitcoin's retarget: `last_target * clamp(timespan, t/4, 4t) / t` with
/// `t = 2016 * spacing`, capped at `pow_limit`.
pub fn retarget_2016(
    last_bits: CompactTarget,
    first_time: u32,
    last_time: u32,
    spacing_s: u64,
    pow_limit: Target,
) -> CompactTarget {
    let target_timespan = 2016 * spacing_s as i64;
    let actual = (i64::from(last_time) - i64::from(first_time)).clamp(target_timespan / 4, target_timespan * 4);
    let last = to_wide(Target::from_compact(last_bits));
    let next = last * U512::from(actual as u64) / U512::from(target_timespan as u64);
    let limit = to_wide(pow_limit);
    let next = if next > limit { limit } else { next };
    from_wide(next).expect("at most the pow limit").to_compact_lossy()
}

/// What the next-target rules need to know of the previous block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrevBlock {
    /// Its height.
    pub height: u32,
    /// Its header time.
    pub time: u32,
    /// Its bits.
    pub bits: CompactTarget,
}

/// The bits a block on top of `prev` must carry. `ancestor_time(h)` returns the time of the
/// block at height `h` on `prev`'s chain (asked only for `Retarget2016`, at epoch starts).
pub fn next_bits(params: &Params, prev: PrevBlock, ancestor_time: impl FnOnce(u32) -> u32) -> CompactTarget {
    match params.difficulty {
        Difficulty::Asert { half_life_s } => {
            let anchor = &params.genesis.header;
            asert_target(
                Target::from_compact(anchor.bits),
                params.pow_limit,
                params.target_spacing_s as i64,
                half_life_s as i64,
                i64::from(prev.time) - params.asert_anchor_parent_time(),
                i64::from(prev.height),
            )
            .to_compact_lossy()
        }
        Difficulty::Fixed => params.pow_limit_bits,
        Difficulty::Retarget2016 => {
            #[allow(clippy::manual_is_multiple_of)] // is_multiple_of is newer than our MSRV 1.85
            if (prev.height + 1) % 2016 != 0 {
                return prev.bits;
            }
            let first_time = ancestor_time(prev.height + 1 - 2016);
            retarget_2016(prev.bits, first_time, prev.time, params.target_spacing_s, params.pow_limit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(n: u32) -> CompactTarget {
        CompactTarget::from_consensus(n)
    }

    /// Runs official aserti3-2d vectors: (height, time, expected bits) of the block *before*
    /// the one whose bits are computed. Spec constants: 600 s spacing, 2-day half-life,
    /// pow limit 0x1d00ffff.
    fn run(anchor_height: i128, anchor_parent_time: i64, anchor_bits: u32, rows: &[(i128, i64, u32)]) {
        let limit = Target::from_compact(bits(0x1d00ffff));
        for &(height, time, expected) in rows {
            let got = asert_target(
                Target::from_compact(bits(anchor_bits)),
                limit,
                600,
                172_800,
                time - anchor_parent_time,
                (height - anchor_height) as i64,
            )
            .to_compact_lossy();
            assert_eq!(got, bits(expected), "height {height} time {time}");
        }
    }

    #[test]
    fn asert_official_vectors() {
        // run01: steady 600 s blocks at the pow limit.
        run(1, 0, 0x1d00ffff, &[(2, 1200, 0x1d00ffff), (3, 1800, 0x1d00ffff), (11, 6600, 0x1d00ffff)]);
        // run02: steady 600 s blocks at an arbitrary target.
        run(1, 0, 0x1a2b3c4d, &[(2, 1200, 0x1a2b3c4d), (7, 4200, 0x1a2b3c4d)]);
        // run05: half-life height jumps without time passing halve the target, down to 1.
        run(
            1,
            0,
            0x1d00ffff,
            &[
                (2, 0, 0x1d00fec5),
                (290, 0, 0x1c7f62c0),
                (578, 0, 0x1c3fb160),
                (2306, 0, 0x1c00fec5),
                (60194, 0, 0x027f6200),
                (62498, 0, 0x017f0000),
                (64226, 0, 0x01010000),
                (64514, 0, 0x01010000),
            ],
        );
        // run06: random solve times around a real-life target.
        run(
            1,
            0,
            0x1802aee8,
            &[
                (2, 1200, 0x1802aee8),
                (3, 1310, 0x1802ad91),
                (4, 1327, 0x1802abf8),
                (5, 1739, 0x1802ab73),
                (9, 7099, 0x1802b39c),
                (10, 7099, 0x1802b1f2),
                (22, 18902, 0x1802bed6),
            ],
        );
        // run09: 300 s blocks across the signed 32-bit height limit.
        run(
            2_147_483_642,
            1_234_567_290,
            0x1802aee8,
            &[
                (2_147_483_643, 1_234_568_190, 0x1802ae16),
                (2_147_483_647, 1_234_569_390, 0x1802aacd),
                (2_147_483_648, 1_234_569_690, 0x1802a9fa),
                (2_147_483_652, 1_234_570_890, 0x1802a6b7),
            ],
        );
        // run10: 900 s blocks across the signed 64-bit height and 32-bit time limits.
        run(
            9_223_372_036_854_775_802,
            2_147_483_047,
            0x1802aee8,
            &[
                (9_223_372_036_854_775_803, 2_147_484_547, 0x1802afbb),
                (9_223_372_036_854_775_808, 2_147_489_047, 0x1802b3e5),
                (9_223_372_036_854_775_812, 2_147_492_647, 0x1802b73d),
            ],
        );
    }

    fn devnet_like() -> (Target, Target) {
        // A target well below the limit, so that it can move both ways.
        (Target::from_compact(bits(0x1e0fffff)), Target::from_compact(bits(0x207fffff)))
    }

    #[test]
    fn asert_on_time_keeps_fast_raises_slow_lowers_difficulty() {
        let (anchor, limit) = devnet_like();
        let (spacing, hl) = (2, 60);
        for h in [0i64, 1, 10, 1000, 100_000] {
            // On schedule: block h at anchor_parent + (h+1) * spacing.
            let on_time = asert_target(anchor, limit, spacing, hl, (h + 1) * spacing, h);
            assert_eq!(on_time, anchor, "on time at height {h}");
            let fast = asert_target(anchor, limit, spacing, hl, (h + 1) * spacing - 30, h);
            assert!(fast < anchor, "fast blocks lower the target (raise difficulty) at {h}");
            let slow = asert_target(anchor, limit, spacing, hl, (h + 1) * spacing + 30, h);
            assert!(slow > anchor, "slow blocks raise the target at {h}");
            // One half-life ahead of schedule halves the target (within the cubic's error).
            let half = asert_target(anchor, limit, spacing, hl, (h + 1) * spacing - hl, h);
            assert_eq!(half.to_compact_lossy(), bits(0x1e07ffff));
        }
    }

    #[test]
    fn asert_never_exceeds_the_pow_limit_and_never_reaches_zero() {
        let (_, limit) = devnet_like();
        for (time_diff, height_diff) in [(1i64 << 40, 0i64), (i64::from(u32::MAX), 5), (1_000_000, 1), (2, 0)] {
            let t = asert_target(limit, limit, 2, 60, time_diff, height_diff);
            assert!(t <= limit);
        }
        assert_eq!(asert_target(limit, limit, 2, 60, 1 << 40, 0), limit);
        let tiny = asert_target(limit, limit, 2, 60, 0, 1_000_000);
        assert_eq!(tiny.to_compact_lossy(), bits(0x01010000), "floors at target 1");
        // Mainnet's limit sits above 2^224 too; big shifts still saturate cleanly.
        let m = Params::mainnet();
        assert_eq!(asert_target(m.pow_limit, m.pow_limit, 60, 3600, 1 << 40, 3), m.pow_limit);
    }

    #[test]
    fn next_bits_at_genesis_is_the_pow_limit_and_follows_asert() {
        for p in Params::all() {
            let g = &p.genesis.header;
            let prev = PrevBlock { height: 0, time: g.time, bits: g.bits };
            assert_eq!(next_bits(p, prev, |_| unreachable!()), p.pow_limit_bits, "{}", p.name);
            // Ten blocks far too fast: harder than the limit (a sealed network stays at it).
            let prev = PrevBlock { height: 10, time: g.time, bits: g.bits };
            let b = next_bits(p, prev, |_| unreachable!());
            match p.difficulty {
                Difficulty::Fixed => assert_eq!(b, p.pow_limit_bits, "{}", p.name),
                _ => assert!(Target::from_compact(b) < p.pow_limit, "{}", p.name),
            }
            // Far too slow: capped at the limit.
            let prev = PrevBlock { height: 10, time: g.time + 1_000_000, bits: g.bits };
            assert_eq!(next_bits(p, prev, |_| unreachable!()), p.pow_limit_bits);
        }
    }

    #[test]
    fn retarget_2016_matches_bitcoin() {
        // Bitcoin mainnet block 32255 -> 32256: the first difficulty increase.
        let limit = Target::from_compact(bits(0x1d00ffff));
        let got = retarget_2016(bits(0x1d00ffff), 1_261_130_161, 1_262_152_739, 600, limit);
        assert_eq!(got, bits(0x1d00d86a));
        // Clamped to a factor of 4 either way, and never above the limit.
        let t = Target::from_compact(bits(0x1c0fffff));
        let fast = retarget_2016(bits(0x1c0fffff), 0, 1, 600, limit);
        assert_eq!(Target::from_compact(fast), Target::from_compact(bits(0x1c03ffff)));
        assert!(Target::from_compact(fast) < t);
        let slow = retarget_2016(bits(0x1c0fffff), 0, 100 * 2016 * 600, 600, limit);
        assert_eq!(slow, bits(0x1c3ffffc));
        assert_eq!(retarget_2016(bits(0x1d00ffff), 0, u32::MAX, 600, limit), bits(0x1d00ffff));
        // Only at epoch boundaries.
        let mut p = Params::devnet().clone();
        p.difficulty = Difficulty::Retarget2016;
        let prev = PrevBlock { height: 2014, time: 5000, bits: bits(0x1e0fffff) };
        assert_eq!(next_bits(&p, prev, |_| unreachable!()), bits(0x1e0fffff));
        let prev = PrevBlock { height: 2015, time: 100 + 2016 * 2 / 4, bits: bits(0x1e0fffff) };
        assert_eq!(
            next_bits(&p, prev, |h| {
                assert_eq!(h, 0);
                100
            }),
            bits(0x1e03ffff)
        );
    }

    #[test]
    fn bits_decoding_refuses_bad_encodings() {
        let limit = Target::from_compact(bits(0x207fffff));
        assert!(target_from_bits(bits(0x207fffff), limit).is_some());
        assert!(target_from_bits(bits(0x2100ffff), limit).is_none(), "above the limit");
        assert!(target_from_bits(bits(0x1d80ffff), limit).is_none(), "negative");
        assert!(target_from_bits(bits(0x1d000000), limit).is_none(), "zero");
        assert!(target_from_bits(bits(0xff123456), limit).is_none(), "overflow");
        let strict = Target::from_compact(bits(0x1d00ffff));
        assert!(target_from_bits(bits(0x1e00ffff), strict).is_none());
    }
}
