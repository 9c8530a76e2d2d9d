"""Converters from public dataset releases (FLARE2021, OIMHS, FeTA2021, AbdomenCT-1K, BTCV, the uC repository
layout) into nnU-Net v2 raw format.

All converters share one pipeline (:mod:`nnunetv2_uc.conversion.pipeline`): case discovery, validation that
collects every problem, parallel per-case writing into a temporary folder, dataset.json and splits, and an
atomic move into ``$nnUNet_raw``. Each dataset module adds only its layout and quirks.
"""
