"""Building blocks shared by the networks, one concern per module (as dynamic-network-architectures' building_blocks).

- ``fast_layers``: drop-in subclasses of torch layers with faster CPU kernels (same parameters and state-dict keys)
- ``layout``: channels-last storage of a module's weights, the networks' map format
- ``switches``: measurement switches from the environment (fast paths on which devices, the networks' layout)
- ``checkpointing``: per-segment activation checkpointing
- ``normalization``: channels-first LayerNorm, half-group GroupNorm
- ``conv_blocks``: conv-norm-act stacks and the residual block (dynamic-network-architectures' blocks)
- ``padding``: the uC padding rules for odd sizes
- ``heads``: the 1x1x1 segmentation head
- ``input_rules``: which spatial sizes a network accepts, with messages that say how to fix an input
- ``u_connection``: uC's U-shaped connection (a 2-D U-Net over slices) and its DFi fusion gate
"""
