"""Starting weights for nnUNetv2_train -pretrained_weights: from the authors' original checkpoints (``original``,
`nnunetv2_uc import-weights`) and from a trained nnU-Net model for its uC version (``uc_init``, `nnunetv2_uc uc-init`)."""
