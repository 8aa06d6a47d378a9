//! Encodes a small mask and its labels, decodes them back, and writes a two-image submission to stdout.
//!
//! `cargo run -p voc-submit --example encode_mask`
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use voc_submit::{
    decode_labels, decode_mask, encode_labels, encode_mask, MaskView, SubmissionWriter, CLASS_NAMES,
};

fn main() -> anyhow::Result<()> {
    // A 2x2 mask: aeroplane (1) at (0,1) and (1,1), bicycle (2) at (1,0). Channel c of the 20x2x2 stack
    // is mask == c+1, flattened channel-first: ones at positions 2, 4 (channel 0) and 7 (channel 1).
    let (height, width) = (2, 2);
    let mask = [0u8, 1, 2, 1];
    let view = MaskView::new(&mask, height, width)?;
    let segmentation = encode_mask(view)?;
    println!("mask {mask:?} ({height}x{width}) -> {segmentation:?}");
    assert_eq!(decode_mask(&segmentation, height, width)?, mask);

    let mut labels = [0u8; 20];
    for name in ["aeroplane", "bus"] {
        labels[CLASS_NAMES
            .iter()
            .position(|&c| c == name)
            .expect("a VOC class")] = 1;
    }
    let classification = encode_labels(&labels)?;
    println!("labels aeroplane, bus -> {classification:?}");
    assert_eq!(decode_labels(&classification)?, labels);

    // Void (255) counts as background; the second image has no objects, so both its rows are empty.
    let empty = [255u8, 0, 0, 255];
    println!("\nsubmission.csv:");
    let stdout = std::io::stdout().lock();
    let mut writer = SubmissionWriter::new(stdout)?;
    writer.write_image("0", &labels, view)?;
    writer.write_image("1", &[0; 20], MaskView::new(&empty, height, width)?)?;
    let _stdout = writer.into_inner()?;
    Ok(())
}
