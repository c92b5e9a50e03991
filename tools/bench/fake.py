"""Fake, fast methods for testing the harness (registered through NAS_EXTRA_METHODS, never installed).

`FakeSearch` "searches" by drawing a random small ResNet of the resnet space (and waiting `sleep_s`, so
that random search at equal time has a budget); `BrokenSearch` crashes.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from nas_common.arch import Arch
from nas_common.config import Config
from nas_common.methods import SearchMethod, SearchResult, Task
from nas_common.spaces.resnet import random_resnet_spec, resnet_spec


@dataclass(frozen=True)
class FakeConfig(Config):
    depth: int = 20
    sleep_s: float = 0.0
    PRESETS = {"paper": {}, "tiny": {"sleep_s": 1.0}}


class FakeSearch(SearchMethod):
    name = "fake"
    config_cls = FakeConfig
    spaces = ("resnet",)
    budget_kinds = ("macs",)

    def search(self, task: Task, config: FakeConfig, run: Any) -> SearchResult:
        spec = random_resnet_spec(random.Random(task.seed), resnet_spec(config.depth))
        time.sleep(config.sleep_s)
        run.save_state(1, extra={"spec": spec})
        net = {"num_classes": task.num_classes, "input": list(task.input_shape)}
        return SearchResult(self.name, state={"spec": spec, "net": net})

    def derive(self, result: SearchResult) -> Arch:
        return Arch("resnet", result.state["spec"], result.state["net"])

    def sample_and_score(self, run_dir: str, task: Task, n: int, seed: int) -> list[tuple[Arch, float]]:
        rng = random.Random(seed)
        net = {"num_classes": task.num_classes, "input": list(task.input_shape)}
        return [(Arch("resnet", random_resnet_spec(rng, resnet_spec(8)), net), rng.random()) for _ in range(n)]


class BrokenSearch(FakeSearch):
    name = "broken"

    def search(self, task: Task, config: FakeConfig, run: Any) -> SearchResult:
        raise RuntimeError("this method always fails")
