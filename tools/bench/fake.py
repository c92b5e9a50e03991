"""Fake, fast methods for testing the harness (registered through NAS_EXTRA_METHODS, never installed).

`FakeSearch` "searches" by drawing a random small ResNet of the resnet space; `BrokenSearch` crashes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from nas_common.arch import Arch
from nas_common.config import Config
from nas_common.methods import SearchMethod, SearchResult, Task
from nas_common.spaces.resnet import random_resnet_spec, resnet_spec


@dataclass(frozen=True)
class FakeConfig(Config):
    depth: int = 8
    PRESETS = {"paper": {}, "tiny": {}}


class FakeSearch(SearchMethod):
    name = "fake"
    config_cls = FakeConfig
    spaces = ("resnet",)

    def search(self, task: Task, config: FakeConfig, run: Any) -> SearchResult:
        spec = random_resnet_spec(random.Random(task.seed), resnet_spec(config.depth))
        run.save_state(1, extra={"spec": spec})
        return SearchResult(self.name, state={"spec": spec})

    def derive(self, result: SearchResult) -> Arch:
        return Arch("resnet", result.state["spec"], {"num_classes": 10, "input": [3, 32, 32]})

    def sample_and_score(self, run_dir: str, task: Task, n: int, seed: int) -> list[tuple[Arch, float]]:
        rng = random.Random(seed)
        return [(Arch("resnet", random_resnet_spec(rng, resnet_spec(8)), {"num_classes": 10, "input": [3, 32, 32]}),
                 rng.random()) for _ in range(n)]


class BrokenSearch(FakeSearch):
    name = "broken"

    def search(self, task: Task, config: FakeConfig, run: Any) -> SearchResult:
        raise RuntimeError("this method always fails")
