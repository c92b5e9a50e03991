"""NAT's policy pi(alpha | beta; theta): a two-layer GCN over the cell graph, a softmax per edge.

Node features (as in the paper and the official code): an input node gets a learned embedding of its
slot (c_{k-2} or c_{k-1}); intermediate node t gets the concatenation of the op embeddings of its two
incoming edges (in genotype order). Both are projected linearly to `features` dimensions.

GCN: our paper-style graph convolution (Kipf & Welling), H' = A_hat H W + b with the symmetrically
normalised adjacency A_hat = D^-1/2 (A + A^T + I) D^-1/2 of the cell graph taken as undirected, with
self-loops; two layers with ReLU between, no activation after the second:

    Z = A_hat ReLU(A_hat X W0) W1,   logits_t = Z_t W_fc  (node t -> 2 edges x 3 actions)

The official code uses the raw directed adjacency without self-loops or normalisation, so a node's
logits never see the ops on its own edges; the paper's formula has the normalised A with self-loops,
which we follow. Each row of Z depends only on the node's features and the graph, so the policy is
equivariant to any relabelling of the nodes (tested). One policy is shared by normal and reduction
cells (as in the official code), run on both at once as a batch of graphs.

Masked actions get logit -inf: their probability is exactly 0, they are never sampled, and they add
nothing to the entropy.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .cells import Cell, canonical_op
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
    """One sampled transformation per cell of the batch."""

    actions: torch.Tensor  # (B, E) long, indices into ACTIONS
    log_prob: torch.Tensor  # (B,) sum over edges of log pi(action)
    entropy: torch.Tensor  # (B,) sum over edges of the per-edge entropy
    probs: torch.Tensor  # (B, E, 3), masked entries exactly 0


class NATPolicy(nn.Module):
    """pi(alpha | beta): op vocabulary `ops` (every op a cell may hold, null included)."""

    def __init__(self, ops: Sequence[str], embed: int = 100, features: int = 1024, hidden: int = 100,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.ops = [canonical_op(o) for o in ops]
        self.op_index = {op: i for i, op in enumerate(self.ops)}
        self.op_embed = nn.Embedding(len(self.ops), embed)
        self.input_embed = nn.Embedding(2, 2 * embed)
        self.project = nn.Linear(2 * embed, features)
        self.gcn = GCN(features, hidden, dropout)
        self.head = nn.Linear(hidden, 2 * len(ACTIONS))

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def encode(self, cells: Sequence[Cell]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, E) op indices and (B, N, N) adjacencies of cells with the same number of nodes."""
        try:
            ops = torch.tensor([[self.op_index[canonical_op(o)] for o in c.ops] for c in cells],
                               device=self.device)
        except KeyError as e:
            raise ValueError(f"op {e.args[0]!r} is not in the policy's vocabulary {self.ops}") from None
        adj = torch.stack([c.adjacency() for c in cells]).to(self.device)
        return ops, adj

    def logits(self, ops: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """(B, E, 3) unmasked logits from op indices (B, E) and adjacency (B, n+2, n+2)."""
        b, e = ops.shape
        inter = self.op_embed(ops).reshape(b, e // 2, -1)  # node t: [emb(op_2t), emb(op_2t+1)]
        inputs = self.input_embed.weight.unsqueeze(0).expand(b, -1, -1)
        x = self.project(torch.cat([inputs, inter], dim=1))
        z = self.gcn(x, adj)[:, 2:]  # intermediate nodes only
        return self.head(z).reshape(b, e, len(ACTIONS))

    def distribution(self, cells: Sequence[Cell], masks: torch.Tensor) -> torch.Tensor:
        """(B, E, 3) action probabilities; `masks` (B, E, 3) bool, False entries get probability 0."""
        ops, adj = self.encode(cells)
        logits = self.logits(ops, adj).masked_fill(~masks.to(self.device), float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(self, cells: Sequence[Cell], masks: torch.Tensor, generator: torch.Generator | None = None,
                greedy: bool = False) -> PolicyOutput:
        """Sample (or take the argmax of) one action per edge for each cell."""
        probs = self.distribution(cells, masks)
        b, e, k = probs.shape
        flat = probs.reshape(b * e, k)
        actions = flat.argmax(-1) if greedy else torch.multinomial(flat.detach(), 1, generator=generator).squeeze(-1)
        actions = actions.reshape(b, e)
        chosen = probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        log_prob = chosen.log().sum(-1)
        plogp = torch.where(probs > 0, probs * probs.clamp_min(1e-30).log(), torch.zeros_like(probs))
        entropy = -plogp.sum((-1, -2))
        return PolicyOutput(actions, log_prob, entropy, probs)
