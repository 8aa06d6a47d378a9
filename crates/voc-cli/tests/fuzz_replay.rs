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

/// CRC-32 (IEEE) of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_png_claiming_100000_by_100000_pixels_is_refused_before_allocating() {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend(data);
        c.extend(&body);
        c.extend(crc32(&body).to_be_bytes());
        c
    };
    for color_type in [0u8, 3] {
        let mut ihdr = 100_000u32.to_be_bytes().to_vec();
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend([8, color_type, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &ihdr));
        if color_type == 3 {
            png.extend(chunk(b"PLTE", &[0, 0, 0, 128, 0, 0]));
        }
        png.extend(chunk(
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ));
        png.extend(chunk(b"IEND", &[]));
        let path = readers::as_file("huge.png", &png);
        let e = voc_data::vocdevkit::read_index_png(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("100000x100000"), "{e}");
        assert!(voc_data::vocdevkit::decode_rgb(&path).is_err());
        assert!(voc_data::read_rgb_image(&path).is_err());
        if color_type == 0 {
            let e = voc_core::Mask::read_png(&path).unwrap_err().to_string();
            assert!(e.contains("too large"), "{e}");
        }
    }
}

#[test]
fn gigabyte_csv_files_are_refused_without_reading_them() {
    // Sparse files: a gigabyte on paper, nothing on disk.
    let dir = tempfile::tempdir().unwrap();
    let split = dir.path().join("train");
    std::fs::create_dir_all(split.join("img")).unwrap();
    let csv = std::fs::File::create(split.join("train_set.csv")).unwrap();
    csv.set_len(1 << 30).unwrap();
    let e = voc_data::competition::SplitIndex::open(&split, "train")
        .unwrap_err()
        .to_string();
    assert!(e.contains("1073741824 bytes"), "{e}");
    let sub = dir.path().join("submission.csv");
    std::fs::File::create(&sub)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let e = voc_submit::Submission::read(&sub).unwrap_err().to_string();
    assert!(e.contains("1073741824 bytes"), "{e}");
    let e = voc_submit::validate_file(&sub, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("1073741824 bytes"), "{e}");
}

#[test]
fn a_pickle_string_claiming_4_gb_is_refused_before_candle_allocates_it() {
    // Found by the `weights` target: candle's pickle reader allocates the length a BINUNICODE opcode
    // claims before reading it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz/crashes/weights");
    let crasher = root.join("oom-a1fa0d88dc78963c902a28a0ceefcddc66910c19");
    let path = readers::as_file("oom.bin", &std::fs::read(crasher).unwrap());
    let e = voc_tensor::hub::load_tensors(&path, &candle_core::Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a string at byte"), "{e}");
}

#[test]
fn a_real_pytorch_archive_passes_the_pickle_check() {
    let seed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz/seeds/weights/tiny_zip.bin");
    let path = readers::as_file("tiny.bin", &std::fs::read(seed).unwrap());
    let tensors = voc_tensor::hub::load_tensors(&path, &candle_core::Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    assert_eq!(names, ["b", "w"]);
}

/// A zip archive of `files`, stored (not compressed), as torch.save writes them.
fn stored_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in files {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let fields = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend(20u16.to_le_bytes());
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend([0, 0, 0, 0, 0, 0, 0, 0]); // flags, method (stored), time, date
            h.extend(crc.to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                h.extend([0; 6]); // comment length, disk number, internal attributes
                h.extend([0; 4]); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(fields(0x0403_4b50, false));
        out.extend(*data);
        central.extend(fields(0x0201_4b50, true));
    }
    let (cd_offset, cd_len) = (out.len() as u32, central.len() as u32);
    out.extend(central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((files.len() as u16).to_le_bytes());
    out.extend(cd_len.to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

#[test]
fn a_pickle_nesting_a_million_lists_is_refused_not_a_stack_overflow() {
    let n = 1_000_000;
    let mut pickle = vec![0x80, 2];
    pickle.extend(std::iter::repeat_n(b']', n));
    pickle.extend(std::iter::repeat_n(b'a', n - 1));
    pickle.push(b'.');
    let zip = stored_zip(&[("deep/data.pkl", &pickle), ("deep/version", b"3\n")]);
    let path = readers::as_file("deep.bin", &zip);
    let e = voc_tensor::hub::load_tensors(&path, &candle_core::Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nest more than"), "{e}");
}
