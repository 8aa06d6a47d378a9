//! Semantic segmentation of the 21 VOC classes: DeepLabV3 and DeepLabV3+ on MobileNetV2.
