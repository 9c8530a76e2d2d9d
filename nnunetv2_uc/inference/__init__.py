"""Prediction and deployment: nnU-Net's predictor with batched sliding-window tiles (``predict``, `nnunetv2_uc
predict`), the ONNX export of each fold with its self-check, and the export folder read back: its checks, the
predictor on it and the export cache (``onnx_export``, `nnunetv2_uc export-onnx`), and the runtimes that run a fold
inside nnU-Net's predictor (``runtimes``)."""
