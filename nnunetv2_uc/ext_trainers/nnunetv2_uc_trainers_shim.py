"""nnUNet_extTrainer shim for nnunetv2-uc: re-exports the trainers (absolute imports only, no logic).

This module is alone in its folder, the folder ``nnunetv2_uc env`` adds to ``nnUNet_extTrainer``. The folder is not a
package of this project (no ``__init__.py``): nnU-Net imports every module in it as a bare top-level module and pops
it from ``sys.modules`` afterwards, so the shim only re-exports the trainers, which live (and pickle) in
``nnunetv2_uc.trainers``. (``nnunetv2_uc.registration`` imports it as ``nnunetv2_uc.ext_trainers.<this module>``, a
namespace package, to list the trainers it makes findable.)

Keep old names in ``nnunetv2_uc.trainers`` as aliases if a trainer is ever renamed: results folders and checkpoints
store names.
"""
from nnunetv2_uc.trainers import *  # noqa: F401,F403  (every trainer that nnunetv2_uc.trainers exports)
