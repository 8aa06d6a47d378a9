//! Replays the fuzz targets' seeds and every committed crasher (`tests/fuzz/seeds/TARGET/*`,
//! `tests/fuzz/crashes/TARGET/*`) through the same reader calls the targets make, on stable: a reader
//! that panics again on an input the fuzzer once broke it with fails here, in CI, without nightly.
use std::path::Path;

#[path = "../../../tests/fuzz/fuzz_targets/readers.rs"]
mod readers;

fn replay(folder: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fuzz")
        .join(folder);
    let mut count = 0;
    for (name, read) in readers::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| read(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} makes the reader panic",
                path.display()
            );
            count += 1;
        }
    }
    count
}

#[test]
fn every_seed_and_every_crasher_is_read_without_a_panic() {
    let seeds = replay("seeds");
    assert!(seeds >= 15, "only {seeds} seeds found");
    replay("crashes");
}

#[test]
fn hostile_npy_headers_are_refused_before_allocating() {
    let npy = |header: &str, data: &[u8]| {
        let mut h = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {header}, }}");
        while (h.len() + 11) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((h.len() as u16).to_le_bytes());
        bytes.extend(h.as_bytes());
        bytes.extend(data);
        bytes
    };
    let path = Path::new("hostile.npy");
    // 10^12 elements claimed by a file of a few bytes: an error naming the need, no allocation.
    let e = voc_data::npy::decode_mask(&npy("(1000000, 1000000)", &[0; 16]), path).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // A product that overflows usize.
    let e =
        voc_data::npy::decode_image(&npy("(4294967296, 4294967296, 3)", &[]), path).unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    // A version-2 header claiming 4 GB of header text.
    let mut huge = b"\x93NUMPY\x02\x00".to_vec();
    huge.extend(u32::MAX.to_le_bytes());
    let e = voc_data::npy::decode_mask(&huge, path).unwrap_err();
    assert!(e.to_string().contains("header claims"), "{e}");
    // A descr that starts with a multi-byte character.
    let bad = npy("(1, 1)", &[0]);
    let text = String::from_utf8_lossy(&bad).replace("'|u1'", "'é1'");
    assert!(voc_data::npy::decode_mask(text.as_bytes(), path).is_err());
}
