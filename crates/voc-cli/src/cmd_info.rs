//! `voc info`: what this build of voc can run on.
use clap::Args;
use voc_tensor::DeviceSpec;

#[derive(Args)]
pub struct InfoArgs {
    /// Device to open: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    let name = voc_tensor::device::device_name(&device);
    let cuda_built = cfg!(feature = "cuda");
    if args.json {
        println!(
            "{}",
            serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "device": name, "cuda_built": cuda_built, "cpu_threads": threads})
        );
    } else {
        println!(
            "voc {}: device {name}, CUDA support built: {cuda_built}, CPU threads {threads}",
            env!("CARGO_PKG_VERSION")
        );
    }
    Ok(())
}
