"""BSN: penalty, REINFORCE, connectivity, pruning, costs, distributed schedule, budgets, conformance."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from bsn_nas import BSNNetwork, BSNSearch, cnf_graph, cost_table, hinge_penalty, makespan, rescnf_graph, resnet_graph
from bsn_nas.costs import count_paper_flops, full_cost, min_connected_cost, pattern_costs
from bsn_nas.search import BSNConfig, check_budgets, lr_at, most_probable_path, reinforce_loss
from nas_common import Arch, Budget, BudgetError, Task, count_macs, count_params, get_dataset, load_arch, save_arch
from nas_common.errors import ArchFileError
from nas_common.methods import SearchResult
from nas_common.registry import SPACES
from nas_common.testing import SearchMethodTests

MICRO_NET = {"depth": 8, "widths": [4, 8, 8], "num_classes": 10, "input": [3, 32, 32]}
# the super network of the micro searches below (the default ResCNF at depth 8: one block per stage)
MICRO_RESCNF = {"blocks": 1, "widths": [4, 8, 8], "shift": "slr", "num_classes": 10, "input": [3, 32, 32]}
CNF_NET = {"layers": 3, "channels": 4, "num_classes": 10, "input": [3, 16, 16]}
RESCNF_NET = {"blocks": 2, "widths": [4, 8, 8], "shift": "slr", "num_classes": 10, "input": [3, 16, 16]}


def _patterns(g):  # every gate pattern of a small graph, as a (2^G, G) bool tensor
    return torch.tensor(list(itertools.product([False, True], repeat=g.num_gates)))


# ---- the objective ---------------------------------------------------------------------------------

def test_penalty_zero_under_budget_and_linear_above() -> None:
    cost = torch.tensor([0.0, 50.0, 100.0, 101.0, 150.0, 300.0], dtype=torch.float64)
    pen = hinge_penalty(cost, budget=100.0, lam=0.5)
    torch.testing.assert_close(pen, torch.tensor([0, 0, 0, 0.5, 25.0, 100.0], dtype=torch.float64))
    above = cost[3:]
    slopes = (pen[4:] - pen[3:-1]) / (above[1:] - above[:-1])
    torch.testing.assert_close(slopes, torch.full_like(slopes, 0.5))


def test_reinforce_matches_exact_gradient_on_enumerable_supernet() -> None:
    g = resnet_graph(MICRO_NET)  # 6 gates: 64 patterns
    table = cost_table(g)
    pats = _patterns(g)
    gen = torch.Generator().manual_seed(0)
    fake_ce = torch.rand(len(pats), generator=gen, dtype=torch.float64) * 2  # any per-pattern loss
    budget = full_cost(g, "macs") * 0.6
    lam = 1.0 / full_cost(g, "macs")
    rewards = -(fake_ce + hinge_penalty(table.cost("macs", g.active(pats)), budget, lam))
    logits = torch.tensor([0.5, 1.0, -0.5, 2.0, 0.0, -1.0], dtype=torch.float64)
    p = torch.sigmoid(logits)
    h = pats.double()
    prob = (h * p + (1 - h) * (1 - p)).prod(1)
    exact = ((prob * rewards)[:, None] * (h - p)).sum(0)  # grad of E[r] = sum_H P(H) r(H) dlogP(H)

    torch.manual_seed(1)
    n = 40000
    sample = torch.bernoulli(p.expand(n, -1))
    code = (sample.long() * (2 ** torch.arange(g.num_gates - 1, -1, -1))).sum(1)  # row index in `pats`
    r = rewards[code]
    lg = logits.clone().requires_grad_(True)
    reinforce_loss(lg, sample, r).backward()
    estimate = -lg.grad / n * n / (n - 1)  # the batch-mean baseline shrinks the estimate by (n-1)/n
    per_sample = (sample - p) * (r - r.mean())[:, None]
    stderr = per_sample.std(0) / n ** 0.5
    assert (exact.abs() > 10 * stderr).any(), "the toy problem must have a detectable gradient"
    assert ((estimate - exact).abs() < 4 * stderr + 1e-9).all(), (estimate, exact, stderr)


def test_lr_schedule_steps_after_the_official_epochs() -> None:
    """The official adjust_lr (0-based epochs, `epoch > 150`): 0.1 through epoch 150, 0.01 through 225."""
    cfg = BSNConfig()
    assert [lr_at(cfg, e) for e in (0, 150, 151, 225, 226, 299)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


# ---- connectivity and costs --------------------------------------------------------------------------

def test_disconnected_modules_cost_nothing() -> None:
    g = resnet_graph(MICRO_NET)
    keep = {"s0b0_block", "s0b0_skip", "s1b0_skip", "s2b0_skip"}
    # stage 0 block on but its whole stage-1 successor off: s0b0_* are dead, only the head/stem remain
    dead = {"s0b0_block", "s0b0_skip"}
    assert g.prune(dead) == []
    assert not g.connected(dead)
    costs = pattern_costs(g, keep)
    assert costs["macs"] == pytest.approx(count_macs(BSNNetwork(g, keep=g.prune(keep)), (3, 32, 32)))
    # a gated-on module past a gap is not charged
    with_gap = pattern_costs(g, {"s0b0_block", "s2b0_skip"})
    assert with_gap["macs"] == pytest.approx(cost_table(g).fixed["macs"])


@pytest.mark.parametrize("make,net", [(resnet_graph, MICRO_NET), (rescnf_graph, RESCNF_NET), (cnf_graph, CNF_NET)])
def test_sampled_costs_equal_counted_costs_of_the_pruned_network(make, net) -> None:
    g = make(net)
    rng = random.Random(0)
    checked = 0
    for _ in range(40):
        keep = [nm for nm in g.gate_names if rng.random() < 0.6]
        if not g.connected(keep):
            continue
        pruned = g.prune(keep)
        model = BSNNetwork(g, keep=pruned)
        costs = pattern_costs(g, keep)
        assert costs["macs"] == pytest.approx(count_macs(model, tuple(net["input"])))
        assert costs["paper"] == pytest.approx(count_paper_flops(model, tuple(net["input"])))
        assert costs["params"] == pytest.approx(count_params(model))
        checked += 1
        if checked == 4:
            break
    assert checked == 4, f"only {checked} connected patterns drawn: the test checked too little"


def test_full_b_resnet20_is_resnet20() -> None:
    from nas_common import get_arch

    g = resnet_graph({"depth": 20, "widths": [16, 32, 64], "num_classes": 10, "input": [3, 32, 32]})
    r20 = get_arch("resnet20").build()
    assert full_cost(g, "macs") == count_macs(r20, (3, 32, 32))
    assert full_cost(g, "params") == count_params(r20)


@pytest.mark.parametrize("make,net", [(resnet_graph, MICRO_NET),
                                      (cnf_graph, {**CNF_NET, "layers": 2, "input": [3, 4, 4]})])
def test_min_connected_cost_is_the_brute_force_minimum(make, net) -> None:
    g = make(net)
    pats = _patterns(g) if g.num_gates <= 14 else None
    if pats is None:
        pytest.skip("too many gates to enumerate")
    act = g.active(pats)
    ok = act[:, -1]
    table = cost_table(g)
    for name in ("macs", "paper", "params"):
        brute = table.cost(name, act[ok]).min().item()
        assert min_connected_cost(g, name) == pytest.approx(brute)
    assert min_connected_cost(g, "distributed") == pytest.approx(table.cost("distributed", act[ok], 2).min().item())


# ---- pruning ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,net", [(resnet_graph, MICRO_NET), (cnf_graph, CNF_NET)])
def test_pruned_network_equals_gated_supernetwork(make, net) -> None:
    torch.manual_seed(0)
    g = make(net)
    sup = BSNNetwork(g)
    for m in sup.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    sup.eval()
    rng = random.Random(3)
    found = []
    for _ in range(500):  # prefer a pattern with dead modules (B-CNF has them; B-ResNet cannot)
        keep = [nm for nm in g.gate_names if rng.random() < 0.6]
        if g.connected(keep):
            found.append(keep)
            if len(g.prune(keep)) < len(keep):
                break
    keep = found[-1]
    if make is cnf_graph:
        assert len(g.prune(keep)) < len(keep)
    pruned = g.prune(keep)
    derived = BSNNetwork(g, keep=pruned).eval()
    assert set(n.split(".")[1] for n, _ in derived.ops.named_parameters(prefix="ops")) <= set(pruned)
    derived.load_state_dict({k: v for k, v in sup.state_dict().items() if k in derived.state_dict()})
    x = torch.randn(3, *net["input"])
    gates = torch.tensor([[nm in set(keep) for nm in g.gate_names]]).expand(3, -1)
    with torch.no_grad():
        torch.testing.assert_close(derived(x), sup(x, active=g.active(gates)))


@pytest.mark.parametrize("mode", ["dense", "skip", "gather", "auto"])
def test_execution_modes_agree(mode) -> None:
    torch.manual_seed(0)
    g = cnf_graph(CNF_NET)
    ref = BSNNetwork(g, mode="dense").eval()
    net = BSNNetwork(g, mode=mode).eval()
    net.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 16, 16)
    gates = torch.rand(6, g.num_gates) < 0.6
    act = g.active(gates)
    with torch.no_grad():
        torch.testing.assert_close(net(x, active=act), ref(x, active=act))
        # and per example, each row equals that example's own pruned network
        for b in range(2):
            keep = [nm for nm, on in zip(g.gate_names, gates[b].tolist(), strict=False) if on]
            if not g.connected(keep):
                continue
            d = BSNNetwork(g, keep=g.prune(keep)).eval()
            d.load_state_dict({k: v for k, v in ref.state_dict().items() if k in d.state_dict()})
            torch.testing.assert_close(d(x[b:b + 1]), ref(x[b:b + 1], active=act[b:b + 1]))


def test_gather_trains_only_active_modules() -> None:
    g = resnet_graph(MICRO_NET)
    net = BSNNetwork(g, mode="gather").train()
    x = torch.randn(4, 3, 32, 32)
    gates = torch.ones(4, g.num_gates, dtype=torch.bool)
    gates[:, g.gate_names.index("s1b0_block")] = False
    net(x, active=g.active(gates)).sum().backward()
    assert net.ops["s1b0_block"][0].weight.grad is None
    assert net.ops["s2b0_block"][0].weight.grad is not None


# ---- distributed cost -------------------------------------------------------------------------------

def test_makespan_chain_is_sum_and_parallel_is_max() -> None:
    # chain 0 -> 1 -> 2 -> 3 with durations 0, 2, 1, 3
    chain = ((), (0,), (1,), (2,))
    steps = torch.tensor([0, 2, 1, 3])
    on = torch.ones(1, 4, dtype=torch.bool)
    assert makespan(on, chain, steps, k=4).item() == 6
    # input 0, three parallel branches 1, 2, 3 (durations 2, 5, 3), join 4 (duration 0)
    par = ((), (0,), (0,), (0,), (1, 2, 3))
    steps = torch.tensor([0, 2, 5, 3, 0])
    on = torch.ones(1, 5, dtype=torch.bool)
    assert makespan(on, par, steps, k=3).item() == 5
    assert makespan(on, par, steps, k=1).item() == 10
    assert makespan(on, par, steps, k=2).item() == 5  # 5 on one worker, 2 then 3 on the other
    off = on.clone()
    off[0, 2] = False  # the long branch switched off
    assert makespan(off, par, steps, k=3).item() == 3


def test_batched_makespan_matches_nas_common_schedule() -> None:
    """The vectorised schedule equals nas_common's reference list scheduler on each active subgraph."""
    ref = pytest.importorskip("nas_common.costs.distributed").makespan
    for g in (cnf_graph(CNF_NET), rescnf_graph(RESCNF_NET), resnet_graph({**MICRO_NET, "depth": 14})):
        _check_makespan_against(ref, g)


def _check_makespan_against(ref, g) -> None:  # noqa: ANN001
    table = cost_table(g)
    gen = torch.Generator().manual_seed(0)
    gates = torch.cat([torch.rand(24, g.num_gates, generator=gen) < p for p in (0.5, 0.7, 0.9)])
    act = g.active(gates)
    assert act[:, -1].sum() >= 20, "too few connected patterns to compare"
    for k in (1, 2, 3, 4):
        got = table.cost("distributed", act, k)
        for b in range(act.shape[0]):
            nodes = [i for i in range(len(g.nodes)) if act[b, i]]
            edges = [(j, i) for i in nodes for j in g.nodes[i].inputs if act[b, j]]
            want = ref(nodes, edges, {i: int(table.steps[i]) for i in nodes}, k) if nodes else 0
            assert got[b].item() == want, (k, b)


def test_distributed_cost_of_b_resnet() -> None:
    g = resnet_graph(MICRO_NET)
    # everything on: a chain of 3 blocks, each block parallel to its skip (projection in stages 1, 2)
    assert full_cost(g, "distributed", k=2) == 3
    assert full_cost(g, "distributed", k=1) == 5
    # skips only: 2 projections in a chain
    assert pattern_costs(g, {"s0b0_skip", "s1b0_skip", "s2b0_skip"}, k=2)["distributed"] == 2


# ---- budgets and derive ----------------------------------------------------------------------------

def _task(n: int = 64, budget: Budget | None = None) -> Task:
    return Task(dataset=get_dataset("cifar10-mini").subset(n, 16), budget=budget or Budget())


def test_impossible_budget_is_refused_up_front(tmp_path) -> None:
    from nas_common.search import run_search

    g = resnet_graph(MICRO_NET)
    floor = min_connected_cost(g, "macs")
    with pytest.raises(BudgetError, match="cheapest connected"):
        run_search("bsn", _task(budget=Budget(macs=floor * 0.9)), out=tmp_path / "r", preset="tiny",
                   overrides={"depth": 8, "widths": [4, 8, 8], "epochs": 1, "batch_size": 16, "val_size": 16},
                   progress=False)
    assert not (tmp_path / "r").exists(), "the refusal must come before the run directory is created"
    with pytest.raises(BudgetError, match="--budget distributed:2=2"):
        check_budgets(g, {"distributed": (1.0, 0.1)}, k=2)
    with pytest.raises(BudgetError, match="--budget bsn-paper="):
        check_budgets(g, {"paper": (floor * 0.9, 1e-7)}, k=2)
    check_budgets(g, {"macs": (floor, 1e-7)}, k=2)  # exactly the floor is feasible


def test_derive_thresholds_and_prunes() -> None:
    g = resnet_graph(MICRO_NET)
    names = g.gate_names
    probs = torch.full((len(names),), 0.9)
    probs[names.index("s1b0_block")] = 0.2  # off
    probs[names.index("s1b0_skip")] = 0.4   # off too: stages 0 cannot reach the output...
    probs[names.index("s0b0_block")] = 0.51
    res = SearchResult("bsn", state={"probs": probs, "logits": torch.logit(probs), "space": "bsn-resnet",
                                     "net": MICRO_NET, "threshold": 0.5, "distributed_k": 2})
    with pytest.warns(UserWarning, match="most probable path"):
        arch = BSNSearch().derive(res)
    assert "s1b0_skip" in arch.spec["keep"]  # ...so the most probable path (through the 0.4 skip) is kept
    probs[names.index("s1b0_skip")] = 0.6
    arch = BSNSearch().derive(res)
    assert arch.spec["keep"] == ["s0b0_block", "s0b0_skip", "s1b0_skip", "s2b0_block", "s2b0_skip"]
    model = arch.build()
    assert arch.costs["macs"] == pytest.approx(count_macs(model, (3, 32, 32)))
    assert most_probable_path(g, probs) == g.prune(most_probable_path(g, probs))


def test_spaces_registered_and_validated(tmp_path) -> None:
    assert "bsn-resnet" in SPACES and "bsn-cnf" in SPACES
    arch = Arch("bsn-cnf", {"keep": ["l0_s0to1z", "l1_s1to2", "l2_s2to3", "l2_s3to4z"]},
                {**CNF_NET, "input": [3, 16, 16]})
    out = arch.build()(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)
    again = load_arch(save_arch(arch, tmp_path / "a.json"))
    assert again == arch
    with pytest.raises(ArchFileError, match="unknown module"):
        Arch("bsn-resnet", {"keep": ["s9b9_block"]}, MICRO_NET).build()
    with pytest.raises(ArchFileError, match="do not connect"):
        Arch("bsn-resnet", {"keep": ["s0b0_block"]}, MICRO_NET).build()
    with pytest.raises(ArchFileError, match="6n\\+2"):
        Arch("bsn-resnet", {"keep": []}, {**MICRO_NET, "depth": 9}).build()
    spec = SPACES.get("bsn-resnet").random_spec(random.Random(0), MICRO_NET)
    assert Arch("bsn-resnet", spec, MICRO_NET).build() is not None


def test_search_shrinks_towards_budget_and_reports(tmp_path) -> None:
    from nas_common.search import run_search

    g = rescnf_graph(MICRO_RESCNF)
    budget = 0.7 * full_cost(g, "macs")
    result, arch = run_search("bsn", _task(budget=Budget(macs=budget)), out=tmp_path / "r", preset="tiny",
                              overrides=dict(TestBSNConformance.micro), progress=False)
    assert result.metrics["derived_macs"] == pytest.approx(arch.costs["macs"])
    assert arch.costs["macs"] <= budget
    assert result.model is not None and result.metrics["over_budget"] == []
    assert set(result.model.state_dict()) == set(arch.build().state_dict())
    from nas_common import load_model

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "r")(x), result.model.eval()(x))
    assert "macs" in result.state["budgets"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_distributed_budget_is_a_nas_common_budget(tmp_path) -> None:
    """`--budget distributed:K=STEPS` (a nas_common Budget) sets K and the limit; the found arch carries
    its makespan under the budget's key, equal to nas_common's `distributed:K` count of the built network."""
    from nas_common.costs import measure_cost
    from nas_common.search import run_search

    result, arch = run_search("bsn", _task(budget=Budget(limits={"distributed:1": 2.0})), out=tmp_path / "r",
                              preset="tiny", progress=False, overrides=TestBSNConformance.micro)
    assert result.state["budgets"] == {"distributed": 2.0} and result.state["distributed_k"] == 1
    steps = result.metrics["derived_distributed"]
    assert steps == arch.costs["distributed:1"] == measure_cost(arch.build(), "distributed:1", (3, 32, 32))
    over = [o for o in result.metrics["over_budget"] if o.startswith("distributed")]
    assert bool(over) == (steps > 2.0)  # an over-budget network is reported, never silently accepted
    assert load_arch(tmp_path / "r" / "arch.json").costs["distributed:1"] == steps


@pytest.mark.parametrize("make,net", [(resnet_graph, MICRO_NET), (rescnf_graph, RESCNF_NET), (cnf_graph, CNF_NET)])
def test_networks_describe_their_module_dag_for_the_distributed_cost(make, net) -> None:
    """nas_common's `distributed:K` cost of a built network (its `module_dag`) equals BSN's batched
    schedule of the same pattern, for derived networks and the full super network."""
    from nas_common.costs import measure_cost

    g = make(net)
    rng = random.Random(1)
    checked = 0
    for _ in range(40):
        keep = [nm for nm in g.gate_names if rng.random() < 0.7]
        if not g.connected(keep):
            continue
        model = BSNNetwork(g, keep=g.prune(keep))
        for k in (1, 2, 3):
            assert measure_cost(model, f"distributed:{k}", tuple(net["input"])) == pattern_costs(g, keep, k)[
                "distributed"], (keep, k)
        checked += 1
        if checked == 4:
            break
    assert checked == 4
    nodes, edges, steps = BSNNetwork(g).module_dag()
    assert len(nodes) == len(g.nodes) and set(steps) == set(nodes)
    assert measure_cost(BSNNetwork(g), "distributed:2", tuple(net["input"])) == full_cost(g, "distributed", 2)


def test_the_papers_flop_count_is_a_budget(tmp_path) -> None:
    """`--budget bsn-paper=FLOPS` limits the paper's count; the arch carries it as `bsn-paper`."""
    from nas_common.search import run_search

    g = rescnf_graph(MICRO_RESCNF)
    budget = 0.7 * full_cost(g, "paper")
    result, arch = run_search("bsn", _task(budget=Budget(limits={"bsn-paper": budget})), out=tmp_path / "r",
                              preset="tiny", progress=False,
                              overrides={**TestBSNConformance.micro, "lambda_paper": 2e-5})
    assert result.state["budgets"] == {"paper": budget}
    assert arch.costs["bsn-paper"] == pytest.approx(count_paper_flops(arch.build(), (3, 32, 32)))
    assert arch.costs["bsn-paper"] <= budget and result.metrics["over_budget"] == []


# ---- conformance --------------------------------------------------------------------------------

class TestBSNConformance(SearchMethodTests):
    method = "bsn"
    micro = {"depth": 8, "widths": [4, 8, 8], "epochs": 2, "batch_size": 16, "val_size": 16,
             "gate_lr": 2.0, "lambda_macs": 2e-5, "eval_batch_size": 64,
             "unbudgeted_cost": "none"}
    budget = Budget(macs=0.7 * 1_000_000)  # replaced below by 70% of the micro super network's MACs
    # `auto` reads the sampled pattern on the host by design on the CPU (free there); on an accelerator
    # it runs dense, which the no-host-sync test checks
    accelerator_micro = {"execution": "dense"}


TestBSNConformance.budget = Budget(macs=0.7 * full_cost(rescnf_graph(MICRO_RESCNF), "macs"))
