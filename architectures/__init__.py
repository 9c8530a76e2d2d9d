"""Faithful re-implementations of 3D UX-Net and uC 3DU-Net (logits out, PyTorch default init, no DS heads)."""
from nnunetv2_uc.architectures.input_checks import check_spatial_shape, spatial_shape_problems
from nnunetv2_uc.architectures.uc3dunet import UC3DUNet
from nnunetv2_uc.architectures.uxnet import UXNet

__all__ = ["UXNet", "UC3DUNet", "check_spatial_shape", "spatial_shape_problems"]
