//! The Kaggle submission encoder for the VOC competition: run-length encoding, validation and a local scorer.
