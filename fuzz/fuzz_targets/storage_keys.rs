//! Fuzzes the storage encodings: the redb key and value types of `hallrelay_store::schema`,
//! and the payload log's end as recorded in the `meta` table.
//!
//! The store finds a candidate's autosaves, the replay order and what retention may purge by
//! ranges over encoded keys, so the encoded order must be the order the code reasons in.
//! Properties, for arbitrary values of every key and value type the tables use (the `const _`
//! items below fail to compile if a table's types change without this target):
//! - encoding round-trips: `from_bytes(as_bytes(v))` is `v`, re-encodes to the same bytes, and
//!   fixed-width types encode to their width;
//! - `compare` on the encodings agrees with Rust's ordering of the values (tuples
//!   lexicographically, strings by bytes), and equal values encode to equal bytes;
//! - the separators redb stores in its internal nodes are valid encodings that sort between
//!   the two keys, and the smallest encoding sorts below every key;
//! - the ranges the store scans hold exactly the rows meant: one candidate's autosaves, one
//!   replay class of the outbox, the deliveries before a cut-off;
//! - `decode_log_end` inverts `encode_log_end`, and decodes exactly the 16-byte values.
#![no_main]

use std::cmp::Ordering;

use hallrelay_store::schema::{
    self, CLASS_FINAL, CLASS_HISTORY, CLASS_LATEST, decode_log_end, encode_log_end,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use redb::{Key, TableDefinition, Value};

// The tables' types, checked at compile time.
const _: TableDefinition<&str, &[u8]> = schema::META;
const _: TableDefinition<(&str, &str, u64), &[u8]> = schema::AUTOSAVES;
const _: TableDefinition<[u8; 32], (u64, u64, u64, u64)> = schema::BLOBS;
const _: TableDefinition<u64, u64> = schema::SEGMENTS;
const _: TableDefinition<(u8, u64), (&str, &str, u64)> = schema::OUTBOX;
const _: TableDefinition<(&str, &str), (u64, u64)> = schema::LATEST_PENDING;
const _: TableDefinition<(u64, u64), (&str, &str, u64)> = schema::DELIVERED;
const _: TableDefinition<(&str, &str), &str> = schema::CHAINS;
const _: TableDefinition<u64, &[u8]> = schema::AUDIT;
const _: TableDefinition<&str, u64> = schema::STATS;

// The outbox replays finals first, then each candidate's newest, then history.
const _: () = assert!(CLASS_FINAL < CLASS_LATEST && CLASS_LATEST < CLASS_HISTORY);

/// The key of `autosaves`: (exam, candidate, seq).
type Name = (&'static str, &'static str, u64);

#[derive(Arbitrary, Debug)]
struct Input {
    names: [(String, String, u64); 2],
    /// Which parts of the second name are copied from the first, so that the fuzzer often
    /// compares names that differ in one place only.
    shared: u8,
    outbox: [(u8, u64); 2],
    pairs: [(u64, u64); 2],
    hashes: [[u8; 32]; 2],
    numbers: [u64; 2],
    blob: (u64, u64, u64, u64),
    bytes: Vec<u8>,
}

/// Encodes `value` as `V`, checking that it decodes to itself and re-encodes to the same bytes.
fn encode<V: Value + 'static>(value: &V::SelfType<'_>) -> Vec<u8> {
    let bytes = V::as_bytes(value).as_ref().to_vec();
    if let Some(width) = V::fixed_width() {
        assert_eq!(bytes.len(), width, "{value:?} is not its type's width");
    }
    {
        let back = V::from_bytes(&bytes);
        let (got, want) = (format!("{back:?}"), format!("{value:?}"));
        assert_eq!(got, want, "decoding changed the value");
        let again = V::as_bytes(&back);
        assert_eq!(again.as_ref(), bytes, "re-encoding changed the bytes");
    }
    bytes
}

/// Checks that `K` orders the encodings of `a` and `b` as `expected`, the values' own order.
fn check_key<K: Key + 'static>(a: &K::SelfType<'_>, b: &K::SelfType<'_>, expected: Ordering) {
    let (ea, eb) = (encode::<K>(a), encode::<K>(b));
    assert_eq!(K::compare(&ea, &eb), expected, "{a:?} vs {b:?}");
    assert_eq!(K::compare(&eb, &ea), expected.reverse(), "{b:?} vs {a:?}");
    assert_eq!(K::compare(&ea, &ea), Ordering::Equal, "{a:?}");
    let (low, high) = match expected {
        Ordering::Equal => {
            assert_eq!(ea, eb, "{a:?} has two encodings");
            return;
        }
        Ordering::Less => (&ea, &eb),
        Ordering::Greater => (&eb, &ea),
    };
    let separator = K::separator(low, high);
    let decoded = K::from_bytes(&separator);
    assert_eq!(
        K::as_bytes(&decoded).as_ref(),
        &*separator,
        "the separator is no encoding"
    );
    assert!(
        K::compare(low, &separator).is_le(),
        "the separator sorts below {a:?}/{b:?}"
    );
    assert!(
        K::compare(&separator, high).is_lt(),
        "the separator sorts above {a:?}/{b:?}"
    );
    if let Some(min) = K::min_encoded_key() {
        assert!(
            K::compare(&min, low).is_le(),
            "the minimum sorts above {a:?}/{b:?}"
        );
    }
}

/// Whether `key` lies in `low..=high` (or `low..high`), as redb's range decides it.
fn in_range<K: Key>(key: &[u8], low: &[u8], high: &[u8], inclusive: bool) -> bool {
    K::compare(low, key).is_le()
        && match K::compare(key, high) {
            Ordering::Less => true,
            Ordering::Equal => inclusive,
            Ordering::Greater => false,
        }
}

fuzz_target!(|input: Input| {
    let [first, second] = &input.names;
    let a = (first.0.as_str(), first.1.as_str(), first.2);
    let exam = if input.shared & 1 != 0 {
        &first.0
    } else {
        &second.0
    };
    let candidate = if input.shared & 2 != 0 {
        &first.1
    } else {
        &second.1
    };
    let seq = if input.shared & 4 != 0 {
        first.2
    } else {
        second.2
    };
    let b = (exam.as_str(), candidate.as_str(), seq);

    // autosaves, and the names in outbox and delivered.
    check_key::<Name>(&a, &b, a.cmp(&b));
    // latest_pending and chains.
    check_key::<(&str, &str)>(&(a.0, a.1), &(b.0, b.1), (a.0, a.1).cmp(&(b.0, b.1)));
    // meta, stats, and the receipt hashes in chains.
    check_key::<&str>(&a.0, &b.0, a.0.cmp(b.0));
    let [x, y] = input.outbox;
    check_key::<(u8, u64)>(&x, &y, x.cmp(&y));
    let [p, q] = input.pairs;
    check_key::<(u64, u64)>(&p, &q, p.cmp(&q));
    let [h, k] = &input.hashes;
    check_key::<[u8; 32]>(h, k, h.cmp(k));
    let [m, n] = input.numbers;
    check_key::<u64>(&m, &n, m.cmp(&n));
    encode::<(u64, u64, u64, u64)>(&input.blob);
    encode::<&[u8]>(&input.bytes.as_slice());

    // One candidate's autosaves: the range `list` and `latest` scan.
    let key = encode::<Name>(&a);
    let low = encode::<Name>(&(b.0, b.1, 0));
    let high = encode::<Name>(&(b.0, b.1, u64::MAX));
    assert_eq!(
        in_range::<Name>(&key, &low, &high, true),
        (a.0, a.1) == (b.0, b.1),
        "{a:?} in the range of {b:?}'s candidate"
    );

    // One replay class of the outbox.
    let key = encode::<(u8, u64)>(&x);
    let low = encode::<(u8, u64)>(&(y.0, 0));
    let high = encode::<(u8, u64)>(&(y.0, u64::MAX));
    assert_eq!(in_range::<(u8, u64)>(&key, &low, &high, true), x.0 == y.0);

    // What retention may purge: delivered before a cut-off.
    let key = encode::<(u64, u64)>(&p);
    let low = encode::<(u64, u64)>(&(0, 0));
    let high = encode::<(u64, u64)>(&(q.0, 0));
    assert_eq!(in_range::<(u64, u64)>(&key, &low, &high, false), p.0 < q.0);

    // The payload log's end in `meta`.
    assert_eq!(decode_log_end(&encode_log_end(p)), Some(p));
    match decode_log_end(&input.bytes) {
        Some(end) => assert_eq!(encode_log_end(end).as_slice(), input.bytes),
        None => assert_ne!(input.bytes.len(), 16),
    }
});
