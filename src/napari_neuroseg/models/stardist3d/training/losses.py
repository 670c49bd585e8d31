"""The StarDist losses (as in ``stardist.models.base``): binary cross-entropy on the object
probability, and on the distances the MAE weighted by the true probability (``masked_loss_mae``
with ``norm_by_mask``) plus a small penalty on background distances (``train_background_reg``);
combined with ``train_loss_weights`` (1, 0.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dist_loss", "prob_loss", "stardist_loss"]

_EPS = 1e-7  # keras.backend.epsilon()


def prob_loss(prob_pred: torch.Tensor, prob_true: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy between predicted and target probabilities (N,1,Z,Y,X)."""
    return F.binary_cross_entropy(prob_pred.clamp(_EPS, 1 - _EPS), prob_true)


def dist_loss(
    dist_pred: torch.Tensor, dist_true: torch.Tensor, mask: torch.Tensor, background_reg: float = 1e-4
) -> torch.Tensor:
    """``mean(mask · |d_true − d_pred|) / (mean(mask) + eps) + background_reg · mean((1 − mask) ·
    |d_pred|)`` with the mean over rays first; ``mask`` is the target probability (N,1,Z,Y,X)."""
    actual = (mask * (dist_true - dist_pred).abs()).mean(dim=1, keepdim=True)
    loss = actual.mean() / (mask.mean() + _EPS)
    if background_reg > 0:
        loss = loss + background_reg * ((1 - mask) * dist_pred.abs()).mean()
    return loss


def stardist_loss(
    prob_pred: torch.Tensor,
    dist_pred: torch.Tensor,
    prob_true: torch.Tensor,
    dist_true: torch.Tensor,
    weights: tuple[float, float] = (1.0, 0.2),
    background_reg: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss ``w0 · prob_loss + w1 · dist_loss`` and its parts (as floats)."""
    lp = prob_loss(prob_pred, prob_true)
    ld = dist_loss(dist_pred, dist_true, prob_true, background_reg)
    total = weights[0] * lp + weights[1] * ld
    return total, {"loss": float(total.detach()), "prob_loss": float(lp.detach()), "dist_loss": float(ld.detach())}
