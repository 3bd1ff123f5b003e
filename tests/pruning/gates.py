"""Log-alphas for chosen keep probabilities, from the closed form of the hard-concrete distribution."""

from __future__ import annotations

import math

import torch


def log_alpha_keeping(probabilities) -> torch.Tensor:
    """Log-alphas whose gates are non-zero with these probabilities: P(z > 0) = sigmoid(log_alpha + (2/3) ln 11) for
    the stretch (-0.1, 1.1) and temperature 2/3 of Louizos et al."""
    p = torch.as_tensor(probabilities, dtype=torch.float64)
    return (torch.log(p) - torch.log1p(-p) - 2 / 3 * math.log(11)).float()
