//! Multi-label VOC classification on pretrained MobileNetV2 and EfficientNet-Lite0 backbones.
