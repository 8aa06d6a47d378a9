//! Encoding 750 masks of 500x375 (HxW 375x500) into a submission, as `benches/submit_numpy.py` does with
//! the competition's numpy encoder. Both build the same synthetic masks (see `synthetic_mask`), so
//! their outputs can be compared byte for byte: set `VOC_SUBMIT_BENCH_CSV=PATH` to write this one.
//!
//! After criterion, `cargo bench` runs the numpy script in the same run (with `$VOC_BENCH_PYTHON`, else
//! `$TORCH_PYTHON`, else `python3`; `VOC_BENCH_NUMPY=0` skips it), checks its submission is identical to
//! ours, and prints both speeds and their ratio.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use criterion::{criterion_group, Criterion, Throughput};
use voc_submit::{MaskView, SubmissionWriter, NUM_CLASSES};

const IMAGES: usize = 750;
const HEIGHT: usize = 375;
const WIDTH: usize = 500;

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A VOC-like mask: 1 to 3 ellipses of random classes, each with a 4-pixel void (255) rim, later ones
/// painted over earlier ones. Integer arithmetic only, mirrored exactly in submit_numpy.py.
fn synthetic_mask(seed: u64) -> Vec<u8> {
    let (h, w) = (HEIGHT as i64, WIDTH as i64);
    let mut rng = SplitMix64(seed);
    let mut mask = vec![0u8; HEIGHT * WIDTH];
    let objects = 1 + rng.next() % 3;
    for _ in 0..objects {
        let class = 1 + (rng.next() % 20) as u8;
        let cy = (rng.next() % h as u64) as i64;
        let cx = (rng.next() % w as u64) as i64;
        let ry = 15 + (rng.next() % (h as u64 / 3)) as i64;
        let rx = 15 + (rng.next() % (w as u64 / 3)) as i64;
        let (iry, irx) = (ry - 4, rx - 4);
        for y in (cy - ry).max(0)..=(cy + ry).min(h - 1) {
            for x in (cx - rx).max(0)..=(cx + rx).min(w - 1) {
                let (dy, dx) = (y - cy, x - cx);
                let value = if dy * dy * irx * irx + dx * dx * iry * iry <= irx * irx * iry * iry {
                    class
                } else if dy * dy * rx * rx + dx * dx * ry * ry <= rx * rx * ry * ry {
                    255
                } else {
                    continue;
                };
                mask[(y * w + x) as usize] = value;
            }
        }
    }
    mask
}

fn labels_of(mask: &[u8]) -> [u8; NUM_CLASSES] {
    let mut labels = [0u8; NUM_CLASSES];
    for &v in mask {
        if (1..=20).contains(&v) {
            labels[v as usize - 1] = 1;
        }
    }
    labels
}

fn encode_all(out: &mut Vec<u8>, images: &[Image]) {
    out.clear();
    let mut writer = SubmissionWriter::new(out).expect("writing to a Vec");
    for (id, labels, mask) in images {
        let view = MaskView::new(mask, HEIGHT, WIDTH).expect("synthetic mask size");
        writer
            .write_image(id, labels, view)
            .expect("synthetic masks are valid");
    }
    writer.into_inner().expect("writing to a Vec");
}

type Image = (String, [u8; NUM_CLASSES], Vec<u8>);

fn synthetic_images() -> Vec<Image> {
    (0..IMAGES)
        .map(|i| {
            let mask = synthetic_mask(i as u64);
            (i.to_string(), labels_of(&mask), mask)
        })
        .collect()
}

fn bench_encode(c: &mut Criterion) {
    let images = synthetic_images();
    let mut out = Vec::with_capacity(16 << 20);
    encode_all(&mut out, &images);
    if let Some(path) = std::env::var_os("VOC_SUBMIT_BENCH_CSV") {
        std::fs::write(&path, &out).expect("writing VOC_SUBMIT_BENCH_CSV");
        eprintln!("wrote {} bytes to {}", out.len(), path.to_string_lossy());
    }
    let mut group = c.benchmark_group("submission");
    group.throughput(Throughput::Elements(IMAGES as u64));
    group
        .sample_size(20)
        .measurement_time(std::time::Duration::from_secs(8));
    group.bench_function("encode_750_masks_375x500", |b| {
        b.iter(|| encode_all(&mut out, &images))
    });
    group.finish();
}

/// Runs submit_numpy.py on the same masks and prints both speeds, best of five runs each.
fn compare_with_numpy() {
    let python = ["VOC_BENCH_PYTHON", "TORCH_PYTHON"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "python3".to_string());
    let images = synthetic_images();
    let mut ours = Vec::new();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        encode_all(&mut ours, &images);
        best = best.min(start.elapsed().as_secs_f64());
    }
    let rust_rate = IMAGES as f64 / best;
    println!(
        "\nvoc-submit: {IMAGES} masks in {:.1} ms (best of 5) = {rust_rate:.0} images/s",
        best * 1e3
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/submit_numpy.py");
    let numpy_csv =
        std::env::temp_dir().join(format!("voc_submit_numpy_{}.csv", std::process::id()));
    let result = std::process::Command::new(&python)
        .args([script, "--repeat", "5", "--out"])
        .arg(&numpy_csv)
        .output();
    let output = match result {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            println!(
                "numpy comparison skipped: {python} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("numpy comparison skipped: cannot run {python}: {e} (set VOC_BENCH_PYTHON)");
            return;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    let theirs = std::fs::read(&numpy_csv).unwrap_or_default();
    let _ = std::fs::remove_file(&numpy_csv);
    println!("outputs identical: {}", theirs == ours);
    let numpy_rate = text
        .split(" images/s")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse::<f64>().ok());
    if let Some(numpy_rate) = numpy_rate {
        println!(
            "voc-submit is {:.0}x faster than numpy",
            rust_rate / numpy_rate
        );
    }
}

criterion_group!(benches, bench_encode);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let benchmarking = std::env::args().any(|a| a == "--bench");
    if benchmarking && std::env::var("VOC_BENCH_NUMPY").as_deref() != Ok("0") {
        compare_with_numpy();
    }
}
