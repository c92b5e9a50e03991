"""Fake, fast methods for testing the harness (registered through NAS_EXTRA_METHODS, never installed).

`FakeSearch` "searches" by drawing a random small ResNet of the resnet space (and waiting `sleep_s`, so
that random search at equal time has a budget), after `steps` real training steps of a small network,
each marked with `ctx.step()` like a method's search steps (what `python -m tools.bench.gpu` times);
`SyncSearch` reads the loss on the host inside its steps (a host-device sync the GPU script must
report); `BrokenSearch` crashes. All are `SearchMethod` subclasses, like every real method.
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
    steps: int = 0  # training steps of a ResNet-8 before the "search" draws its architecture
    batch_size: int = 16
    sync_in_step: bool = False  # read the loss on the host inside each step
    PRESETS = {"paper": {"steps": 20, "batch_size": 128}, "tiny": {"sleep_s": 1.0, "steps": 4}}


def train_steps(task: Task, config: FakeConfig) -> None:
    """`config.steps` SGD steps of a ResNet-8 on the task's training split, each one a marked search step."""
    import torch
    import torch.nn.functional as F

    from nas_common.spaces.resnet import resnet_arch

    ctx = task.context
    torch.manual_seed(task.seed)
    model = resnet_arch(8, num_classes=task.num_classes, input_shape=task.input_shape).build().to(ctx.device)
    net = ctx.wrap(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loader = ctx.loader(task.dataset.train, config.batch_size, train=True, seed=task.seed)
    done, epoch = 0, 0
    while done < config.steps:
        loader.set_epoch(epoch)
        for x, y in loader:
            with ctx.step():
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if config.sync_in_step:
                    loss.item()  # the host waits for the device: what a search step must never do
            done += 1
            if done >= config.steps:
                break
        epoch += 1


class FakeSearch(SearchMethod):
    name = "fake"
    config_cls = FakeConfig
    spaces = ("resnet",)
    budget_kinds = ("macs",)

    def search(self, task: Task, config: FakeConfig, run: Any) -> SearchResult:
        if config.steps:
            train_steps(task, config)
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


class SyncSearch(FakeSearch):
    name = "fake-sync"

    def search(self, task: Task, config: FakeConfig, run: Any) -> SearchResult:
        from dataclasses import replace

        return super().search(task, replace(config, sync_in_step=True), run)


class BrokenSearch(FakeSearch):
    name = "broken"

    def search(self, task: Task, config: FakeConfig, run: Any) -> SearchResult:
        raise RuntimeError("this method always fails")
