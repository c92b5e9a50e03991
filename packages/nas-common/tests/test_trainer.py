"""The Trainer: schedules, presets, KD loss, drop path / auxiliary, NaN guard, evaluation, logging."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas_common import Arch, Run, dist, get_dataset, seed_everything
from nas_common.config import resolve_config
from nas_common.errors import ConfigError, RunError
from nas_common.train import TrainConfig, Trainer, TrainingDiverged, distill_loss, evaluate, lr_factor, train_arch


def tiny_resnet(num_classes: int = 10) -> Arch:
    """A 3-block CIFAR ResNet with widths 4/8/8: trains in a blink."""
    spec = {"kind": "cifar", "block": "basic", "stem": 4, "depths": [1, 1, 1],
            "widths": [[[4, 4]], [[8, 8]], [[8, 8]]]}
    return Arch("resnet", spec, {"num_classes": num_classes, "input": [3, 32, 32]})




@pytest.fixture(scope="module")
def mini():
    return get_dataset("cifar10-mini").subset(64, 32)


def cfg(**kw) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 16, "lr": 0.05, "eval_batch_size": 64}
    return resolve_config(TrainConfig, preset="tiny", values={**base, **kw})


# ---- config and schedule ------------------------------------------------------------------------

def test_darts_eval_preset_is_the_darts_recipe() -> None:
    c = resolve_config(TrainConfig, preset="darts-eval")
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == (600, 96, 0.025, 0.9, 3e-4)
    assert (c.cutout, c.drop_path, c.auxiliary_weight, c.grad_clip, c.schedule, c.lr_min) == \
        (16, 0.2, 0.4, 5.0, "cosine", 0.0)
    p = resolve_config(TrainConfig, preset="paper")
    assert (p.lr, p.nesterov, p.weight_decay, p.batch_size, p.schedule) == (0.1, True, 5e-4, 128, "cosine")
    assert resolve_config(TrainConfig, preset="tiny").epochs <= 5


@pytest.mark.parametrize("bad", ["lr=0", "epochs=0", "label_smoothing=1.5", "drop_path=-0.1",
                                 "schedule=step", "amp=fp8", "warmup_epochs=400", "nonsense=1"])
def test_bad_config_values_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        resolve_config(TrainConfig, preset="paper", overrides=[bad])


def test_lr_schedules() -> None:
    c = TrainConfig(epochs=10, lr=0.1, lr_min=0.001)
    assert lr_factor(c, 0) == pytest.approx(1.0)
    assert lr_factor(c, 5) == pytest.approx((0.001 + 0.099 * 0.5) / 0.1)
    assert lr_factor(c, 10) == pytest.approx(0.01)  # the floor
    w = TrainConfig(epochs=10, warmup_epochs=4)
    assert [lr_factor(w, e) for e in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(w, 4) == pytest.approx(1.0)
    s = TrainConfig(epochs=300, schedule="step", milestones=(150, 225), gamma=0.1)
    assert [lr_factor(s, e) for e in (0, 149, 150, 224, 225)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


# ---- KD loss ------------------------------------------------------------------------------------

def test_distill_loss_matches_the_formula() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    alpha, T = 0.9, 4.0
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    want = (1 - alpha) * F.cross_entropy(s, y) + alpha * T * T * kl
    got = distill_loss(s, t, y, alpha=alpha, T=T)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.backward()
    assert s.grad is not None and t.grad is None  # the teacher gets no gradient
    assert distill_loss(s, s, y, alpha=0.9).item() == pytest.approx(0.1 * F.cross_entropy(s, y).item(), rel=1e-5)
    assert distill_loss(s, t, y, alpha=0.0).item() == pytest.approx(F.cross_entropy(s, y).item())


# ---- training -----------------------------------------------------------------------------------

def test_train_arch_writes_a_complete_run(tmp_path, mini) -> None:
    res = train_arch(tiny_resnet(), mini, out=tmp_path / "r", config=cfg(), progress=False)
    d = tmp_path / "r"
    for f in ("config.toml", "arch.json", "metrics.jsonl", "checkpoints/last.pt", "model.pt", "result.json"):
        assert (d / f).exists(), f
    assert any((d / "tb").iterdir())
    recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    assert {"train/lr", "train/loss", "train/top1", "test/top1", "test/top5", "test/loss"} <= set(recs[-1])
    assert recs[1]["train/lr"] < recs[0]["train/lr"]  # cosine
    ck = torch.load(d / "checkpoints/last.pt", weights_only=False)
    assert ck["format"] == "nas-ckpt/2" and ck["epoch"] == 2 and len(ck["rng"]) == 1
    assert set(ck["model"]) == {"model"} and set(ck["optimizers"]) == {"optimizer"}
    assert set(ck["schedulers"]) == {"scheduler"} and ck["scaler"] is not None
    assert ck["extra"]["arch_digest"] == tiny_resnet().digest and ck["extra"]["config"]["epochs"] == 2
    result = json.loads((d / "result.json").read_text())
    assert result["metrics"]["test_top1"] == recs[-1]["test/top1"]
    assert {"versions", "device", "seed", "git_commit"} <= set(result["provenance"])
    assert result["costs"]["macs"] > 0 and result["costs"]["params"] > 0
    assert 0 <= res.metrics["test_top1"] <= 100 and res.metrics["test_top5"] >= res.metrics["test_top1"]
    assert not res.model.training


def test_training_lowers_the_loss(mini) -> None:
    seed_everything(0)
    model = tiny_resnet().build()
    tr = Trainer(model, cfg(epochs=4, augment=False, eval_every=0, lr=0.1), device="cpu")
    tr.fit(mini.train)
    losses = [h["train_loss"] for h in tr.history]
    assert losses[-1] < losses[0]


def test_evaluate_counts_every_item_and_top5_with_few_classes() -> None:
    from nas_common.data import Split

    x = torch.randint(0, 255, (10, 3, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2] * 3 + [0])
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 3))
    m = evaluate(model, Split(y=y, x=x), device="cpu", batch_size=4)
    assert m["n"] == 10 and m["top5"] == 100.0 and 0 <= m["top1"] <= 100 and m["loss"] > 0


class Probe(nn.Module):
    """Records drop_path_prob per training forward; returns (logits, aux) in training; NaN from a step on."""

    def __init__(self, nan_from: int | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 10))
        self.aux = nn.Linear(48, 10)
        self.drop_path_prob = 0.0
        self.seen: list[float] = []
        self.nan_from = nan_from
        self.steps = 0

    def forward(self, x):
        logits = self.body(x)
        if not self.training:
            return logits
        self.steps += 1
        self.seen.append(self.drop_path_prob)
        if self.nan_from is not None and self.steps >= self.nan_from:
            logits = logits * float("nan")
        return logits, self.aux(F.adaptive_avg_pool2d(x, 4).flatten(1))


def test_drop_path_ramp_and_auxiliary_loss(mini) -> None:
    model = Probe()
    c = cfg(epochs=4, drop_path=0.2, auxiliary_weight=0.4, eval_every=0)
    Trainer(model, c, device="cpu").fit(mini.train)
    per_epoch = len(model.seen) // 4
    assert sorted(set(model.seen)) == pytest.approx([0.0, 0.05, 0.1, 0.15])  # 0.2 * epoch / epochs
    assert model.seen[per_epoch] == pytest.approx(0.05)
    assert model.aux.weight.grad is not None and model.aux.weight.grad.abs().sum() > 0

    # with weight 0 the auxiliary head learns nothing
    model0 = Probe()
    w0 = model0.aux.weight.detach().clone()
    Trainer(model0, cfg(epochs=1, auxiliary_weight=0.0, weight_decay=0.0, eval_every=0), device="cpu").fit(mini.train)
    assert torch.equal(model0.aux.weight, w0)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, mini) -> None:
    steps_per_epoch = 64 // 16
    model = Probe(nan_from=steps_per_epoch + 2)  # epoch 2, step 2
    run = Run.create(tmp_path / "r", {"kind": "test"}, progress=False)
    tr = Trainer(model, cfg(epochs=3, nan_check_every=1), run=run, device="cpu")
    with pytest.raises(TrainingDiverged) as e:
        tr.fit(mini.train, mini.test)
    msg = str(e.value)
    assert "epoch 2 step 2" in msg and "last.pt (epoch 1)" in msg and "learning rate" in msg
    assert isinstance(e.value, RunError) and "\n" not in msg
    ck = torch.load(run.checkpoint_path, weights_only=False)
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"]["model"].values() if v.is_floating_point())


def test_nan_found_at_epoch_end_when_checks_are_sparse(mini) -> None:
    model = Probe(nan_from=3)
    tr = Trainer(model, cfg(epochs=1, nan_check_every=0), device="cpu")
    with pytest.raises(TrainingDiverged, match="epoch 1 step 3; no checkpoint"):
        tr.fit(mini.train)


def test_teacher_switches_to_the_kd_loss(mini, monkeypatch) -> None:
    import nas_common.train.trainer as trainer_mod

    calls = []

    def spy(*a, **kw):
        calls.append(kw)
        return distill_loss(*a, **kw)

    monkeypatch.setattr(trainer_mod, "distill_loss", spy)
    seed_everything(0)
    teacher = tiny_resnet().build()
    student = tiny_resnet().build()
    tr = Trainer(student, cfg(epochs=1, kd_alpha=0.5, kd_temperature=2.0), device="cpu", teacher=teacher)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    tr.fit(mini.train)
    assert calls and calls[0]["alpha"] == 0.5 and calls[0]["T"] == 2.0
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t0.items())  # the teacher is frozen


def test_checkpoint_of_another_architecture_is_refused(tmp_path, mini) -> None:
    a, b = tiny_resnet(10), tiny_resnet(10).replace(spec={**tiny_resnet().spec, "stem": 8})
    run = Run.create(tmp_path / "r", {"kind": "test"}, progress=False)
    Trainer(a.build(), cfg(epochs=1), run=run, device="cpu", arch=a).fit(mini.train)
    again = Run.create(tmp_path / "r", {"kind": "test"}, resume=True, progress=False)
    with pytest.raises(RunError, match="another architecture"):
        Trainer(b.build(), cfg(epochs=2), run=again, device="cpu", arch=b).fit(mini.train)
    # without the digest, the weights' shapes still give it away
    with pytest.raises(RunError, match="does not fit"):
        Trainer(b.build(), cfg(epochs=2), run=again, device="cpu").fit(mini.train)


def test_ddp_helpers_are_identities_in_one_process() -> None:
    m = nn.Linear(2, 2)
    assert dist.wrap(m, torch.device("cpu")) is m and dist.unwrap(m) is m
    t = torch.ones(3)
    assert torch.equal(dist.all_reduce_(t), torch.ones(3)) and torch.equal(dist.broadcast_(t), torch.ones(3))
    assert dist.gather_objects("x") == ["x"] and dist.broadcast_object("y") == "y"
    d = dist.weight_digest(m)
    with torch.no_grad():
        m.weight[0, 0] += 1e-6
    assert dist.weight_digest(m) != d and not math.isnan(len(d))


def test_grad_clipping_bounds_the_update(mini) -> None:
    seed_everything(0)
    a = tiny_resnet().build()
    w0 = [p.detach().clone() for p in a.parameters()]
    # one step, no momentum/decay: the update is lr * clipped gradient, so its norm is at most lr * clip
    c = cfg(epochs=1, batch_size=64, grad_clip=1e-3, momentum=0.0, nesterov=False, weight_decay=0.0, lr=0.1,
            eval_every=0)
    Trainer(a, c, device="cpu").fit(mini.train)
    step = torch.cat([(p.detach() - q).flatten() for p, q in zip(a.parameters(), w0, strict=False)]).norm()
    assert 0 < step <= 0.1 * 1e-3 * 1.001


def test_label_smoothing_changes_the_loss(mini) -> None:
    losses = []
    for ls in (0.0, 0.3):
        seed_everything(0)
        tr = Trainer(tiny_resnet().build(), cfg(epochs=1, label_smoothing=ls, eval_every=0), device="cpu")
        tr.fit(mini.train)
        losses.append(tr.history[0]["train_loss"])
    assert losses[0] != losses[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_cuda_amp_and_channels_last(mini, amp) -> None:
    seed_everything(0)
    model = tiny_resnet().build()
    tr = Trainer(model, cfg(epochs=1, amp=amp, channels_last=True), device="cuda")
    assert tr.channels_last and (tr.scaler.is_enabled() == (amp == "fp16"))
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    m = tr.fit(mini.train, mini.test)
    assert math.isfinite(m["train_loss"]) and 0 <= m["test_top1"] <= 100
    assert next(model.parameters()).device.type == "cuda"


def test_packages_register_training_presets() -> None:
    from nas_common.config import list_presets, resolve_config
    from nas_common.train import list_train_presets, register_train_preset
    from nas_common.train.config import TRAIN_PRESETS

    register_train_preset("test-recipe", {"epochs": 7, "cutout": 8})
    try:
        assert "test-recipe" in list_train_presets() and "test-recipe" in list_presets(TrainConfig)
        cfg = resolve_config(TrainConfig, preset="test-recipe")
        assert cfg.epochs == 7 and cfg.cutout == 8 and cfg.lr == TrainConfig().lr
        with pytest.raises(Exception, match="registered twice"):
            register_train_preset("test-recipe", {})
    finally:
        TRAIN_PRESETS.unregister("test-recipe")
    with pytest.raises(ConfigError, match="unknown preset 'test-recipe'"):
        resolve_config(TrainConfig, preset="test-recipe")
