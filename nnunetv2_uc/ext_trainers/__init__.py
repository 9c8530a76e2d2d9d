"""Directory for ``nnUNet_extTrainer`` (see ``nnunetv2_uc env``). It holds only the shim module.

nnU-Net imports every module here as a bare top-level module and pops it from ``sys.modules`` afterwards,
so the shim only re-exports the trainers, which live (and pickle) in ``nnunetv2_uc.trainers``.
"""
