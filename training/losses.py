"""Focal Tversky loss: Tversky index with false negatives weighted by alpha, raised to gamma."""

from __future__ import annotations

import torch
from torch import nn


class FocalTverskyLoss(nn.Module):
    """``(1 - TI) ** gamma`` with ``TI = (TP + s) / (TP + alpha FN + beta FP + s)``.

    ``prediction`` holds logits (``sigmoid=True``, the default) or probabilities;
    TP, FN and FP are summed over the whole batch, as in the method's training.
    """

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, gamma: float = 0.75,
                 smooth: float = 1.0, sigmoid: bool = True) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f'Arguments "alpha" and "beta" must be >= 0, got {alpha}, {beta}')
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.smooth, self.sigmoid = smooth, sigmoid

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probability = torch.sigmoid(prediction) if self.sigmoid else prediction
        probability, target = probability.reshape(-1), target.reshape(-1).to(probability.dtype)
        true_positive = (probability * target).sum()
        false_negative = ((1 - probability) * target).sum()
        false_positive = (probability * (1 - target)).sum()
        tversky = (true_positive + self.smooth) / (
            true_positive + self.alpha * false_negative + self.beta * false_positive + self.smooth)
        return (1 - tversky).clamp(min=0) ** self.gamma
