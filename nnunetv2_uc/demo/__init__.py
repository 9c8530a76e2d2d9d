"""`nnunetv2_uc demo`: the pipeline of stock nnU-Net commands (``pipeline``), its fixed schedule and time estimate
(``schedule``, shared with trainers/demo_trainers.py through environment variables), and the synthetic CT it
trains on (``synth``, also `nnunetv2_uc synth`)."""
