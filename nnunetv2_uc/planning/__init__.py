"""Self-configuration for the plugin's networks: nnU-Net's planners with a memory model that matches training.

memory.py: bytes of one training step (precision-aware, fake tensors); budget.py: nnU-Net's GPU memory
target in those bytes; search.py: nnU-Net's patch/batch search; planners.py: planner subclasses; api.py:
``plan_datasets`` behind ``nnunetv2_uc plan``.
"""
