//! Dataset loading and augmentation for PASCAL VOC: the competition layout, VOCdevkit, statistics, splits, joint image+mask augmentation, batches.
