"""The networks: faithful re-implementations of 3D UX-Net and uC 3DU-Net (logits out, PyTorch default init, no DS
heads), their building blocks (``building_blocks``) and the registry that names them (``registry``)."""
from nnunetv2_uc.architectures.uc3dunet import UC3DUNet
from nnunetv2_uc.architectures.uxnet import UXNet

__all__ = ["UXNet", "UC3DUNet"]
