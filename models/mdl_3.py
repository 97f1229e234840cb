"""mdl_3 (docs/solution.md §6): per-channel mel, three views, left channels first -> mixnet_l with a fresh stem -> GeM -> 6.

The views are formed on the dB mel of each bipolar channel (docs/solution.md lists them after the mel): the
channel, minus the mean of the other 15, minus the mean of its two partner channels. Channel dropout
then zeroes all three views of a dropped channel.
"""
from __future__ import annotations

import torch

from models import mdl_1

# partner pairs by bipolar channel index (docs/solution.md §6)
PARTNERS = [(2, 8), (3, 9), (4, 0), (5, 1), (6, 2), (7, 3), (14, 4), (15, 5),
            (10, 0), (11, 1), (12, 8), (13, 9), (14, 10), (15, 11), (6, 12), (7, 13)]
LEFT_FIRST = list(range(0, 16, 2)) + list(range(1, 16, 2))  # even = left hemisphere


def three_views(spec: torch.Tensor, partners: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 16, F, T) -> (B, 16, 3, F, T): channel, minus mean of the others, minus mean of its partners.

    `partners` (2, 16) long on spec's device: the model passes its buffer so that a forward copies
    nothing from the host; None builds it from PARTNERS (tests, one-off use)."""
    n = spec.shape[1]
    others = (spec.sum(dim=1, keepdim=True) - spec) / (n - 1)
    if partners is None:
        partners = torch.tensor(PARTNERS, device=spec.device).T
    pair_mean = 0.5 * (spec[:, partners[0]] + spec[:, partners[1]])
    return torch.stack([spec, spec - others, spec - pair_mean], dim=2)


class Net(mdl_1.Net):
    fresh_stem = True
    reorder = True  # mdl_4 keeps the montage order

    def __init__(self, cfg):
        super().__init__(cfg)
        # index tensors live on the model's device (no host-to-device copy per forward), out of the state dict
        self.register_buffer("left_first", torch.tensor(LEFT_FIRST), persistent=False)
        self.register_buffer("partners", torch.tensor(PARTNERS).T.contiguous(), persistent=False)

    def make_image(self, batch: dict) -> torch.Tensor:
        """(B, 3, 16 * mels, frames): the three views as image channels, montage channels stacked."""
        views = three_views(self.spectrogram(batch), self.partners)  # (B, 16, 3, F, T)
        if self.reorder:
            views = views[:, self.left_first]
        views = self.channel_dropout(views)
        b, c, v, f, t = views.shape
        return views.permute(0, 2, 1, 3, 4).reshape(b, v, c * f, t)
