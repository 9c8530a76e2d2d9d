"""nnunetv2-uc: uC 3DU-Net and 3D UX-Net inside nnU-Net v2's self-configuring pipeline."""

__version__ = "0.1.0"
