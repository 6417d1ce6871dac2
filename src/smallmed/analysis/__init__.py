"""Analyses of models, independent of training (importing this package loads none of them).

- ``cost``: parameters, FLOPs per image and measured throughput of a model.
- ``receptive_field``: theoretical receptive field per layer (Araujo et al. 2019), with a brute-force check.
- ``erf``: effective receptive field from input gradients (Luo et al. 2016) and occlusion maps.

The SVD diagnostics (R ratio, singular-value dynamics) live beside the parametrisation, in
:mod:`smallmed.reparam.diagnostics`.
"""
