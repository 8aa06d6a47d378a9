//! `voc`: the command-line front end of the voc toolkit.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "voc",
    version,
    about = "PASCAL VOC segmentation, classification and Kaggle submissions on candle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the device voc would run on and the thread count it uses.
    Info(voc_cli_info::InfoArgs),
    /// Write the submission of a labelled split's ground truth (the encoder round-trip check).
    Encode(cmd_submit::EncodeArgs),
    /// Check a submission file against a split's Ids, order and image sizes; lists every problem.
    Validate(cmd_submit::ValidateArgs),
    /// Score a submission locally against a labelled split: mean Dice and per-class IoU.
    Score(cmd_submit::ScoreArgs),
    /// Dataset tools: convert a VOCdevkit, statistics, stratified splits, checks, a preview grid.
    Data(cmd_data::DataArgs),
    /// Segment every image of a split and write the submission (validated, atomic); labels from the
    /// masks or a classifier checkpoint.
    Predict(cmd_predict::PredictArgs),
    /// Segment one photo: a VOC-coloured mask PNG and, with --overlay, the mask blended over the photo.
    Segment(cmd_predict::SegmentArgs),
    /// Time inference or one training step of a network on random data: ms/batch, images/s, peak memory.
    Bench(cmd_bench::BenchArgs),
}

mod cmd_bench;
mod cmd_data;
mod cmd_predict;
mod cmd_submit;
mod progress;
mod voc_cli_info;

fn main() -> anyhow::Result<()> {
    voc_tensor::device::keep_freed_memory_mapped();
    voc_tensor::device::init_cpu_threads();
    let cli = Cli::parse();
    match cli.command {
        Command::Info(args) => voc_cli_info::run(args),
        Command::Encode(args) => cmd_submit::encode(args),
        Command::Validate(args) => cmd_submit::validate(args),
        Command::Score(args) => cmd_submit::score(args),
        Command::Data(args) => cmd_data::run(args),
        Command::Predict(args) => cmd_predict::predict(args),
        Command::Segment(args) => cmd_predict::segment(args),
        Command::Bench(args) => cmd_bench::run(args),
    }
}
