//! Statistical sanity of `seed` output taken over the wire: a few MiB from
//! one daemon has no repeated 16-byte block and a byte distribution that a
//! chi-square test accepts. Run for the default source and for a daemon with
//! no source and no exchange file (the pool alone must still be good).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;
use crate::common::prng_util;

use common::*;
use prng_util::*;
use std::collections::HashSet;

const TOTAL: usize = 4 << 20;

fn collect(d: &TestDaemon) -> Vec<u8> {
    let mut c = d.client();
    let mut out = Vec::with_capacity(TOTAL + 255);
    // Mixed request sizes, as smtpd (32) and larger clients ask.
    let sizes = [255, 32, 240, 1, 128, 17];
    let mut i = 0;
    while out.len() < TOTAL {
        out.extend(seed(&mut c, sizes[i % sizes.len()]));
        i += 1;
    }
    out.truncate(TOTAL);
    out
}

/// Pearson's statistic over the 256 byte values.
fn chi_square(data: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    for &b in data {
        counts[usize::from(b)] += 1;
    }
    let expected = data.len() as f64 / 256.0;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

fn check(data: &[u8]) {
    let mut seen = HashSet::with_capacity(data.len() / 16);
    for block in data.chunks_exact(16) {
        assert!(seen.insert(block), "repeated 16-byte block {block:02x?}");
    }
    // 255 degrees of freedom: mean 255, sd ~22.6. Accept [162, 377], the
    // two-sided 1e-6 band (Wilson-Hilferty), so a good generator fails
    // about once in a million runs, a biased one at once.
    let x2 = chi_square(data);
    eprintln!(
        "{} bytes, {} distinct 16-byte blocks, chi-square {x2:.1} (255 df)",
        data.len(),
        seen.len()
    );
    assert!((162.0..=377.0).contains(&x2), "chi-square {x2:.1}");
}

#[test]
fn statistic_rejects_biased_data() {
    // The check itself must be able to fail.
    let mut biased: Vec<u8> = Vec::with_capacity(TOTAL);
    let mut x: u32 = 12345;
    while biased.len() < TOTAL {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let b = (x >> 16) as u8;
        biased.push(if b == 0 { 1 } else { b }); // never a zero byte
    }
    assert!(chi_square(&biased) > 377.0);
    let mut repeats = vec![0u8; 64];
    repeats.extend_from_slice(&[0u8; 16]);
    let dup = std::panic::catch_unwind(|| check(&repeats));
    assert!(dup.is_err());
}

#[test]
fn seeds_from_the_managed_pool_look_random() {
    let d = TestDaemon::start("");
    wait_status(&d, |s| s.reseeds >= 1 && s.exchange_updates >= 1);
    let data = collect(&d);
    check(&data);
    assert!(status(&d).seeds > 16_000);
}

#[test]
fn seeds_from_the_bare_pool_look_random() {
    let d = TestDaemon::start("tls_random_source =\ntls_random_exchange_name =");
    check(&collect(&d));
}
