"""Run the whole pipeline on built-in synthetic CT: synth, plan, train, predict, evaluate (stock nnU-Net commands)."""
from nnunetv2_uc.demo import add_arguments, run  # noqa: F401  (moved here by the layout change in progress)
