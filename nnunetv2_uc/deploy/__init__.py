"""Deploying a trained model without PyTorch's network code: ONNX export of each fold (``export``), the folder it
writes and its checks (``exported``), and the runtimes that run it inside nnU-Net's predictor (``runtimes``)."""
