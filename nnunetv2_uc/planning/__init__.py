"""Self-configuration for the plugin's networks: nnU-Net's planners with a memory model that matches training.

memory.py: bytes of one training step (precision-aware, fake tensors) and nnU-Net's GPU memory target in those
bytes; planners.py: nnU-Net's patch/batch search, the planner's view of each network and the planner subclasses;
api.py: ``plan_datasets`` behind ``nnunetv2_uc plan``; trainer_plans.py: what a trainer does with the plans (the
one entry point, ``prepare_plans``, and the adaptation of nnU-Net's default plans); uc_plans.py: uC connections
in a plan's ``architecture`` block; overrides.py: preset configurations (``nnunetv2_uc plans-override``).
"""
