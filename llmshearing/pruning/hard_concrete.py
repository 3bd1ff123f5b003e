"""Hard-concrete (L0) gates (Louizos et al., 2018): pure tensor code.

A gate with parameter ``log_alpha`` draws ``z = clamp(sigmoid((logit(u) + log_alpha) / T) * (r - l) + l, 0, 1)``
with ``u ~ U(0, 1)``, stretched to ``(l, r) = (-0.1, 1.1)`` and temperature ``T = 2/3``, so that exact zeros
and ones have non-zero probability while ``log_alpha`` still receives gradients.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LIMIT_LEFT = -0.1
LIMIT_RIGHT = 1.1
TEMPERATURE = 2.0 / 3.0
EPSILON = 1e-6
LOG_ALPHA_MIN = math.log(1e-2)
LOG_ALPHA_MAX = math.log(1e2)
# Where the original LLM-Shearing code starts every gate (its ``Mask.param_init_fn`` sets log-alpha 5 whatever drop
# rate it is given), and so where the released Sheared-LLaMA runs started: the clamp holds it at ``LOG_ALPHA_MAX``,
# a keep probability of 0.998.
ALL_KEPT_LOG_ALPHA = 5.0
# Sharpens the deterministic score so that kept gates carry scales close to (but not only) 0 or 1.
DETERMINISTIC_SHARPNESS = 0.8


def sample_hard_concrete(log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One differentiable sample of the gates, with values in [0, 1] and exact zeros."""
    u = torch.empty_like(log_alpha).uniform_(EPSILON, 1.0 - EPSILON, generator=generator)
    soft = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / TEMPERATURE)
    return (soft * (LIMIT_RIGHT - LIMIT_LEFT) + LIMIT_LEFT).clamp(0.0, 1.0)


def keep_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z > 0) for each gate: differentiable in ``log_alpha``."""
    return torch.sigmoid(log_alpha - TEMPERATURE * math.log(-LIMIT_LEFT / LIMIT_RIGHT))


def deterministic_gates(log_alpha: torch.Tensor, num_kept: int | torch.Tensor) -> torch.Tensor:
    """Keep the ``num_kept`` highest-scoring gates of every group (the last dimension), zero the rest.

    ``num_kept`` is one count for every group, or a tensor of counts of shape ``log_alpha.shape[:-1]``.
    Kept gates carry their score ``sigmoid(0.8 * log_alpha / T)``, a real value in (0, 1), which is what
    the masked model computes with and what physical pruning folds into the weights.
    """
    score = torch.sigmoid(log_alpha / TEMPERATURE * DETERMINISTIC_SHARPNESS)
    if isinstance(num_kept, int):
        kept_index = score.topk(num_kept, dim=-1).indices
        return score * torch.zeros_like(score).scatter_(-1, kept_index, 1.0)
    # rank[..., i]: how many gates of the group score above gate i (ties go to the lower index, as topk's do).
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order)
    )
    return score * (rank < num_kept.unsqueeze(-1))


def log_alpha_of_droprate(droprate: float) -> float:
    """The log-alpha whose gate is closed with probability ``droprate`` before stretching: ``log((1 - p) / p)``."""
    return math.log(1.0 - droprate) - math.log(droprate)


def init_log_alpha(shape: tuple[int, ...], mean: float) -> torch.Tensor:
    """Initial ``log_alpha``: ``mean`` plus a little noise to break ties, clamped to the allowed range."""
    return torch.empty(shape).normal_(mean, 1e-2).clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


def log_alpha_from_scores(scores: torch.Tensor, num_kept: int, scale: float) -> torch.Tensor:
    """Log-alphas in the order of ``scores`` along the last dimension, positive exactly for the ``num_kept`` highest.

    The gate of rank ``k`` (0: the highest score; ties go to the lower index) of ``n`` gets
    ``scale * (num_kept - 0.5 - k) / n``, clamped to the allowed range: the deterministic masks keep the top
    ``num_kept``, and gates ranked far above (below) the cut start near 1 (0) in every sample.
    """
    size = scores.shape[-1]
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(size, device=scores.device).expand_as(order))
    return (scale * (num_kept - 0.5 - ranks.float()) / size).clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


class HardConcreteMask(nn.Module):
    """A tensor of hard-concrete gates whose last dimension is one group.

    ``num_kept`` gates survive in every group: e.g. shape ``(layers, heads)`` with ``num_kept = 20``
    keeps 20 heads in every layer. ``num_kept=None`` (an overall-sparsity target) keeps, in every group,
    the number of gates that the group keeps in expectation.
    """

    def __init__(self, shape: tuple[int, ...], num_kept: int | None, droprate_init: float = 0.5):
        super().__init__()
        if not 0.0 < droprate_init < 1.0:
            raise ValueError(f'droprate_init must be in (0, 1), got {droprate_init}')
        self.shape = tuple(shape)
        self.num_kept = num_kept
        self.droprate_init = droprate_init
        self.log_alpha = nn.Parameter(init_log_alpha(self.shape, log_alpha_of_droprate(droprate_init)))

    @property
    def group_size(self) -> int:
        return self.shape[-1]

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(init_log_alpha(self.shape, log_alpha_of_droprate(self.droprate_init)))

    @torch.no_grad()
    def init_all_kept(self) -> None:
        """Start every gate where the original code starts it: log-alpha 5, clamped to ``LOG_ALPHA_MAX``."""
        self.log_alpha.copy_(init_log_alpha(self.shape, ALL_KEPT_LOG_ALPHA))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_hard_concrete(self.log_alpha, generator)

    def keep_probability(self) -> torch.Tensor:
        return keep_probability(self.log_alpha)

    def expected_sparsity(self) -> torch.Tensor:
        """The expected fraction of zero gates in each group, shape ``shape[:-1]`` (a scalar for a 1-D mask):
        differentiable."""
        return 1.0 - self.keep_probability().mean(-1)

    def expected_num_kept(self) -> int:
        """Gates a group keeps in expectation, averaged over the groups and rounded, at least one: the one count
        that a model with the same size in every layer can keep."""
        mean_kept = self.keep_probability().detach().sum(-1).mean().item()
        return max(1, min(self.group_size, round(mean_kept)))

    def expected_num_kept_per_group(self) -> torch.Tensor:
        """Gates each group keeps in expectation, rounded half to even (none, if fewer than half a gate is expected):
        shape ``shape[:-1]``."""
        return self.keep_probability().detach().sum(-1).round().long()

    def final_num_kept(self) -> int:
        """Gates a group keeps once the masks are made hard."""
        return self.num_kept if self.num_kept is not None else self.expected_num_kept()

    def deterministic(self, num_kept: int | torch.Tensor | None = None) -> torch.Tensor:
        """The top gates of every group (``num_kept`` of them, one count or one per group; by default the final
        count) with their real-valued scales."""
        return deterministic_gates(self.log_alpha, self.final_num_kept() if num_kept is None else num_kept)

    @torch.no_grad()
    def constrain_parameters(self) -> None:
        self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def extra_repr(self) -> str:
        return f'shape={self.shape}, num_kept={self.num_kept}'
