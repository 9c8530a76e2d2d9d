"""Write a small synthetic abdominal-CT dataset (4 organs, HU, anisotropic) in nnU-Net raw format."""
from nnunetv2_uc.synth import add_arguments, run  # noqa: F401  (moved here by the layout change in progress)
