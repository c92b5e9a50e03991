"""NAT's policies pi(alpha | beta; theta): per-edge logits over keep/skip/null, a softmax per edge.

`POLICIES` holds them by name (config `policy_type`); all share `TransformPolicy`'s sampling, masking,
log-probability and entropy, so the search loop is the same for each:

* `gcn` (the paper's NAT): a two-layer GCN over the cell graph. Node features, as in the paper and the
  official code: an input node gets a learned embedding of its slot (c_{k-2} or c_{k-1});
  intermediate node t gets the concatenation of the op embeddings of its two incoming edges (in
  genotype order); both are projected linearly to `features` dimensions. Our graph convolution is the
  paper-style one (Kipf & Welling), H' = A_hat H W + b with the symmetrically normalised adjacency
  A_hat = D^-1/2 (A + A^T + I) D^-1/2 of the cell graph taken as undirected, with self-loops; two
  layers with ReLU between, no activation after the second:

      Z = A_hat ReLU(A_hat X W0) W1,   logits_t = Z_t W_fc  (node t -> 2 edges x 3 actions)

  The official code uses the raw directed adjacency without self-loops or normalisation, so a node's
  logits never see the ops on its own edges. Each row of Z depends only on the node's features and the
  graph, so the policy is equivariant to any relabelling of the nodes (tested).
* `lstm` (the paper's LSTM baseline): the cell read as a sequence of edges (op embedding + source-node
  embedding per edge, genotype order) by a one-layer bidirectional LSTM (hidden `hidden`), a linear
  head per edge. Bidirectional so that each edge's decision, like the GCN's, sees the whole cell.
* `random` (the paper's random search): no parameters, uniform over each edge's allowed actions.

The Maximum-GCN baseline is the `gcn` policy with `greedy=True` (the most probable action per edge).

One policy serves normal and reduction cells (as in the official code), run on both at once as a
batch. Masked actions get logit -inf: their probability is exactly 0, they are never sampled, and they
add nothing to the entropy. Sampling is Gumbel-max on the device (`torch.multinomial` would sync with
the host).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from nas_common.registry import Registry

from .cells import Cell, adjacency_from_inputs, canonical_op
from .transitions import ACTIONS


def normalized_adjacency(adj: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (A + A^T + I) D^-1/2 for a batch of (N, N) directed adjacencies (edge counts)."""
    eye = torch.eye(adj.shape[-1], dtype=adj.dtype, device=adj.device)
    a = adj + adj.transpose(-1, -2) + eye
    d = a.sum(-1).rsqrt()
    return d.unsqueeze(-1) * a * d.unsqueeze(-2)


class GraphConvolution(nn.Module):
    """One GCN layer: A_hat @ H @ W + b (A_hat given, batched)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor, a_hat: torch.Tensor) -> torch.Tensor:
        w = x @ self.linear.weight.t()
        return a_hat @ w + self.linear.bias


class GCN(nn.Module):
    """Two graph convolutions with a ReLU between (dropout p as in the official code, 0 by default)."""

    def __init__(self, features: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.gc1 = GraphConvolution(features, hidden)
        self.gc2 = GraphConvolution(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """x (B, N, F), adj (B, N, N) raw edge counts -> (B, N, hidden)."""
        a_hat = normalized_adjacency(adj)
        h = self.dropout(torch.relu(self.gc1(x, a_hat)))
        return self.gc2(h, a_hat)


@dataclass
class PolicyOutput:
    """One sampled (or most probable) transformation per cell of the batch."""

    actions: torch.Tensor  # (B, E) long, indices into ACTIONS
    log_prob: torch.Tensor  # (B,) sum over edges of log pi(action)
    entropy: torch.Tensor  # (B,) sum over edges of the per-edge entropy
    probs: torch.Tensor  # (B, E, 3), masked entries exactly 0


class TransformPolicy(nn.Module):
    """pi(alpha | beta) over op vocabulary `ops` (every op a cell may hold, null included).

    Subclasses implement `logits(ops, inputs)`: (B, E, 3) unmasked logits from the op indices and the
    source nodes of each edge, both (B, E). Everything else (masking, sampling, log-probabilities) is
    shared.
    """

    #: False for a policy without parameters (nothing to train)
    trainable: ClassVar[bool] = True

    def __init__(self, ops: Sequence[str]) -> None:
        super().__init__()
        self.ops = [canonical_op(o) for o in ops]
        self.op_index = {op: i for i, op in enumerate(self.ops)}
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # device of a parameter-free policy

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def logits(self, ops: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, cells: Sequence[Cell]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, E) op indices and (B, E) source nodes of cells with the same number of nodes."""
        try:
            ops = torch.tensor([[self.op_index[canonical_op(o)] for o in c.ops] for c in cells])
        except KeyError as e:
            raise ValueError(f"op {e.args[0]!r} is not in the policy's vocabulary {self.ops}") from None
        inputs = torch.tensor([list(c.inputs) for c in cells])
        return ops.to(self.device), inputs.to(self.device)

    def masked_logits(self, ops: torch.Tensor, inputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.logits(ops, inputs).masked_fill(~masks, float("-inf"))

    def act(self, ops: torch.Tensor, inputs: torch.Tensor, masks: torch.Tensor,
            generator: torch.Generator | None = None, greedy: bool = False,
            agree: Callable[[torch.Tensor], torch.Tensor] | None = None) -> PolicyOutput:
        """Sample (Gumbel-max) or take the argmax of one action per edge, all on the tensors' device.

        `agree(actions)` may replace the drawn actions before their log-probabilities are taken (the
        data-parallel search passes rank 0's, broadcast on the device)."""
        logits = self.masked_logits(ops, inputs, masks)
        logp = torch.log_softmax(logits, dim=-1)
        if greedy:
            actions = logits.argmax(-1)
        else:
            u = torch.rand(logits.shape, generator=generator, device=logits.device)
            gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
            actions = (logits.detach() + gumbel).argmax(-1)
        if agree is not None:
            actions = agree(actions)
        log_prob = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1).sum(-1)
        probs = logp.exp()
        # masked entries: p = 0 and log p = -inf; zero log p there first, or 0 * -inf poisons the gradient
        entropy = -(probs * logp.masked_fill(~masks, 0.0)).sum((-1, -2))
        return PolicyOutput(actions, log_prob, entropy, probs)

    def distribution(self, cells: Sequence[Cell], masks: torch.Tensor) -> torch.Tensor:
        """(B, E, 3) action probabilities; `masks` (B, E, 3) bool, False entries get probability 0."""
        ops, inputs = self.encode(cells)
        return torch.softmax(self.masked_logits(ops, inputs, masks.to(self.device)), dim=-1)

    def forward(self, cells: Sequence[Cell], masks: torch.Tensor, generator: torch.Generator | None = None,
                greedy: bool = False) -> PolicyOutput:
        """Sample (or take the argmax of) one action per edge for each cell."""
        ops, inputs = self.encode(cells)
        return self.act(ops, inputs, masks.to(self.device), generator, greedy)


class NATPolicy(TransformPolicy):
    """The paper's GCN policy (see the module docstring)."""

    def __init__(self, ops: Sequence[str], embed: int = 100, features: int = 1024, hidden: int = 100,
                 dropout: float = 0.0) -> None:
        super().__init__(ops)
        self.op_embed = nn.Embedding(len(self.ops), embed)
        self.input_embed = nn.Embedding(2, 2 * embed)
        self.project = nn.Linear(2 * embed, features)
        self.gcn = GCN(features, hidden, dropout)
        self.head = nn.Linear(hidden, 2 * len(ACTIONS))

    def logits(self, ops: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        adj = adjacency_from_inputs(inputs)
        b, e = ops.shape
        inter = self.op_embed(ops).reshape(b, e // 2, -1)  # node t: [emb(op_2t), emb(op_2t+1)]
        inputs = self.input_embed.weight.unsqueeze(0).expand(b, -1, -1)
        x = self.project(torch.cat([inputs, inter], dim=1))
        z = self.gcn(x, adj)[:, 2:]  # intermediate nodes only
        return self.head(z).reshape(b, e, len(ACTIONS))


class LSTMPolicy(TransformPolicy):
    """The paper's LSTM baseline (see the module docstring)."""

    def __init__(self, ops: Sequence[str], embed: int = 100, hidden: int = 100, dropout: float = 0.0,
                 max_nodes: int = 16) -> None:
        super().__init__(ops)
        self.op_embed = nn.Embedding(len(self.ops), embed)
        self.source_embed = nn.Embedding(max_nodes, embed)
        self.lstm = nn.LSTM(2 * embed, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, len(ACTIONS))

    def logits(self, ops: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.op_embed(ops), self.source_embed(inputs)], dim=-1)
        h, _ = self.lstm(self.dropout(x))
        return self.head(h)


class RandomPolicy(TransformPolicy):
    """The paper's random search: uniform over each edge's allowed actions, nothing to learn."""

    trainable: ClassVar[bool] = False

    def logits(self, ops: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ops.shape, len(ACTIONS), device=ops.device)


#: (vocab, embed, features, hidden, dropout, max_nodes) -> policy
PolicyFactory = Callable[[Sequence[str], int, int, int, float, int], TransformPolicy]
POLICIES: Registry[PolicyFactory] = Registry("NAT policy")
POLICIES.register("gcn", lambda ops, embed, features, hidden, dropout, nodes: NATPolicy(
    ops, embed, features, hidden, dropout))
POLICIES.register("lstm", lambda ops, embed, features, hidden, dropout, nodes: LSTMPolicy(
    ops, embed, hidden, dropout, max_nodes=nodes))
POLICIES.register("random", lambda ops, embed, features, hidden, dropout, nodes: RandomPolicy(ops))


def build_policy(name: str, ops: Sequence[str], embed: int = 100, features: int = 1024, hidden: int = 100,
                 dropout: float = 0.0, nodes: int = 16) -> TransformPolicy:
    """The policy registered as `name` (gcn, lstm, random) over op vocabulary `ops`."""
    return POLICIES.get(name)(ops, embed, features, hidden, dropout, nodes)
