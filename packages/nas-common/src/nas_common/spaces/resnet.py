"""CIFAR/ImageNet ResNets with per-layer widths and per-stage depths (filled in by the spaces work)."""
