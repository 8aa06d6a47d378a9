//! Inference speed of the pretrained networks on the CPU, next to PyTorch's on the same networks in the
//! same run: DeepLabV3-MobileNetV2 at 513x513 (output stride 16, logits upsampled to the input) and the
//! MobileNetV2 classifier at 224x224, batch 1 and 16.
//!
//! ```text
//! RAYON_NUM_THREADS=2 TORCH_PYTHON=path/to/python \
//!   HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo bench --bench inference
//! ```
//! Each workload is timed in voc (median of `VOC_BENCH_ITERS` forward passes after one warm-up), then,
//! when `TORCH_PYTHON` names a Python with torch and torchvision, in PyTorch by `benches/torch_infer.py`
//! with as many threads (and `OMP_WAIT_POLICY=PASSIVE` unless set), before the next workload starts:
//! both sides see the same machine load. Prints a Markdown table of images/s (median and best run) and
//! the ratio voc / PyTorch.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use voc_classify::ModelPreset;
use voc_segment::SegmenterPreset;
use voc_tensor::{Device, Tensor};

struct Measurement {
    batch: usize,
    median_ms: f64,
    /// The fastest run: on a shared machine, the closest to the uncontended speed.
    min_ms: f64,
}

impl Measurement {
    fn images_per_s(&self) -> f64 {
        self.batch as f64 * 1e3 / self.median_ms
    }

    fn best_images_per_s(&self) -> f64 {
        self.batch as f64 * 1e3 / self.min_ms
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

fn time_voc(
    forward: &dyn Fn(&Tensor) -> anyhow::Result<Tensor>,
    batch: usize,
    size: usize,
    iters: usize,
) -> anyhow::Result<Measurement> {
    let x = Tensor::rand(-1f32, 1f32, (batch, 3, size, size), &Device::Cpu)?;
    forward(&x)?;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        forward(&x)?;
        samples.push(start.elapsed().as_secs_f64());
    }
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Measurement {
        batch,
        median_ms: median(samples) * 1e3,
        min_ms: min * 1e3,
    })
}

fn time_torch(
    python: &str,
    model: &str,
    batch: usize,
    size: usize,
    iters: usize,
    threads: usize,
) -> anyhow::Result<Measurement> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_infer.py");
    let mut cmd = Command::new(python);
    // PyTorch's OpenMP workers spin while they wait; on a machine shared with other work that makes
    // them several times slower (measured: MobileNetV2 batch 1 at 2 threads, load ~7 on 2 cores: 665 ms
    // spinning, 90 ms passive). Passive waiting makes the comparison about the arithmetic.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        cmd.env("OMP_WAIT_POLICY", "PASSIVE");
    }
    let out = cmd
        .args([script, "--model", model])
        .args(["--batch", &batch.to_string(), "--size", &size.to_string()])
        .args([
            "--iters",
            &iters.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .output()
        .with_context(|| format!("running {python} {script}"))?;
    if !out.status.success() {
        bail!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{script}: output is not one JSON line"))?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("{script}: no number '{k}' in {v}"))
    };
    Ok(Measurement {
        batch,
        median_ms: num("median_ms")?,
        min_ms: num("min_ms")?,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> anyhow::Result<()> {
    // Keep freed memory mapped: mimalloc option 15 (purge_delay) = -1; why: voc-cli/src/main.rs.
    // SAFETY: sets one mimalloc option (MIMALLOC_PURGE_DELAY still wins) before any thread exists.
    unsafe { libmimalloc_sys::mi_option_set_default(15, -1) };
    // SAFETY: first thing in `main`: no other thread exists yet.
    let threads = unsafe { voc_tensor::device::init_cpu_threads() };
    let iters: usize = std::env::var("VOC_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let python = std::env::var("TORCH_PYTHON").ok().filter(|p| !p.is_empty());
    let device = Device::Cpu;
    let segmenter = SegmenterPreset::DEEPLABV3_MOBILENET_V2.load(16, &device)?;
    let classifier = ModelPreset::MOBILENET_V2.load(&device)?;
    let seg_forward = |x: &Tensor| -> anyhow::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        Ok(segmenter.logits_at(x, h, w, false)?)
    };
    let cls_forward =
        |x: &Tensor| -> anyhow::Result<Tensor> { Ok(classifier.forward_t(x, false)?) };
    type Forward<'a> = &'a dyn Fn(&Tensor) -> anyhow::Result<Tensor>;
    let workloads: [(&str, usize, Forward); 2] = [
        ("deeplabv3_mobilenet_v2", 513, &seg_forward),
        ("mobilenet_v2", 224, &cls_forward),
    ];

    let load_before = load_average();
    eprintln!("inference bench: {threads} threads, {iters} timed runs each, load average before: {load_before}");
    let mut rows = Vec::new();
    let report = |who: &str, model: &str, size: usize, m: &Measurement| {
        eprintln!(
            "{who:<7} {model} {size}x{size} batch {}: median {:.1} ms/batch ({:.2} images/s), best {:.1} ms",
            m.batch,
            m.median_ms,
            m.images_per_s(),
            m.min_ms
        );
    };
    for (model, size, forward) in workloads {
        for batch in [1, 16] {
            let voc = time_voc(forward, batch, size, iters)?;
            report("voc", model, size, &voc);
            let torch = match &python {
                Some(py) => {
                    let t = time_torch(py, model, batch, size, iters, threads)?;
                    report("pytorch", model, size, &t);
                    Some(t)
                }
                None => None,
            };
            rows.push((model, size, voc, torch));
        }
    }
    println!("\nimages/s from the median run (best run in brackets)\n");
    println!("| network | input | batch | voc | PyTorch | voc / PyTorch |");
    println!("|---|---|---|---|---|---|");
    for (model, size, voc, torch) in rows {
        let (t, ratio) = match torch {
            Some(t) => (
                format!("{:.2} ({:.2})", t.images_per_s(), t.best_images_per_s()),
                format!(
                    "{:.2} ({:.2})",
                    voc.images_per_s() / t.images_per_s(),
                    voc.best_images_per_s() / t.best_images_per_s()
                ),
            ),
            None => ("(TORCH_PYTHON unset)".into(), "-".into()),
        };
        println!(
            "| {model} | {size}x{size} | {} | {:.2} ({:.2}) | {t} | {ratio} |",
            voc.batch,
            voc.images_per_s(),
            voc.best_images_per_s()
        );
    }
    println!(
        "\n{threads} threads; load average before: {load_before}; after: {}",
        load_average()
    );
    Ok(())
}
