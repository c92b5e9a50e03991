"""bsn_nas: Budgeted Super Networks (Veniat & Denoyer, CVPR 2018) on nas_common.

A super network is a DAG of modules with a Bernoulli gate per module, sampled per example; the
weights learn by backprop and the gate distribution by REINFORCE on
E_H[CE + lambda * max(0, C(H) - budget)], with C the MACs, parameters or distributed makespan of the
modules that are on and connected (or the paper's FLOP count, additions included). Super networks:
ResCNF (the residual fabric), B-ResNet and B-CNF (spaces "bsn-rescnf", "bsn-resnet", "bsn-cnf").

    from nas_common import Budget, Task, get_dataset
    from nas_common.search import run_search
    result, arch = run_search("bsn", Task(get_dataset("cifar10-mini"), budget=Budget(macs=24.5e6)),
                              preset="tiny", out="runs/bsn")
"""
from importlib import metadata as _metadata

from .costs import (
    Schedule,
    cost_table,
    count_paper_flops,
    distributed_cost,
    hinge_penalty,
    makespan,
    min_connected_cost,
    pattern_costs,
)
from .graph import BSNNetwork, MaskedBatchNorm2d, Node, SuperGraph, cnf_graph, make_graph, rescnf_graph, resnet_graph
from .search import BSNConfig, BSNSearch, SearchStep, reinforce_loss
from .spaces import BSNCNFSpace, BSNResCNFSpace, BSNResNetSpace, graph_of

try:
    __version__ = _metadata.version("bsn-nas")
except _metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

__all__ = ["BSNCNFSpace", "BSNConfig", "BSNNetwork", "BSNResCNFSpace", "BSNResNetSpace", "BSNSearch",
           "MaskedBatchNorm2d", "Node", "Schedule", "SearchStep", "SuperGraph", "cnf_graph", "cost_table",
           "count_paper_flops", "distributed_cost", "graph_of", "hinge_penalty", "make_graph", "makespan",
           "min_connected_cost", "pattern_costs", "reinforce_loss", "rescnf_graph", "resnet_graph"]
