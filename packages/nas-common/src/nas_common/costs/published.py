"""Published cost figures of the built-in architectures, for `nas cost --all`, the tests and benchmarks.

MACs are multiply-accumulates (what the papers call FLOPs). Sources: He et al. 2016 (CIFAR ResNets,
params), the TAS paper (Dong & Yang 2019, CIFAR FLOPs), torchvision's weight metadata (ImageNet
ResNets: `_ops` GFLOPS, `num_params`), Liu et al. 2019 (DARTS-V2, C 36, 20 cells, params).
"""
from __future__ import annotations

PUBLISHED: dict[str, dict[str, float | str | None]] = {
    "resnet20": {"macs": 40.8e6, "params": 0.27e6, "source": "He et al. 2016; TAS Table 3"},
    "resnet32": {"macs": 69.1e6, "params": 0.46e6, "source": "He et al. 2016; TAS Table 3"},
    "resnet56": {"macs": 125.5e6, "params": 0.85e6, "source": "He et al. 2016; TAS Table 3"},
    "resnet110": {"macs": 252.9e6, "params": 1.7e6, "source": "He et al. 2016; TAS Table 3"},
    "resnet164": {"macs": None, "params": 1.7e6, "source": "He et al. 2016 (identity mappings)"},
    "resnet18": {"macs": 1.814e9, "params": 11.689512e6, "source": "torchvision ResNet18_Weights meta"},
    "resnet50": {"macs": 4.089e9, "params": 25.557032e6, "source": "torchvision ResNet50_Weights meta"},
    "darts-v2": {"macs": None, "params": 3.3e6, "source": "Liu et al. 2019 (DARTS), C 36, 20 cells"},
}
