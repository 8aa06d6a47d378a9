#![doc = include_str!("../README.md")]
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
    Info(cmd_info::InfoArgs),
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
    /// Train a model on the competition's data (`voc train classify`).
    Train(cmd_train::TrainArgs),
    /// Score a trained model on a labelled split (`voc eval classify`).
    Eval(cmd_eval::EvalArgs),
    /// Adversarial attacks swept over budgets: metrics, perceptibility, adversarial images, galleries.
    Attack(cmd_attack::AttackArgs),
    /// One self-contained HTML page of run folders, the data and a submission: curves, tables, pictures.
    Report(cmd_report::ReportArgs),
}

mod cmd_attack;
mod cmd_bench;
mod cmd_data;
mod cmd_eval;
mod cmd_info;
mod cmd_predict;
mod cmd_report;
mod cmd_submit;
mod cmd_train;
mod outputs;
mod progress;

fn main() -> anyhow::Result<()> {
    // Keep the memory mimalloc frees mapped for reuse instead of returning it to the OS after a delay
    // (its `purge_delay` option, index 15 of `mi_option_t`, to -1; libmimalloc-sys names no constant
    // for it). A network's activations are the same large buffers every batch, and returning them made
    // the kernel zero ~1 GB of fresh pages per training step (a third of its time, measured with
    // `perf`; an attack step's system time went from 7.4 s to 1.6 s in a 10-second criterion run).
    // `set_default` leaves a MIMALLOC_PURGE_DELAY from the environment in force. The examples and
    // benches whose allocator is mimalloc do the same and point here.
    // SAFETY: sets one integer of mimalloc's option table; first thing in `main`, so no other thread
    // exists to read it meanwhile.
    unsafe { libmimalloc_sys::mi_option_set_default(15, -1) };
    // No transparent huge pages for this process: each thread's heap then holds whole 2 MiB pages,
    // and the peak RSS of an inference rose by a quarter and varied from run to run (DeepLabV3 at
    // 513, 2 threads: 136-154 MiB, 109 MiB without; MobileNetV2 batch 16: 118 -> 92 MiB) for 0-5%
    // of speed. mimalloc's own switch (`allow_thp`) is read before `main`, when its first arena is
    // already mapped; the process flag covers every mapping.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1) only sets a flag of this process; it reads no memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    // SAFETY: first thing in `main`: no other thread exists yet.
    unsafe { voc_tensor::device::init_cpu_threads() };
    let cli = Cli::parse();
    match cli.command {
        Command::Info(args) => cmd_info::run(args),
        Command::Encode(args) => cmd_submit::encode(args),
        Command::Validate(args) => cmd_submit::validate(args),
        Command::Score(args) => cmd_submit::score(args),
        Command::Data(args) => cmd_data::run(args),
        Command::Predict(args) => cmd_predict::predict(args),
        Command::Segment(args) => cmd_predict::segment(args),
        Command::Bench(args) => cmd_bench::run(args),
        Command::Train(args) => cmd_train::run(args),
        Command::Eval(args) => cmd_eval::run(args),
        Command::Attack(args) => cmd_attack::run(args),
        Command::Report(args) => cmd_report::run(args),
    }
}
