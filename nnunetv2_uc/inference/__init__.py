"""Prediction and deployment: nnU-Net's predictor with batched sliding-window tiles (``predict``, `nnunetv2_uc
predict`), ONNX export of each fold with its self-check (``onnx_export``, `nnunetv2_uc export-onnx`), the export
folder, its checks, the predictor on it and the export cache (``exported``), and the runtimes that run a fold inside
nnU-Net's predictor (``runtimes``)."""
