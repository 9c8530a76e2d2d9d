"""Plans presets (``*.json``) for ``nnunetv2_uc plans-override``: configurations that inherit from 3d_fullres."""
