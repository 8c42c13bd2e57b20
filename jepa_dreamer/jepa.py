"""The JEPA auxiliary loss: context masks, the EMA target branch, the predictor and the loss (DESIGN.md).

The online branch reuses the world model's encoder on a masked copy of the observations; the target branch is an
EMA copy of the encoder and of the projector, fed the clean observations. The predictor sees the projected context
and the RSSM's recurrent state h_t, so the loss also shapes the recurrent model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_RECTANGLES = 4


def _column_masks(n: int, height: int, width: int, erase_frac: float, device: torch.device) -> Tensor:
    """`n` masks of shape (height, width), each made of 1-4 non-overlapping rectangles.

    A random span of `s·width` columns (s uniform in [erase_frac, 1]) is cut into 1-4 segments; each segment holds
    one rectangle as wide as the segment and `round(erase_frac·height/s)` rows tall, at a random vertical offset.
    The rectangles never overlap, so the erased area is `erase_frac` of the image up to the rounding of the rows
    (at most half a row), whatever the number, widths and positions of the rectangles.
    """
    span = (torch.empty(n, 1, device=device).uniform_(erase_frac, 1.0) * width).round().clamp(1, width)
    rows = (erase_frac * height * width / span).round().clamp(max=height)
    left = (torch.rand(n, 1, device=device) * (width - span + 1)).floor()
    n_rect = torch.randint(1, MAX_RECTANGLES + 1, (n, 1), device=device)
    cuts = left + torch.sort(torch.rand(n, MAX_RECTANGLES - 1, device=device), dim=1).values * span
    # Cuts past the sample's number of rectangles move to the span's right end: their segments are empty
    unused = torch.arange(1, MAX_RECTANGLES, device=device)[None, :] >= n_rect
    cuts = torch.where(unused, left + span, cuts)
    columns = torch.arange(width, device=device, dtype=cuts.dtype)[None, :]
    inside = (columns >= left) & (columns < left + span)  # (n, width)
    segment = (columns[:, None, :] >= cuts[:, :, None]).sum(1)  # (n, width), values in [0, MAX_RECTANGLES)
    tops = (torch.rand(n, MAX_RECTANGLES, device=device) * (height - rows + 1)).floor()
    top = torch.gather(tops, 1, segment)[:, None, :]  # (n, 1, width)
    ys = torch.arange(height, device=device, dtype=top.dtype)[None, :, None]
    return (ys >= top) & (ys < top + rows[:, :, None]) & inside[:, None, :]


def erase_masks(shape: Sequence[int], height: int, width: int, erase_frac: float, device: torch.device) -> Tensor:
    """Boolean masks (True = erased) of shape (*shape, height, width), drawn independently per element of `shape`.

    Half of the masks cut the columns and half the rows (the transposed construction), so the rectangles lie in
    both orientations. The erased area is `erase_frac` of the image within half a row (or column) of pixels.
    """
    n = int(math.prod(shape))
    if erase_frac <= 0:
        return torch.zeros(*shape, height, width, dtype=torch.bool, device=device)
    by_columns = _column_masks(n, height, width, erase_frac, device)
    by_rows = _column_masks(n, width, height, erase_frac, device).transpose(-1, -2)
    transpose = torch.rand(n, 1, 1, device=device) < 0.5
    return torch.where(transpose, by_rows, by_columns).view(*shape, height, width)


def context_view(
    obs: dict[str, Tensor], cnn_keys: Sequence[str], mlp_keys: Sequence[str], erase_frac: float, vec_dropout: float
) -> dict[str, Tensor]:
    """The masked context x~ of normalised observations of shape (T, B, ...): every image loses `erase_frac` of its
    area (erased pixels = 0, every channel), every vector entry is zeroed with probability `vec_dropout`. Vectors are
    zeroed without the 1/(1-p) rescaling of `F.dropout`: like erased pixels, a dropped entry reads as absent."""
    view = {}
    for k in cnn_keys:
        x = obs[k]
        masks = erase_masks(x.shape[:2], x.shape[-2], x.shape[-1], erase_frac, x.device)
        view[k] = x.masked_fill(masks.unsqueeze(2), 0.0)
    for k in mlp_keys:
        x = obs[k]
        view[k] = x * (torch.rand_like(x) >= vec_dropout).to(x.dtype)
    return view


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear → LayerNorm → SiLU → Linear: the shape of both the projector and the predictor."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class JEPAHeads(nn.Module):
    """The learnable JEPA parts (projector, predictor) and the EMA target branch (encoder and projector copies).

    The EMA copies are registered submodules so that `state_dict` checkpoints them, but they take no gradient and are
    changed only by `update_ema`.
    """

    def __init__(self, encoder: nn.Module, embed_dim: int, recurrent_size: int, hidden: int, proj_dim: int) -> None:
        super().__init__()
        self.proj_dim = proj_dim
        self.projector = mlp_head(embed_dim, hidden, proj_dim)
        self.predictor = mlp_head(proj_dim + recurrent_size, hidden, proj_dim)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def online_parameters(self) -> list[nn.Parameter]:
        """What the world-model optimiser updates besides the world model."""
        return [*self.projector.parameters(), *self.predictor.parameters()]

    @torch.no_grad()
    def update_ema(self, encoder: nn.Module, decay: float) -> None:
        """θ_ema ← decay·θ_ema + (1 − decay)·θ for the encoder and the projector, as one fused kernel per group."""
        pairs: list[tuple[nn.Module, nn.Module]] = [
            (self.target_encoder, encoder),
            (self.target_projector, self.projector),
        ]
        for target, online in pairs:
            targets = list(target.parameters())
            onlines = list(online.parameters())
            torch._foreach_lerp_(targets, onlines, 1.0 - decay)
            for tb, ob in zip(target.buffers(), online.buffers()):
                tb.copy_(ob)


def jepa_loss(
    encoder: nn.Module,
    heads: JEPAHeads,
    obs: dict[str, Tensor],
    recurrent_states: Tensor,
    *,
    cnn_keys: Sequence[str],
    mlp_keys: Sequence[str],
    erase_frac: float,
    vec_dropout: float,
    metrics: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L_jepa = mean over (t, b) of √proj_dim · (2 − 2·cos(p_t, z*_t)) (DESIGN.md explains the √proj_dim scale).

    Args:
        encoder: the world model's (online) encoder.
        obs: the normalised clean observations, shape (T, B, ...).
        recurrent_states: h_t from the posterior unroll on the clean observations, shape (T, B, R); not detached, so
            the loss also trains the recurrent model.
        metrics: whether to compute the metrics beyond the loss (not when nothing is logged, e.g. search trials).

    Returns:
        The loss and its metrics (cosine similarity, the std of the normalised targets across the batch).
    """
    context = context_view(obs, cnn_keys, mlp_keys, erase_frac, vec_dropout)
    z_context = heads.projector(encoder(context))
    prediction = heads.predictor(torch.cat((z_context, recurrent_states), -1))
    with torch.no_grad():
        target = heads.target_projector(heads.target_encoder(obs))
    cos = F.cosine_similarity(prediction.float(), target.float(), dim=-1)
    loss = math.sqrt(heads.proj_dim) * (2.0 - 2.0 * cos).mean()
    if not metrics:
        return loss, {"Loss/jepa_loss": loss.detach()}
    normed_target = F.normalize(target.float().flatten(0, 1), dim=-1)
    return loss, {
        "Loss/jepa_loss": loss.detach(),
        "JEPA/cosine": cos.mean().detach(),
        # Collapse alarm: near 0 when every target points the same way (healthy: about 1/sqrt(proj_dim))
        "JEPA/target_std": normed_target.std(dim=0).mean().detach(),
    }
