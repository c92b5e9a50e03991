"""NAT's search pieces: REINFORCE baseline, input architectures, the saved policy, derive's costs."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nas_common.arch import Arch, save_arch
from nas_common.config import resolve_config
from nas_common.costs import count_costs
from nas_common.data import get_dataset, make_loader
from nas_common.errors import ConfigError
from nas_common.methods import Task
from nas_common.search import run_search
from nas_common.spaces.darts import genotype_to_spec
from nas_common.spaces.darts_genotypes import GENOTYPES
from nat_nas import NATConfig, NATSearch
from nat_nas.archs import cell_spec
from nat_nas.cells import CellPair
from nat_nas.search import EdgeCosts, _Batches, cell_positions, leave_one_out_step, reinforce_step, resolve_input_arch
from nat_nas.transitions import is_reachable

MICRO = {"C": 4, "layers": 3, "epochs": 2, "batch_size": 16, "policy_embed": 8, "policy_features": 16,
         "policy_hidden": 8, "num_samples": 3, "eval_batch_size": 32, "net_C": 4, "net_layers": 3, "warmup_epochs": 0}


def _task() -> Task:
    return Task(dataset=get_dataset("cifar10-mini").subset(64, 32))


def test_baseline_tracks_the_reward_not_the_advantage() -> None:
    b = torch.zeros(())
    lp, ent = torch.zeros(2, requires_grad=True), torch.zeros(2)
    for _ in range(2000):
        _, b = reinforce_step(lp, ent, torch.tensor(0.2), b, (0.003, 0.003), 0.99)
    assert b.item() == pytest.approx(0.2, abs=1e-3)  # the official update would settle at 0.1


def test_reinforce_loss_gradient_and_entropy_bonus() -> None:
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ent = torch.tensor([0.5, 0.25], requires_grad=True)
    loss, _ = reinforce_step(lp, ent, torch.tensor(0.3), torch.tensor(0.1), (0.003, 0.006), 0.99)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.full((2,), -0.2))  # -(r - b)
    torch.testing.assert_close(ent.grad, torch.tensor([-0.003, -0.006]))


def test_leave_one_out_advantage_is_each_reward_minus_the_others_mean() -> None:
    lp = torch.zeros(3, 2, requires_grad=True)
    ent = torch.tensor([0.5, 0.25], requires_grad=True)
    loss = leave_one_out_step(lp, ent, torch.tensor([0.3, 0.1, 0.2]), (0.003, 0.006))
    loss.backward()
    # advantages 0.3 - 0.15, 0.1 - 0.25, 0.2 - 0.2, the loss averaged over the 3 samples
    torch.testing.assert_close(lp.grad, -torch.tensor([0.15, -0.15, 0.0]).unsqueeze(1).expand(3, 2) / 3)
    torch.testing.assert_close(ent.grad, torch.tensor([-0.003, -0.006]))


def test_leave_one_out_gives_no_gradient_when_every_sample_scores_the_same() -> None:
    """An easy input raises every sample's reward: nothing is learnt from it (a zero baseline would)."""
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    leave_one_out_step(lp, torch.zeros(2), torch.tensor([0.4, 0.4]), (0.0, 0.0)).backward()
    assert lp.grad is not None and torch.count_nonzero(lp.grad) == 0
    with pytest.raises(ValueError, match="two samples"):
        leave_one_out_step(lp[:1], torch.zeros(2), torch.tensor([0.4]), (0.0, 0.0))


def test_paper_preset_values() -> None:
    cfg = resolve_config(NATConfig, "paper")
    assert (cfg.C, cfg.layers, cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == \
        (20, 8, 100, 64, 0.01, 0.9, 3e-4)
    assert (cfg.weight_fraction, cfg.policy_hidden, cfg.policy_lr, cfg.policy_betas, cfg.policy_weight_decay) == \
        (0.4, 100, 3e-4, (0.5, 0.999), 5e-4)
    assert (cfg.entropy_normal, cfg.entropy_reduce, cfg.baseline_decay, cfg.num_samples) == (0.003, 0.003, 0.99, 10)
    assert cfg.policy_samples == 1  # one transform per input and step, the moving baseline
    assert cfg.input_arch == "darts-v2" and "conv_3x3" in cfg.ops and (cfg.net_C, cfg.net_layers) == (36, 20)
    # the training rule of the official code (w on the sampled inputs only), its batch-statistics scoring,
    # one batch per reward, no warm-up, the paper's transition rules and final rule (best of the samples)
    assert (cfg.train_on_transforms, cfg.score_bn, cfg.reward_batches, cfg.warmup_epochs) == (False, "batch", 1, 0)
    assert (cfg.transition_rules, cfg.policy_type, cfg.inference, cfg.input_as_candidate) == \
        ("paper", "gcn", "sample", False)
    assert (cfg.net_stem, cfg.net_input_size, cfg.net_num_classes) == ("cifar", 0, 0)


def test_tiny_and_imagenet_presets() -> None:
    tiny = resolve_config(NATConfig, "tiny")
    assert tiny.warmup_epochs > 0 and tiny.reward_batches > 1 and tiny.input_as_candidate
    assert tiny.epochs > tiny.warmup_epochs  # some epochs train the policy
    net = resolve_config(NATConfig, "imagenet")
    assert (net.net_C, net.net_layers, net.net_stem, net.net_input_size, net.net_num_classes) == \
        (48, 14, "imagenet", 224, 1000)
    assert net.epochs == 100 and net.C == 20  # the search itself is the paper's


def test_unknown_policy_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gcn, lstm, random"):
        resolve_config(NATConfig, "tiny", overrides={"policy_type": "transformer"})


def test_cell_positions_follow_the_darts_layout() -> None:
    assert cell_positions(36, 20, 32, reduction=True) == [(72, 32), (144, 16)]
    assert cell_positions(36, 20, 32, reduction=False) == [(36, 32), (72, 16), (144, 8)]
    assert len(EdgeCosts(36, 20, 32, True)("sep_conv_3x3", 2)) == 4
    # DARTS' ImageNet network: the stems take 224 px to 28 before the first cell
    assert cell_positions(48, 14, 224, reduction=False, stem="imagenet") == [(48, 28), (96, 14), (192, 7)]
    assert cell_positions(48, 14, 224, reduction=True, stem="imagenet") == [(96, 28), (192, 14)]


def test_imagenet_network_for_derive_and_retraining(tmp_path: Path) -> None:
    """The ImageNet layout (stems, C, cells, image size, classes) on the derived arch; small sizes here."""
    cfg = {**MICRO, "epochs": 1, "net_stem": "imagenet", "net_input_size": 64, "net_num_classes": 1000}
    _, arch = run_search("nat", _task(), out=tmp_path / "inet", preset="tiny", overrides=cfg, progress=False)
    assert arch.net["stem"] == "imagenet" and arch.net["input"] == [3, 64, 64] and arch.net["num_classes"] == 1000
    model = arch.build().eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    counted = count_costs(model, (3, 64, 64))
    assert counted["macs"] == arch.costs["macs"] <= arch.costs["input_macs"]
    assert counted["params"] == arch.costs["params"] <= arch.costs["input_params"]


def test_input_arch_by_name_file_and_errors(tmp_path: Path) -> None:
    assert resolve_input_arch("darts-v2").spec == genotype_to_spec(GENOTYPES["darts-v2"])
    assert resolve_input_arch("DARTS_V2").spec == genotype_to_spec(GENOTYPES["darts-v2"])
    path = save_arch(Arch("darts", genotype_to_spec(GENOTYPES["enas"]), {"num_classes": 10}), tmp_path / "a.json")
    assert resolve_input_arch(str(path)).spec["reduce_concat"] == [2, 3, 6]
    with pytest.raises(ConfigError, match="darts-v2"):
        resolve_input_arch("darts-v3")
    with pytest.raises(ConfigError, match="space"):
        resolve_input_arch("resnet20")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Arch]:
    out = tmp_path_factory.mktemp("nat") / "run"
    _, arch = run_search("nat", _task(), out=out, preset="tiny", overrides=dict(MICRO), progress=False)
    return out, arch


def test_derive_records_both_costs_and_never_more(trained: tuple[Path, Arch]) -> None:
    run_dir, arch = trained
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert {"supernet", "policy"} <= set(ckpt["model"]) and ckpt["extra"]["meta"]["steps"] == 4
    c = arch.costs
    assert c["macs"] <= c["input_macs"] and c["params"] <= c["input_params"]
    inp = Arch("darts", arch.provenance["input_spec"], arch.net)
    counted = count_costs(inp.build(), tuple(arch.net["input"]))
    assert counted["macs"] == c["input_macs"] and counted["params"] == c["input_params"]
    src, dst = CellPair.from_spec(arch.provenance["input_spec"]), CellPair.from_spec(arch.spec)
    assert is_reachable(src.normal, dst.normal, False) and is_reachable(src.reduce, dst.reduce, True)


@pytest.mark.parametrize("name", ["vgg-block", "resnet-block", "darts-v1", "random-r3"])
def test_saved_policy_transforms_a_new_arch_without_training(trained: tuple[Path, Arch], tmp_path: Path,
                                                            name: str) -> None:
    run_dir, _ = trained
    out = tmp_path / "reuse"
    result, arch = run_search("nat", _task(), out=out, preset="tiny",
                              overrides={**MICRO, "policy": str(run_dir), "input_arch": name}, progress=False)
    assert not (out / "checkpoints").exists()  # no training happened
    assert result.metrics["search/policy_from"] == str(run_dir)
    src = CellPair.from_spec(cell_spec(name))
    dst = CellPair.from_spec(arch.spec)
    assert is_reachable(src.normal, dst.normal, False) and is_reachable(src.reduce, dst.reduce, True)
    assert arch.costs["macs"] <= arch.costs["input_macs"] and arch.costs["params"] <= arch.costs["input_params"]


def test_saved_policy_refuses_unknown_ops_and_missing_files(trained: tuple[Path, Arch], tmp_path: Path) -> None:
    run_dir, _ = trained
    with pytest.raises(ConfigError, match="5-node"):  # PNAS has 5 nodes, the policy's supernet 4
        run_search("nat", _task(), out=tmp_path / "x", preset="tiny",
                   overrides={**MICRO, "policy": str(run_dir), "input_arch": "pnas"}, progress=False)
    spec = genotype_to_spec(GENOTYPES["darts-v2"])
    spec["normal"][0] = ["sep_conv_7x7", 0]
    path = save_arch(Arch("darts", spec, {"num_classes": 10}), tmp_path / "a.json")
    with pytest.raises(ConfigError, match="sep_conv_7x7"):
        run_search("nat", _task(), out=tmp_path / "z", preset="tiny",
                   overrides={**MICRO, "policy": str(run_dir), "input_arch": str(path)}, progress=False)
    with pytest.raises(ConfigError, match="config.toml"):
        run_search("nat", _task(), out=tmp_path / "y", preset="tiny",
                   overrides={**MICRO, "policy": str(tmp_path)}, progress=False)
    for name in ("x", "y", "z"):
        assert not (tmp_path / name).exists()  # refused in check(), before the run directory


def test_reused_policy_refuses_other_held_out_images(trained: tuple[Path, Arch], tmp_path: Path) -> None:
    """The held-out split's fingerprint is recorded in the checkpoint: a task whose training split differs
    (here 96 images instead of 64, same dataset name) would score on images the supernet trained on."""
    run_dir, _ = trained
    other = Task(dataset=get_dataset("cifar10-mini").subset(96, 32))
    with pytest.raises(ConfigError, match="held-out images differ"):
        run_search("nat", other, out=tmp_path / "o", preset="tiny", overrides={**MICRO, "policy": str(run_dir)},
                   progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="held-out images differ"):
        NATSearch().sample_and_score(run_dir, other, 2, seed=0)


@pytest.mark.slow
def test_cli_policy_and_input_arch_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`nas search nat --policy RUN_DIR --input-arch ARCH` (the issue's command line), in process, on a
    64-image npz (the reused policy must come from a search on the same data)."""
    from importlib import resources

    import numpy as np

    from nas_common.arch import load_arch
    from nas_common.cli import main

    with resources.as_file(resources.files("nas_common.data") / "_files" / "cifar10-mini.npz") as f:
        full = np.load(f)
        small = {k: full[k][:64] if k.endswith("train") else full[k][:32] for k in full.files}
    np.savez(tmp_path / "mini.npz", **small)
    data = ["--dataset", f"npz:{tmp_path / 'mini.npz'}"]
    opts = [x for k, v in MICRO.items() for x in ("-o", f"{k}={v}")]
    run_dir = tmp_path / "run"
    assert main(["search", "nat", *data, "--preset", "tiny", "--out", str(run_dir), *opts]) == 0
    out = tmp_path / "cli"
    args = ["search", "nat", *data, "--preset", "tiny", "--out", str(out), "--policy", str(run_dir),
            "--input-arch", "vgg-block", "--json", *opts]
    assert main(args) == 0
    arch = load_arch(out / "arch.json")
    assert arch.provenance["input_arch"] == "vgg-block" and arch.provenance["policy"] == str(run_dir)
    assert arch.costs["macs"] <= arch.costs["input_macs"]
    capsys.readouterr()


def test_mobilenetv2_block_input_brings_its_1x1_convs_into_the_supernet(tmp_path: Path) -> None:
    micro = {**MICRO, "epochs": 1, "input_arch": "mobilenetv2-block"}
    result, arch = run_search("nat", _task(), out=tmp_path / "mb", preset="tiny", overrides=micro, progress=False)
    src, dst = CellPair.from_spec(cell_spec("mobilenetv2-block")), CellPair.from_spec(arch.spec)
    assert is_reachable(src.normal, dst.normal, False) and is_reachable(src.reduce, dst.reduce, True)
    assert arch.costs["macs"] <= arch.costs["input_macs"] and arch.costs["params"] <= arch.costs["input_params"]
    assert "conv_1x1" in NATSearch()._load_policy(str(tmp_path / "mb"), _task(), torch.device("cpu")).primitives


def test_five_node_loose_end_input_trains_its_own_supernet(tmp_path: Path) -> None:
    """ENAS: 5 nodes per cell and a partial ("loose-end") reduce concat; the supernet follows the input."""
    micro = {**MICRO, "epochs": 1, "input_arch": "enas"}
    _, arch = run_search("nat", _task(), out=tmp_path / "enas", preset="tiny", overrides=micro, progress=False)
    src = CellPair.from_spec(genotype_to_spec(GENOTYPES["enas"]))
    dst = CellPair.from_spec(arch.spec)
    assert dst.reduce.concat == (2, 3, 6) and dst.normal.num_nodes == 5
    assert is_reachable(src.normal, dst.normal, False) and is_reachable(src.reduce, dst.reduce, True)
    assert arch.costs["params"] <= arch.costs["input_params"]


@pytest.mark.parametrize("bn", ["batch", "recalibrate", "running"])
def test_scoring_leaves_the_supernet_untouched(trained: tuple[Path, Arch], bn: str) -> None:
    """Held-out scoring through nas_common.oneshot: weights, running statistics and the training flag are
    as before, for every `score_bn`; "running" scores with the running statistics (eval mode)."""
    run_dir, _ = trained
    search, task = NATSearch(), _task()
    parts = search._load_policy(str(run_dir), task, task.device)
    config = parts.source.replace(score_bn=bn, max_eval_batches=1, recalibrate_batches=1)
    net = parts.supernet.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pair = CellPair.from_spec(genotype_to_spec(GENOTYPES["darts-v2"]))
    w_split, p_split = search._splits(task, config)
    acc = search._accuracies(parts, [pair], p_split, config, task, calibration=w_split)[0]
    assert net.training and 0.0 <= acc <= 1.0
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    if bn == "running":
        x, y = next(iter(_Batches(make_loader(p_split, config.eval_batch_size, train=False), 1)))
        net.eval()
        with torch.no_grad():
            ref = (search._forward(parts, x, pair).argmax(-1) == y).float().mean().item()
        net.train()
        assert acc == pytest.approx(ref)


def test_check_refuses_before_writing_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """epochs 0, a warm-up to the end, an unknown input arch and too little data are refused by check():
    one stderr line, exit 2, no run directory."""
    from nas_common.cli import main

    bad = [{"epochs": 0}, {"warmup_epochs": 2}, {"input_arch": "darts-v9"}, {"batch_size": 5000}]
    for i, override in enumerate(bad):
        out = tmp_path / f"r{i}"
        args = ["search", "nat", "--dataset", "cifar10-mini", "--preset", "tiny", "--out", str(out)]
        args += [x for k, v in {**MICRO, **override}.items() for x in ("-o", f"{k}={v}")]
        assert main(args) == 2, override
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "rror" in err[0], (override, err)
        assert not out.exists(), override


def test_sample_and_score_hook_for_the_harness(trained: tuple[Path, Arch]) -> None:
    run_dir, _ = trained
    pairs = NATSearch().sample_and_score(run_dir, _task(), 3, seed=0)
    assert len(pairs) == 3 and all(0.0 <= acc <= 1.0 for _, acc in pairs)
    assert len({a.digest for a, _ in pairs}) == 3
    assert pairs[0][0].build() is not None


@pytest.mark.parametrize("bn", ["eval", "batch"])
def test_gated_forward_of_a_transform_is_its_sparse_forward(bn: str) -> None:
    """The policy step runs alpha without reading its actions on the host: beta's ops and the allowed
    skips, gated by the actions and by their source's liveness. That equals the sparse forward of the
    transformed cells (dead nodes, nulled inputs and skips included), in eval mode and with batch
    statistics."""
    from nas_common.oneshot import batch_statistics
    from nat_nas.search import TransformedPair, _PriorMasks
    from nat_nas.transitions import NULL, SKIP, apply_actions

    torch.manual_seed(0)
    search, task = NATSearch(), _task()
    config = NATConfig(**{**MICRO, "epochs": 1})
    pair = CellPair.from_spec(genotype_to_spec(GENOTYPES["darts-v2"]))
    parts = search._build(config, task, pair, torch.device("cpu"))
    costs = search._edge_costs(config, task)
    masks_of = _PriorMasks(list(parts.policy.ops), costs, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    betas, skip_ok, ops, inputs, masks = search._policy_plan(parts, 12, gen, masks_of)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # running statistics away from (0, 1), so that a zero input is not scored as zero
        for beta in betas:
            search._forward(parts, x + 1.0, beta)
    nulls = skips = 0
    mode = batch_statistics(parts.supernet) if bn == "batch" else _eval(parts.supernet)
    with torch.no_grad(), mode:
        for i, beta in enumerate(betas):
            acts = parts.policy.act(ops[i], inputs[i], masks[i], generator=gen).actions
            # null both edges of the first node where allowed: a dead node, and edges out of it
            acts[:, :2] = torch.where(masks[i][:, :2, NULL], NULL, acts[:, :2])
            rows = acts.tolist()
            nulls += sum(a == NULL for r in rows for a in r)
            skips += sum(a == SKIP for r in rows for a in r)
            alpha = CellPair(apply_actions(beta.normal, rows[0]), apply_actions(beta.reduce, rows[1]))
            gated = search._forward(parts, x, TransformedPair(beta, acts, skip_ok[i]))
            torch.testing.assert_close(gated, search._forward(parts, x, alpha), rtol=1e-5, atol=1e-5)
    assert nulls > 0 and skips > 0  # both kinds of transition were exercised


@contextlib.contextmanager
def _eval(net: torch.nn.Module) -> Iterator[None]:
    net.eval()
    try:
        yield
    finally:
        net.train()


def test_darts_layout_search_derives_on_that_layout(tmp_path: Path) -> None:
    """net_prune_dead=false: the derived net is DARTS' layout, the masks are that layout's (free
    null -> skip from any state), and the output costs no more than the input counted there."""
    cfg = {**MICRO, "epochs": 1, "input_arch": "vgg-block", "transition_rules": "published", "net_prune_dead": False}
    _, arch = run_search("nat", _task(), out=tmp_path / "dl", preset="tiny", overrides=cfg, progress=False)
    assert arch.net["prune_dead"] is False
    assert arch.costs["macs"] <= arch.costs["input_macs"] and arch.costs["params"] <= arch.costs["input_params"]
    counted = count_costs(Arch("darts", arch.provenance["input_spec"], arch.net).build(), tuple(arch.net["input"]))
    assert counted["macs"] == arch.costs["input_macs"]
    src, dst = CellPair.from_spec(arch.provenance["input_spec"]), CellPair.from_spec(arch.spec)
    assert is_reachable(src.normal, dst.normal, False, rules="published", prune_dead=False)
