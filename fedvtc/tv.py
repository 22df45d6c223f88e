"""The one place this project imports torchvision from.

PyPI's torchvision 0.28 wheel is built against CUDA torch. Beside the CPU build of torch 2.13 its
first import fails with ``RuntimeError: operator torchvision::nms does not exist`` because the C++
extension that would register the detection operators does not load. Declaring the two missing
operator schemas lets the pure-Python parts (datasets, transforms, models) import and work; the
compiled ``torchvision.ops`` kernels and ``torchvision.io`` codecs stay unavailable, and this project
uses neither. On a machine whose torchvision matches its torch the first import simply succeeds.

Every module (Ray workers included, since they import through this package) does
``from fedvtc.tv import torchvision``.
"""

from __future__ import annotations

import torch

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_LIBRARY = None  # keeps the schema registration alive for the life of the process


def _import_torchvision():
    global _LIBRARY
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        for name in ("nms", "qnms"):
            try:
                _LIBRARY.define(f"{name}{_SCHEMA}")
            except RuntimeError:
                pass  # already defined by a partial import
        import torchvision
    return torchvision


torchvision = _import_torchvision()

__all__ = ["torchvision"]
