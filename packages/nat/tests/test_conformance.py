"""nas_common's conformance tests for the `nat` method, at micro scale (seconds per search)."""
from __future__ import annotations

from typing import Any, ClassVar

from nas_common.testing import SearchMethodTests

MICRO: dict[str, Any] = {
    "C": 4, "layers": 3, "epochs": 2, "batch_size": 12, "policy_embed": 8, "policy_features": 16,
    "policy_hidden": 8, "num_samples": 3, "eval_batch_size": 32, "max_eval_batches": 0, "net_C": 4,
    "net_layers": 3, "warmup_epochs": 0,  # the tiny preset's warm-up would leave the policy untrained here
    # batch_size 12, the global batch: the 2-process test gives each rank 6 images a step of its 25
}


class TestNATConformance(SearchMethodTests):
    method = "nat"
    micro: ClassVar[dict[str, Any]] = MICRO
