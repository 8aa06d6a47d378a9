//! Segments one photo with the pretrained DeepLabV3 and writes the VOC-palette mask (and an overlay).
//!
//! `cargo run -p voc-segment --example segment -- --image ../shared/data/photos/bird.png --out bird_mask.png --overlay bird_overlay.png`
//! Offline: `HF_HOME=../shared/hf HF_HUB_OFFLINE=1`.
use std::path::PathBuf;

use clap::Parser;
use voc_segment::{Segmenter, SegmenterPreset, SizeStrategy};
use voc_tensor::hub::HubCache;
use voc_tensor::DeviceSpec;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Segment a photo (.png, .jpg or .npy HxWx3 uint8) into the 21 VOC classes")]
struct Args {
    /// The photo to segment.
    #[arg(long)]
    image: PathBuf,
    /// Where to write the mask, coloured with the VOC palette (PNG).
    #[arg(long)]
    out: PathBuf,
    /// Also write the photo with the mask blended over it (PNG).
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// 16 (as trained, faster) or 8 (finer).
    #[arg(long, default_value_t = 16)]
    output_stride: usize,
    /// How the photo is fitted to the network: pad[:MIN_SIZE] or resize[:SIZE].
    #[arg(long, default_value = "pad:513")]
    size: SizeStrategy,
    /// Average with the prediction on the mirrored photo.
    #[arg(long)]
    flip: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
}

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    let args = Args::parse();
    let device = args.device.open()?;
    let preset = SegmenterPreset::DEEPLABV3_MOBILENET_V2;
    let cache = HubCache::from_env();
    let mut segmenter = Segmenter::from_preset(
        &preset,
        &cache,
        &preset.weights_source(),
        args.output_stride,
        args.size,
        &device,
    )?;
    segmenter.flip_tta = args.flip;
    let names = preset.class_names_in(&cache)?;

    let image = voc_data::read_rgb_image(&args.image)?;
    let mask = segmenter.mask(&image, &device)?;
    mask.colorize().write_png(&args.out)?;

    let pixels = mask.as_slice().len() as f64;
    let counts = mask.value_counts();
    for (class, &count) in counts.iter().enumerate().filter(|(c, &n)| *c != 0 && n > 0) {
        println!("{:>6.2}%  {}", 100.0 * count as f64 / pixels, names[class]);
    }
    let mut written = args.out.display().to_string();
    if let Some(path) = &args.overlay {
        mask.overlay(&image, 0.6)?.write_png(path)?;
        written = format!("{written} and {}", path.display());
    }
    eprintln!(
        "segmented {} ({}x{}) at output stride {} ({}): wrote {written}",
        args.image.display(),
        image.height(),
        image.width(),
        args.output_stride,
        args.size
    );
    Ok(())
}
