"""The Triton backend's kernels and launch configuration; ``triton_gru`` is its entry point
(its docstring has the design). Private: the names here may change between versions.
"""
