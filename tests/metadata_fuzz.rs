//! Property and fuzz tests of the metadata codec, on stable Rust.
//!
//! The bulk (at least 1,000,000 cases in a release build) comes from a seeded
//! splitmix64 generator: random records round-trip exactly, and random bytes and
//! mutations of valid records (bit flips, truncation, insertion, deletion,
//! length-field corruption, splices) never panic. Any input `decode` accepts must
//! be canonical: re-encoding it gives the same bytes. proptest adds shrinking
//! round trips of structured records.
//!
//! `RDT_FUZZ_CASES` overrides the number of bulk cases (a debug build runs a tenth
//! of them by default, to keep `cargo test` short).

use proptest::prelude::*;
use ray_rdt::dlpack::{DLDataType, DLDevice};
use ray_rdt::testing::metadata::{MAX_ENDPOINT_LEN, MAX_HOST_ID_LEN, MAX_ID_LEN, VERSION};
use ray_rdt::testing::MAX_NDIM;
use ray_rdt::testing::{ErrorKind, Metadata, ObjectId, Place, Producer, TensorMeta, TransportKind};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// splitmix64: a small, fast, seedable generator (Steele, Lea, Flood 2014).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the tiny modulo bias does not matter here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Bulk cases per test function: a quarter of the total.
fn cases_per_test() -> usize {
    let total: usize = std::env::var("RDT_FUZZ_CASES")
        .ok()
        .map(|v| v.parse().expect("RDT_FUZZ_CASES is a number"))
        .unwrap_or(if cfg!(debug_assertions) {
            100_000
        } else {
            1_000_000
        });
    total.div_ceil(4)
}

/// Decodes `input`, failing the test with the input in hex if decode panics or
/// accepts a non-canonical record. Returns whether it was accepted.
fn check(input: &[u8], seed: u64) -> bool {
    let hex = || input.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let decoded = catch_unwind(AssertUnwindSafe(|| Metadata::decode(input)))
        .unwrap_or_else(|_| panic!("decode panicked (seed {seed}) on {}", hex()));
    match decoded {
        Ok(m) => {
            assert_eq!(
                m.encode().unwrap(),
                input,
                "accepted a non-canonical record (seed {seed}): {}",
                hex()
            );
            true
        }
        Err(e) => {
            assert_eq!(
                e.kind(),
                ErrorKind::MalformedMetadata,
                "{e} (seed {seed}): {}",
                hex()
            );
            false
        }
    }
}

/// A random valid tensor descriptor, mostly small, sometimes at the limits.
fn random_tensor(rng: &mut Rng) -> TensorMeta {
    const CODES: [u8; 6] = [0, 1, 2, 4, 5, 6];
    let dtype = DLDataType {
        code: CODES[rng.below(CODES.len())],
        bits: 8 << rng.below(4),
        lanes: 1 + rng.below(2) as u16,
    };
    let ndim = if rng.chance(50) {
        MAX_NDIM
    } else {
        rng.below(5)
    };
    let shape: Vec<i64> = (0..ndim)
        .map(|_| {
            if ndim > 8 {
                rng.below(2) as i64
            } else if rng.chance(40) {
                (rng.next() >> 40) as i64 // a large dimension: a multi-byte varint
            } else {
                rng.below(300) as i64
            }
        })
        .collect();
    TensorMeta::compact(dtype, shape)
        .unwrap_or_else(|_| TensorMeta::compact(dtype, vec![1]).expect("valid"))
}

/// Random tensors (sometimes repeating the previous one's dtype and shape, as
/// the rows of a matrix do), placed in a few random extents.
fn random_tensors(rng: &mut Rng, n: usize) -> (Vec<TensorMeta>, Vec<u64>, Vec<Option<Place>>) {
    let mut tensors: Vec<TensorMeta> = Vec::with_capacity(n);
    for _ in 0..n {
        match tensors.last() {
            Some(prev) if rng.chance(2) => tensors.push(prev.clone()),
            _ => tensors.push(random_tensor(rng)),
        }
    }
    let mut extents = vec![0u64; 1 + rng.below(3)];
    let places = tensors
        .iter()
        .map(|t| {
            (t.nbytes > 0).then(|| {
                let extent = rng.below(extents.len());
                let offset = (rng.next() % 4096) * if rng.chance(8) { 1 << 30 } else { 1 };
                let end = &mut extents[extent];
                *end = (*end).max(offset + t.nbytes);
                Place {
                    extent: extent as u32,
                    offset,
                }
            })
        })
        .collect();
    extents.iter_mut().for_each(|e| *e += rng.below(100) as u64);
    (tensors, extents, places)
}

/// A random valid record.
fn random_metadata(rng: &mut Rng) -> Metadata {
    let len = |rng: &mut Rng, max: usize| if rng.chance(20) { max } else { rng.below(40) };
    let (node_len, actor_len, host_len, endpoint_len, tcp_len) = (
        len(rng, MAX_ID_LEN),
        len(rng, MAX_ID_LEN),
        len(rng, MAX_HOST_ID_LEN),
        len(rng, MAX_ENDPOINT_LEN),
        len(rng, MAX_ENDPOINT_LEN),
    );
    let text = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| char::from(b' ' + rng.below(95) as u8))
            .collect()
    };
    let data_len = if rng.chance(10) { 200 } else { rng.below(64) };
    let n = rng.below(9);
    let (tensors, extents, places) = loop {
        let drawn = random_tensors(rng, n);
        if drawn.1.iter().all(|&len| len <= 1 << 47) {
            break drawn;
        }
    };
    Metadata {
        transport: TransportKind::ALL[rng.below(TransportKind::ALL.len())],
        device: DLDevice {
            device_type: rng.next() as i32,
            device_id: rng.next() as i32,
        },
        object: ObjectId(rng.bytes(28).try_into().unwrap()),
        tensors,
        extents,
        places,
        producer: Producer {
            node_id: rng.bytes(node_len),
            pid: rng.next() as u32,
            actor_id: rng.bytes(actor_len),
            host_id: rng.bytes(host_len),
            endpoint: text(rng, endpoint_len),
            tcp_endpoint: text(rng, tcp_len),
        },
        transport_data: rng.bytes(data_len),
        inline: if rng.chance(2) {
            let n = if rng.chance(10) { 300 } else { rng.below(128) };
            Some(rng.bytes(n))
        } else {
            None
        },
    }
}

/// Length of the varint at the start of `bytes`.
fn varint_len(bytes: &[u8]) -> usize {
    bytes.iter().position(|b| b & 0x80 == 0).unwrap() + 1
}

/// The value of the varint at the start of `bytes`.
fn varint(bytes: &[u8]) -> u64 {
    bytes[..varint_len(bytes)]
        .iter()
        .rev()
        .fold(0, |v, b| (v << 7) | u64::from(b & 0x7f))
}

/// Offsets and widths of every length, count, size or index field in a valid
/// record, found by walking the wire format (see `src/metadata.rs`).
fn length_fields(record: &[u8]) -> Vec<(usize, usize)> {
    let meta = Metadata::decode(record).unwrap();
    let u16_at = |at: usize| u16::from_le_bytes([record[at], record[at + 1]]) as usize;
    let mut fields = Vec::new();
    let mut at = 15 + 28; // magic, version, transport, device, object ID
    for skip_after in [4, 0, 0, 0, 0] {
        // node_id (then pid), actor_id, host_id, endpoint, tcp_endpoint
        fields.push((at, 2));
        at += 2 + u16_at(at) + skip_after;
    }
    let field = |fields: &mut Vec<(usize, usize)>, at: &mut usize| {
        let n = varint_len(&record[*at..]);
        fields.push((*at, n));
        *at += n;
    };
    field(&mut fields, &mut at); // extent count
    for _ in 0..meta.extents.len() {
        field(&mut fields, &mut at);
    }
    field(&mut fields, &mut at); // tensor count
    for (t, place) in meta.tensors.iter().zip(&meta.places) {
        let repeat = record[at] == 1;
        fields.push((at, 1)); // flags
        at += 1;
        if !repeat {
            at += 2; // dtype code, bits
            field(&mut fields, &mut at); // lanes
            fields.push((at, 1)); // ndim
            at += 1;
            for _ in 0..t.shape.len() {
                field(&mut fields, &mut at);
            }
        }
        if place.is_some() {
            field(&mut fields, &mut at); // extent index
            field(&mut fields, &mut at); // offset
        }
    }
    let data_len = varint(&record[at..]) as usize;
    field(&mut fields, &mut at);
    at += data_len;
    fields.push((at, 1)); // flags
    if record[at] != 0 {
        fields.push((at + 1, varint_len(&record[at + 1..]))); // inline data
    }
    fields
}

/// One random corruption of a valid record.
fn mutate(rng: &mut Rng, record: &[u8], other: &[u8]) -> Vec<u8> {
    let mut m = record.to_vec();
    let at = rng.below(m.len());
    match rng.below(7) {
        0 => (0..1 + rng.below(8)).for_each(|_| {
            let i = rng.below(m.len());
            m[i] ^= 1 << rng.below(8);
        }),
        1 => m.truncate(at),
        2 => {
            let n = 1 + rng.below(16);
            drop(m.splice(at..at, rng.bytes(n)));
        }
        3 => drop(m.drain(at..(at + 1 + rng.below(16)).min(m.len()))),
        4 => {
            let fields = length_fields(record);
            let (pos, width) = fields[rng.below(fields.len())];
            let mut current = [0u8; 8];
            current[..width].copy_from_slice(&m[pos..pos + width]);
            let value = match rng.below(4) {
                0 => rng.next(),
                1 => u64::MAX,
                2 => 0,
                _ if rng.chance(2) => u64::from_le_bytes(current).wrapping_add(1),
                _ => u64::from_le_bytes(current).wrapping_sub(1),
            };
            m[pos..pos + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        5 => m[at] = [0x00, 0x7f, 0x80, 0xff][rng.below(4)],
        _ => {
            m.truncate(at);
            m.extend_from_slice(&other[rng.below(other.len())..]);
        }
    }
    m
}

#[test]
fn random_records_round_trip_exactly() {
    let seed = 1;
    let mut rng = Rng(seed);
    for _ in 0..cases_per_test() {
        let m = random_metadata(&mut rng);
        let bytes = m.encode().unwrap();
        assert_eq!(Metadata::decode(&bytes).unwrap(), m);
        assert!(check(&bytes, seed));
    }
}

#[test]
fn mutated_records_are_refused_or_canonical() {
    let seed = 2;
    let mut rng = Rng(seed);
    let mut records: Vec<Vec<u8>> = (0..64)
        .map(|_| random_metadata(&mut rng).encode().unwrap())
        .collect();
    let mut accepted = 0;
    for i in 0..2 * cases_per_test() {
        if i % 1024 == 0 {
            records[rng.below(64)] = random_metadata(&mut rng).encode().unwrap();
        }
        let (a, b) = (rng.below(records.len()), rng.below(records.len()));
        accepted += check(&mutate(&mut rng, &records[a], &records[b]), seed) as usize;
    }
    // Some mutations (a flipped device or pid bit) keep the record valid.
    assert!(accepted > 0);
}

#[test]
fn random_bytes_are_refused() {
    let seed = 3;
    let mut rng = Rng(seed);
    for _ in 0..cases_per_test() {
        let mut input = if rng.chance(2) {
            Vec::new()
        } else {
            [b"RDTM".as_slice(), &VERSION.to_le_bytes()].concat()
        };
        let n = rng.below(128);
        input.extend(rng.bytes(n));
        check(&input, seed);
    }
}

#[test]
fn fields_past_their_limits_are_refused() {
    let mut rng = Rng(4);
    let mut m = random_metadata(&mut rng);
    m.producer.node_id = vec![1; MAX_ID_LEN + 1];
    assert_eq!(m.encode().unwrap_err().kind(), ErrorKind::InvalidArgument);
    m.producer.node_id.clear();
    // A place outside its extent is refused on both sides.
    let (tensors, extents, mut places) = random_tensors(&mut rng, 1);
    m.tensors = vec![TensorMeta::compact(tensors[0].dtype, vec![4]).unwrap()];
    m.extents = extents;
    places[0] = Some(Place {
        extent: 0,
        offset: m.extents[0],
    });
    m.places = places;
    assert_eq!(m.encode().unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn a_hundred_thousand_tensors_fit_and_counts_are_bounded_by_the_record() {
    // The rows of one matrix: one extent, one place each, mostly repeated shapes.
    let mut rng = Rng(5);
    let mut m = random_metadata(&mut rng);
    let row = TensorMeta::compact(
        DLDataType {
            code: 2,
            bits: 16,
            lanes: 1,
        },
        vec![1280],
    )
    .unwrap();
    let n = 100_000u64;
    m.tensors = vec![row; n as usize];
    m.extents = vec![n * 2560];
    m.places = (0..n)
        .map(|i| {
            Some(Place {
                extent: 0,
                offset: i * 2560,
            })
        })
        .collect();
    let record = m.encode().unwrap();
    assert!(record.len() < 700_000, "{} bytes", record.len());
    assert_eq!(Metadata::decode(&record).unwrap(), m);
    // A tensor count larger than the bytes left is refused before anything is
    // allocated for it.
    let fields = length_fields(&record);
    let extent_count_at = fields[5].0;
    let tensor_count_at = extent_count_at + 1 + varint_len(&record[extent_count_at + 1..]);
    let mut forged = record[..tensor_count_at].to_vec();
    forged.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    forged.extend_from_slice(&record[tensor_count_at + varint_len(&record[tensor_count_at..])..]);
    let e = Metadata::decode(&forged).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MalformedMetadata);
    assert!(e.message().contains("claims"), "{e}");
}

prop_compose! {
    fn tensor_meta()(
        code in prop::sample::select(vec![0u8, 1, 2, 4, 5, 6]),
        bits in prop::sample::select(vec![8u8, 16, 32, 64]),
        lanes in 1u16..3,
        shape in prop::collection::vec(0i64..100, 0..6),
    ) -> TensorMeta {
        TensorMeta::compact(DLDataType { code, bits, lanes }, shape).unwrap()
    }
}

prop_compose! {
    fn metadata()(
        transport in prop::sample::select(TransportKind::ALL.to_vec()),
        device in any::<(i32, i32)>(),
        tensors in prop::collection::vec(tensor_meta(), 0..10),
        object in any::<[u8; 28]>(),
        node_id in prop::collection::vec(any::<u8>(), 0..=MAX_ID_LEN),
        pid in any::<u32>(),
        actor_id in prop::collection::vec(any::<u8>(), 0..=MAX_ID_LEN),
        host_id in prop::collection::vec(any::<u8>(), 0..=MAX_HOST_ID_LEN),
        endpoint in "\\PC{0,64}",
        tcp_endpoint in "\\PC{0,64}",
        transport_data in prop::collection::vec(any::<u8>(), 0..256),
        inline in prop::option::of(prop::collection::vec(any::<u8>(), 0..256)),
    ) -> Metadata {
        let device = DLDevice { device_type: device.0, device_id: device.1 };
        // Tensors one after another in one extent, as the rows of a matrix.
        let mut end = 0;
        let places = tensors
            .iter()
            .map(|t| {
                (t.nbytes > 0).then(|| {
                    end += t.nbytes;
                    Place { extent: 0, offset: end - t.nbytes }
                })
            })
            .collect();
        let extents = if end > 0 { vec![end] } else { vec![] };
        Metadata {
            transport,
            device,
            object: ObjectId(object),
            tensors,
            extents,
            places,
            producer: Producer { node_id, pid, actor_id, host_id, endpoint, tcp_endpoint },
            transport_data,
            inline,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn structured_records_round_trip(m in metadata()) {
        let bytes = m.encode().unwrap();
        let decoded = Metadata::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &m);
        prop_assert_eq!(decoded.encode().unwrap(), bytes);
    }

    #[test]
    fn truncated_structured_records_are_refused(m in metadata(), cut in any::<prop::sample::Index>()) {
        let bytes = m.encode().unwrap();
        let cut = cut.index(bytes.len());
        prop_assert_eq!(Metadata::decode(&bytes[..cut]).unwrap_err().kind(), ErrorKind::MalformedMetadata);
    }
}
