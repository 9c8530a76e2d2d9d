"""Helpers shared by the tests (importable as ``helpers.<module>``: pyproject puts tests/ on pytest's path).

- ``paths``: the checkout's root and the reference fixtures (``fixture_path``).
- ``e2e_data``: a tiny nnU-Net raw dataset and the nnU-Net environment variables for it.
- ``fake_raw_datasets``: small copies of each convertible dataset's release layout, and ``convert`` in-process.
- ``original_semantics``: the original networks re-stated from the spec (reference for weights and timing).
- ``planning_measure``: peak memory of real CPU training steps, each in a fresh process (planning tests).
"""
