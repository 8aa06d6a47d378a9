//! Adversarial attacks (FGSM, PGD, targeted) on voc's classifier and segmenter.
