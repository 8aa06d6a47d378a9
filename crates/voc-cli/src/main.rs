//! `voc`: the command-line front end of the voc toolkit.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "voc", version, about = "PASCAL VOC classification, segmentation, attacks and Kaggle submissions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the device voc would run on and the thread count it uses.
    Info(voc_cli_info::InfoArgs),
}

mod voc_cli_info;

fn main() -> anyhow::Result<()> {
    voc_tensor::device::init_cpu_threads();
    let cli = Cli::parse();
    match cli.command {
        Command::Info(args) => voc_cli_info::run(args),
    }
}
