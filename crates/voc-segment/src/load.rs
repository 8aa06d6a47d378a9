//! A segmenter from whatever a user names: a hub repo id in the DeepLabV3 transformers layout, the
//! preset's name, a voc checkpoint of DeepLabV3 or DeepLabV3+, or a plain DeepLabV3 weights file.
//! Every source must output VOC's 21 mask classes in their order.
use std::path::Path;

use candle_core::Device;
use voc_classify::preset::class_names_from_config;
use voc_classify::weights::FromWeights;
use voc_core::MASK_CLASS_NAMES;
use voc_tensor::checkpoint;
use voc_tensor::hub::{HubCache, WeightsSource};

use crate::deeplabv3::DeepLabV3;
use crate::deeplabv3plus::{DeepLabV3Plus, DeepLabV3PlusConfig};
use crate::error::{Result, SegmentError};
use crate::preset::SegmenterPreset;
use crate::segmenter::{SegmentationNet, Segmenter, SizeStrategy};

/// The segmenter used when none is named: the pretrained VOC DeepLabV3 on MobileNetV2.
pub const DEFAULT_SEGMENTER: &str = "google/deeplabv3_mobilenet_v2_1.0_513";

pub use crate::deeplabv3::DEEPLABV3_ARCH;
pub use crate::deeplabv3plus::DEEPLABV3PLUS_ARCH;

/// A loaded segmenter and a short description of where it came from (for logs and summaries).
#[derive(Debug, Clone)]
pub struct LoadedSegmenter {
    /// The network with its preprocessing.
    pub segmenter: Segmenter,
    /// `hub:ORG/NAME`, or the file with its architecture.
    pub source: String,
}

/// Whether a segmenter spec that is not an existing file was meant as a file rather than a hub id.
pub fn looks_like_path(spec: &str) -> bool {
    let ext = Path::new(spec)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    spec.starts_with(['.', '/', '~'])
        || matches!(
            ext.as_deref(),
            Some("safetensors" | "bin" | "pt" | "pth" | "ckpt")
        )
}

/// Fails unless `names` are VOC's 21 mask classes in order (`what` says whose names they are).
pub fn check_mask_class_names(names: &[String], what: &str) -> Result<()> {
    if !names.iter().map(String::as_str).eq(MASK_CLASS_NAMES) {
        return Err(SegmentError::BadArgument(format!(
            "{what}: class names {names:?} are not VOC's {} mask classes in order {MASK_CLASS_NAMES:?}",
            MASK_CLASS_NAMES.len()
        )));
    }
    Ok(())
}

/// Loads the segmenter `spec` names at `output_stride` (8 or 16), fitting images by `strategy`: an
/// existing file (a voc checkpoint of [`DEEPLABV3_ARCH`] or [`DEEPLABV3PLUS_ARCH`], else DeepLabV3
/// weights in the hub layout), the preset's name, or a hub repo id `ORG/NAME` in the DeepLabV3 layout
/// whose `config.json` names VOC's 21 classes.
///
/// Errors: a spec that looks like a path but is no file, or is neither a preset nor a repo id, is a
/// bad-argument error saying what a spec can be; a hub repo that cannot be loaded (not cached while
/// offline, another architecture) is [`SegmentError::Loading`] with the cause; a file that is neither
/// checkpoint nor weights is [`SegmentError::NotASegmenter`] with both reasons; class names other than
/// VOC's in order are a bad-argument error.
///
/// ```
/// use candle_core::Device;
/// use voc_segment::{load_segmenter, SizeStrategy};
/// let err = load_segmenter("no such model", 16, SizeStrategy::default(), &Device::Cpu).unwrap_err();
/// assert!(err.to_string().contains("unknown segmenter 'no such model'"), "{err}");
/// let err = load_segmenter("runs/missing.safetensors", 16, SizeStrategy::default(), &Device::Cpu);
/// assert!(err.unwrap_err().to_string().contains("no such segmenter file"));
/// ```
///
/// With the pretrained weights in the hub cache (or online):
///
/// ```no_run
/// use candle_core::Device;
/// use voc_segment::{load_segmenter, SizeStrategy, DEFAULT_SEGMENTER};
/// let loaded = load_segmenter(DEFAULT_SEGMENTER, 16, SizeStrategy::default(), &Device::Cpu)?;
/// assert_eq!(loaded.source, "hub:google/deeplabv3_mobilenet_v2_1.0_513");
/// let photo = voc_data::read_rgb_image("photo.jpg".as_ref())?;
/// let mask = loaded.segmenter.mask(&photo, &Device::Cpu)?;
/// mask.colorize().write_png("mask.png".as_ref())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load_segmenter(
    spec: &str,
    output_stride: usize,
    strategy: SizeStrategy,
    device: &Device,
) -> Result<LoadedSegmenter> {
    let preset = SegmenterPreset::DEEPLABV3_MOBILENET_V2;
    let path = Path::new(spec);
    let (net, normalization, source) = if path.is_file() {
        load_segmenter_file(path, output_stride, device)?
    } else if looks_like_path(spec) {
        return Err(SegmentError::BadArgument(format!(
            "{spec}: no such segmenter file (a segmenter is a checkpoint, a weights file or a hub repo id)"
        )));
    } else {
        let repo_id = match SegmenterPreset::by_name(spec) {
            Ok(p) => p.repo_id.to_string(),
            Err(_) if spec.split('/').count() == 2 && !spec.contains(char::is_whitespace) => {
                spec.to_string()
            }
            Err(_) => {
                return Err(SegmentError::BadArgument(format!(
                    "unknown segmenter '{spec}': expected a hub repo id (ORG/NAME, e.g. {}), the preset \
                     name {}, or a checkpoint/weights file",
                    preset.repo_id, preset.name
                )))
            }
        };
        // Any repo in the transformers DeepLabV3-MobileNetV2 layout works; its config.json must name
        // VOC's classes.
        let cache = HubCache::from_env();
        let net = preset
            .load_in(
                &cache,
                &WeightsSource::hub(&repo_id, None),
                output_stride,
                device,
            )
            .map_err(|source| SegmentError::Loading {
                what: format!(
                    "the segmenter '{repo_id}' from the hub (a local checkpoint or weights file can be \
                     given instead)"
                ),
                source: Box::new(source),
            })?;
        let config = cache.resolve_file(&repo_id, None, "config.json")?;
        let names = class_names_from_config(&config)?;
        check_mask_class_names(&names, &config.display().to_string())?;
        (
            SegmentationNet::DeepLabV3(Box::new(net)),
            preset.normalization,
            format!("hub:{repo_id}"),
        )
    };
    Ok(LoadedSegmenter {
        segmenter: Segmenter::new(net, normalization, strategy),
        source,
    })
}

/// A voc checkpoint of a segmenter, or a plain DeepLabV3 weights file in the hub layout.
fn load_segmenter_file(
    path: &Path,
    output_stride: usize,
    device: &Device,
) -> Result<(SegmentationNet, voc_core::Normalization, String)> {
    let name = path.display().to_string();
    let preset = SegmenterPreset::DEEPLABV3_MOBILENET_V2;
    match checkpoint::load_checkpoint(path, device) {
        Ok((tensors, meta)) => {
            let num_classes = meta.class_names.len();
            let net = match meta.architecture.as_str() {
                DEEPLABV3_ARCH => {
                    let mut config = preset.config;
                    config.num_classes = num_classes;
                    config.backbone.output_stride = output_stride;
                    SegmentationNet::DeepLabV3(Box::new(DeepLabV3::from_tensors(
                        tensors, &name, config, device,
                    )?))
                }
                DEEPLABV3PLUS_ARCH => {
                    let default = DeepLabV3PlusConfig::default();
                    let config = DeepLabV3PlusConfig {
                        num_classes,
                        backbone: default.backbone.with_output_stride(output_stride),
                        ..default
                    };
                    SegmentationNet::DeepLabV3Plus(Box::new(DeepLabV3Plus::from_tensors(
                        tensors, &name, config, device,
                    )?))
                }
                other => {
                    return Err(SegmentError::BadArgument(format!(
                        "{name}: a checkpoint of architecture '{other}', not a segmenter: expected a \
                         {DEEPLABV3_ARCH} or {DEEPLABV3PLUS_ARCH} checkpoint, a DeepLabV3 weights file or a \
                         hub repo id"
                    )))
                }
            };
            check_mask_class_names(&meta.class_names, &format!("{name} (checkpoint metadata)"))?;
            let source = format!("{name} ({})", meta.architecture);
            Ok((net, meta.normalization, source))
        }
        Err(not_checkpoint) => {
            let net = preset
                .load_in(
                    &HubCache::from_env(),
                    &WeightsSource::File(path.to_path_buf()),
                    output_stride,
                    device,
                )
                .map_err(|as_weights| SegmentError::NotASegmenter {
                    path: path.to_path_buf(),
                    as_checkpoint: Box::new(not_checkpoint),
                    as_weights: Box::new(as_weights),
                })?;
            Ok((
                SegmentationNet::DeepLabV3(Box::new(net)),
                preset.normalization,
                format!("{name} ({DEEPLABV3_ARCH} weights)"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmenter_specs() {
        assert!(looks_like_path("runs/best.safetensors"));
        assert!(looks_like_path("./model"));
        assert!(!looks_like_path("google/deeplabv3_mobilenet_v2_1.0_513"));
        let names: Vec<String> = MASK_CLASS_NAMES.iter().map(|s| s.to_string()).collect();
        assert!(check_mask_class_names(&names, "x").is_ok());
        let err = check_mask_class_names(&names[1..], "cfg")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cfg") && err.contains("21 mask classes"),
            "{err}"
        );
    }
}
