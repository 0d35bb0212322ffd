//! xxh3-64 (the dedup filter's fingerprint) beside SHA-256, in the same run.
//!
//! Both hash the same pseudo-random buffer at 16 B, 64 B, 1 KiB, 64 KiB and 1 MiB;
//! `Throughput::Bytes` makes criterion report bytes per second. Before measuring, each
//! function is checked against a published test vector, so a broken build cannot produce a
//! fast, wrong number.
//!
//! `sha2` picks its SHA-NI / AVX2 backend at run time (the `cpufeatures` crate) and
//! `xxhash_rust::xxh3` its SSE2 path (AVX2 only with `-C target-feature=+avx2`), so the
//! numbers depend on the CPU's features: BENCHMARKS.md lists the ones of the machine measured.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_64;

const SIZES: [usize; 5] = [16, 64, 1024, 64 * 1024, 1024 * 1024];

/// Deterministic, incompressible-looking input.
fn input(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Known answers: FIPS 180-2 "abc" for SHA-256, the reference implementation's empty-input
/// value for xxh3-64.
fn check() {
    assert_eq!(
        hex(&Sha256::digest(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    // Every size hashes to something that depends on the input.
    for size in SIZES {
        let mut data = input(size);
        let (x, s) = (xxh3_64(&data), Sha256::digest(&data));
        data[size / 2] ^= 1;
        assert_ne!(x, xxh3_64(&data), "xxh3 ignored a flipped bit at {size} B");
        assert_ne!(
            s,
            Sha256::digest(&data),
            "sha256 ignored a flipped bit at {size} B"
        );
    }
}

fn hashes(c: &mut Criterion) {
    check();
    for size in SIZES {
        let data = input(size);
        let mut group = c.benchmark_group(format!("hash/{size}B"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .throughput(Throughput::Bytes(size as u64));
        group.bench_function("xxh3_64", |b| b.iter(|| xxh3_64(black_box(&data))));
        group.bench_function("sha256", |b| b.iter(|| Sha256::digest(black_box(&data))));
        group.finish();
    }
}

criterion_group!(benches, hashes);
criterion_main!(benches);
