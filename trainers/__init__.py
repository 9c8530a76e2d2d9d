"""nnU-Net v2 trainers for the paper networks (resolved by name via ``nnUNet_extTrainer``; see ``nnunetv2_uc env``).

- ``nnUNetTrainerUC`` / ``nnUNetTrainerUXNet``: AdamW (lr 5e-4, eps 1e-4, wd 3e-5) + poly LR, 1000 x 250.
- ``*_SGD``: nnU-Net's default SGD recipe.
- ``*_checkpointed``: activation checkpointing (less memory for large patches, about one more forward per step).
- ``*_tiny``: 2 epochs x 4 iterations, for smoke tests and CI only (not for real training).
- ``*_demo``: the demo's time-boxed schedule (``nnunetv2_uc demo``).

Each trainer is declared once, as a class in ``paper_trainers.py`` or ``demo_trainers.py``;
this package exports whatever those modules declare, and the nnUNet_extTrainer shim re-exports this package.
Its name is ``{entry.trainer}{variant}`` for its network's registry entry (tests/training/test_trainers_registration.py).
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_uc.trainers import demo_trainers, paper_trainers


def _declared_trainers(*modules) -> dict[str, type[nnUNetTrainer]]:
    """The nnU-Net trainer classes the modules declare (not those they import), by class name."""
    return {name: value for module in modules for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, nnUNetTrainer) and value.__module__ == module.__name__}


TRAINERS = _declared_trainers(paper_trainers)  # the -tr trainers for real training (and CI)
DEMO_TRAINERS = _declared_trainers(demo_trainers)
TRAINER_NAMES = tuple(TRAINERS)
globals().update(TRAINERS)
globals().update(DEMO_TRAINERS)
__all__ = [*TRAINERS, *DEMO_TRAINERS]
