"""Prediction: nnU-Net's predictor with batched sliding-window tiles (`nnunetv2_uc predict`)."""
