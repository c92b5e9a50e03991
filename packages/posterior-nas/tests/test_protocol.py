"""The paper's protocol end to end at micro scale: the run's model is the best sub-network with its inherited
weights, masks are scored on held-out images only, the ranking hook refuses another split, the recipes
follow the data set, the "Random" (fixed-dropout) baseline and fine-tuning."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nas_common import Task, get_dataset
from nas_common.data import make_loader
from nas_common.data.datasets import from_arrays
from nas_common.errors import ConfigError
from nas_common.runs import load_model
from nas_common.search import run_search
from posterior_nas import PosteriorConfig, PosteriorSearch
from posterior_nas.search import accuracy, held_out_split

MICRO = {"space": "supnet-m", "width": 4, "blocks": [1, 1, 1], "stem": 4, "epochs": 2, "batch_size": 16,
         "val_fraction": 0.25, "num_samples": 8, "score_batch": 64, "uniform_baseline": False, "cutout": 0}


def _search(tmp_path: Path, task: Task, name: str = "run", **overrides: object):  # noqa: ANN202
    return run_search("posterior-nas", task, out=tmp_path / name, preset="tiny", overrides={**MICRO, **overrides},
                      progress=False)


@pytest.fixture(scope="module")
def micro_task() -> Task:
    return Task(get_dataset("cifar10-mini").subset(64, 32))


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, micro_task: Task):  # noqa: ANN201
    out = tmp_path_factory.mktemp("posterior")
    result, arch = _search(out, micro_task)
    return result, arch, out / "run"


# ---- the run's model: the paper's protocol ------------------------------------------------------------------

def test_the_runs_model_is_the_best_subnetwork_with_its_inherited_weights(searched, micro_task: Task) -> None:
    """model.pt holds the scored network: `load_model(run)` (what `nas eval` loads) builds `derive(result)` and
    its accuracy on the held-out split is the search's best score, and it computes what the supernet computes
    under the best mask."""
    result, arch, run_dir = searched
    model = load_model(run_dir)
    assert result.metrics["model"] == "inherited"
    assert set(model.state_dict()) == set(arch.build().state_dict())
    config = PosteriorConfig(**{**result.config, "blocks": tuple(result.config["blocks"])})
    _, held_split, _ = held_out_split(micro_task, config)
    held = list(make_loader(held_split, 16, train=False))
    assert accuracy(model, held) == pytest.approx(result.metrics["best_acc"])
    sup, _, _ = PosteriorSearch().load_supernet(run_dir, micro_task)
    sup.eval()
    x = held[0][0]
    with torch.no_grad(), sup.masked(result.state["best_mask"][None].to(torch.float32)):
        expected = sup(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_nas_eval_gives_the_inherited_weight_accuracy(searched, capsys: pytest.CaptureFixture) -> None:
    from nas_common.cli import main

    _, _, run_dir = searched
    assert main(["eval", str(run_dir), "--dataset", "cifar10-mini", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    test = list(make_loader(get_dataset("cifar10-mini").test, 250, train=False))
    assert out["top1"] == pytest.approx(100 * accuracy(load_model(run_dir), test))


# ---- held-out scoring ----------------------------------------------------------------------------------------

def _indexed_task(n: int = 64) -> Task:
    """Images that say which they are: image i is constant at pixel value 3 (i + 1), which survives
    normalisation, padding-crop and flip (the image's maximum), so a forward pass reveals its images."""
    x = (3 * (np.arange(n) + 1)).astype(np.uint8)[:, None, None, None] * np.ones((1, 16, 16, 3), np.uint8)
    y = np.arange(n) % 10
    return Task(from_arrays("indexed", x, y, x[:8], y[:8], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))


def _decode(x: torch.Tensor) -> set[int]:
    v = (x[:, 0].flatten(1).amax(1) * 0.25 + 0.5) * 255.0
    return {int(i) for i in torch.round(v / 3 - 1).long().tolist()}


def test_masks_are_scored_on_held_out_images_never_training_ones(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image the supernet sees under hard masks (scoring, in the search and in the ranking hook) is a
    held-out image and none is one it trained on; fine-tuning reads training images only."""
    from posterior_nas.supernets import SupNet

    seen: dict[str, set[int]] = {"train": set(), "scored": set(), "finetune": set()}

    def record(module: torch.nn.Module, args: tuple) -> None:
        if not isinstance(module, SupNet):
            return
        if module.gates:
            masked = next(iter(module.gates.values())).hard_mask is not None
            key = "scored" if masked else ("train" if module.training else "other")
        else:
            key = "finetune" if module.training else "other"
        seen.setdefault(key, set()).update(_decode(args[0]))

    # the whole network's forward must see the images: without the stem cache (which runs the same images
    # through the stem once, test_posterior.py checks it changes no score)
    monkeypatch.setattr("posterior_nas.sampling.STEM_CACHE_BYTES", 0)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        task = _indexed_task()
        _search(tmp_path, task, finetune_epochs=1, uniform_baseline=True)
        scored_in_search = set(seen["scored"])
        PosteriorSearch().sample_and_score(tmp_path / "run", task, 3, seed=0)
    finally:
        handle.remove()
    assert len(seen["train"]) == 48 and len(scored_in_search) == 16
    assert seen["train"].isdisjoint(seen["scored"])
    assert seen["train"] | seen["scored"] == set(range(64))
    assert seen["finetune"] <= seen["train"] and seen["finetune"]


def test_ranking_hook_refuses_another_seed_or_other_data(searched, micro_task: Task) -> None:
    """The hook scores on the search's own held-out split: a task with another seed, or other data under the
    same name, would score on images the supernet trained on, so it is refused."""
    _, _, run_dir = searched
    hook = PosteriorSearch().sample_and_score
    assert len(hook(run_dir, micro_task, 2, seed=0)) >= 1
    with pytest.raises(ConfigError, match="seed"):
        hook(run_dir, Task(micro_task.dataset, seed=1), 2)
    with pytest.raises(ConfigError, match="held-out split"):
        hook(run_dir, Task(get_dataset("cifar10-mini").subset(60, 32)), 2)


def test_no_weight_decay_in_any_optimizer(tmp_path: Path, micro_task: Task, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper has no weight decay (the l2 term replaces it): neither the supernet's optimizer (learned or
    fixed drop rates) nor the fine-tuning one has any."""
    made: list[torch.optim.Optimizer] = []
    real = torch.optim.SGD

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "SGD", Recording)
    _search(tmp_path, micro_task, "learned", epochs=1, finetune_epochs=1)
    _search(tmp_path, micro_task, "fixed", epochs=1, drop_rates="fixed")
    assert len(made) == 3
    assert all(g["weight_decay"] == 0 for opt in made for g in opt.param_groups)
    state = torch.load(tmp_path / "learned" / "checkpoints" / "last.pt", weights_only=False)
    assert [g["weight_decay"] for g in state["optimizers"]["sgd"]["param_groups"]] == [0.0, 0.0]


# ---- the paper's "Random" baseline and fine-tuning ------------------------------------------------------------

def test_fixed_dropout_baseline_keeps_its_rate_and_samples_at_it(tmp_path: Path, micro_task: Task) -> None:
    """drop_rates=fixed: the supernet trains with hard dropout at p_init (not learnt) and masks are drawn at
    that rate; with learned rates the same training moves them."""
    result, _ = _search(tmp_path, micro_task, "fixed", drop_rates="fixed", p_init=0.3, epochs=3)
    assert torch.allclose(result.state["drop_rates"], torch.full_like(result.state["drop_rates"], 0.3))
    assert result.metrics["drop_rates"] == "fixed" and "uniform_best_acc" not in result.metrics
    learned, _ = _search(tmp_path, micro_task, "learned", p_init=0.3, epochs=3)
    assert not torch.allclose(learned.state["drop_rates"], torch.full_like(learned.state["drop_rates"], 0.3))


def test_fixed_rate_training_is_hard_bernoulli_dropout_without_rescale() -> None:
    from posterior_nas import GatedConv, get_supnet_space

    space = get_supnet_space("supnet-m")
    net = space.supernet(space.validate_net({"width": 4, "blocks": [1, 1, 1], "stem": 4, "num_classes": 10,
                                             "input": [3, 16, 16]}), p_init=0.3).fix_drop_rates()
    gate: GatedConv = next(iter(net.gates.values()))
    seen = {}
    gate.conv.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    torch.manual_seed(0)
    x = torch.rand(2000, 4, 1, 1) + 0.5
    gate.train()(x)
    kept = seen["x"] != 0
    assert float(kept.float().mean()) == pytest.approx(0.7, abs=0.02)
    torch.testing.assert_close(seen["x"][kept], x[kept])  # dropped or untouched: no relaxation, no rescale
    assert not gate.p_logit.requires_grad


def test_finetuning_trains_the_inherited_subnetwork(tmp_path: Path, micro_task: Task) -> None:
    """finetune_epochs > 0: the run's model is the best sub-network fine-tuned from its inherited weights
    (same architecture as without fine-tuning, different weights)."""
    plain, arch = _search(tmp_path, micro_task, "plain", epochs=1)
    tuned, arch_t = _search(tmp_path, micro_task, "tuned", epochs=1, finetune_epochs=2)
    assert arch_t.spec == arch.spec and tuned.metrics["model"] == "finetuned" and "finetuned_acc" in tuned.metrics
    a, b = load_model(tmp_path / "plain").state_dict(), load_model(tmp_path / "tuned").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


# ---- recipes by data set ----------------------------------------------------------------------------------------

CIFAR10 = SimpleNamespace(input_shape=(3, 32, 32), num_classes=10)
CIFAR100 = SimpleNamespace(input_shape=(3, 32, 32), num_classes=100)
IMAGENET = SimpleNamespace(input_shape=(3, 224, 224), num_classes=1000)


def test_recipes_follow_the_data_set() -> None:
    """The supplementary's recipes: CIFAR-100 l2 2500 and C 5000; SupNet-R on ImageNet 90 epochs, lr 0.1
    divided by 10 every 30, batch 256, Nesterov, l2 80, N 1.2e6; what is set explicitly wins."""
    paper = PosteriorConfig()
    c10, c100, inet = paper.resolve(CIFAR10), paper.resolve(CIFAR100), paper.resolve(IMAGENET)
    assert (c10.recipe, c10.space, c10.l2, c10.num_samples, c10.epochs) == ("cifar10", "supnet-mi", 150.0, 1500, 1800)
    assert (c100.recipe, c100.space, c100.l2, c100.num_samples, c100.N) == ("cifar100", "supnet-mi", 2500.0, 5000,
                                                                             5e5)
    assert (inet.recipe, inet.space, inet.epochs, inet.lr, inet.lr_schedule, inet.lr_step, inet.lr_gamma,
            inet.batch_size, inet.nesterov, inet.momentum, inet.l2, inet.N, inet.num_samples) == (
        "imagenet", "supnet-r", 90, 0.1, "step", 30, 0.1, 256, True, 0.9, 80.0, 1.2e6, 1500)
    assert paper.replace(l2=7.0, num_samples=10).resolve(CIFAR100).l2 == 7.0
    assert paper.replace(recipe="cifar100").resolve(CIFAR10).num_samples == 5000
    assert inet.resolve(CIFAR10) == inet  # resolving twice changes nothing


def test_imagenet_schedule_divides_the_lr_by_ten_every_30_epochs() -> None:
    from posterior_nas.search import _scheduler

    cfg = PosteriorConfig().resolve(IMAGENET)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr, momentum=0.9, nesterov=cfg.nesterov)
    sched = _scheduler(opt, cfg, cfg.epochs, cfg.lr_min)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[29] == pytest.approx(0.1)
    assert lrs[30] == lrs[59] == pytest.approx(0.01)
    assert lrs[60] == lrs[89] == pytest.approx(0.001)


def test_the_search_runs_the_recipe_of_its_data(tmp_path: Path, micro_task: Task) -> None:
    result, _ = _search(tmp_path, micro_task, recipe="cifar100", epochs=1)
    recorded = json.loads((tmp_path / "run" / "result.json").read_text())["config"]  # the resolved config
    assert result.metrics["recipe"] == "cifar100" and recorded["l2"] == 2500.0 and recorded["recipe"] == "cifar100"
    assert result.metrics["samples"] == MICRO["num_samples"]  # set explicitly: wins over the recipe's 5000


# ---- no host-device sync in a step ----------------------------------------------------------------------------

SYNCING = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("drop_rates", ["learned", "fixed"])
def test_search_and_finetune_steps_never_read_a_tensor_on_the_host(drop_rates: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step (forward, regulariser, backward, SGD) calls none of the Tensor methods that wait for
    the device (on CUDA each would stall the queue). Checked on the CPU by making them raise."""
    from posterior_nas import Regulariser, get_supnet_space
    from posterior_nas.search import train_step

    space = get_supnet_space("supnet-m")
    net_cfg = space.validate_net({"width": 4, "blocks": [1, 1, 1], "stem": 4, "num_classes": 10,
                                  "input": [3, 16, 16]})
    net = space.supernet(net_cfg)
    if drop_rates == "fixed":
        net.fix_drop_rates()
    reg = Regulariser(list(net.gates.values()), 50.0, 4e3)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05, momentum=0.9, nesterov=True)
    pruned = space.build({"keep": {}}, net_cfg).train()
    opt_p = torch.optim.SGD(pruned.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    train_step(net.train(), x, y, opt, reg)  # warm-up: lazy state (momentum buffers) outside the guard

    def refuse(name: str):  # noqa: ANN202
        def f(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"Tensor.{name} called in a training step: a host-device sync")
        return f

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, refuse(name))
    ce, hits = train_step(net, x, y, opt, reg)
    train_step(pruned, x, y, opt_p)
    monkeypatch.undo()
    assert ce.shape == () and hits.shape == ()
