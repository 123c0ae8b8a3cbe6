"""A user's networks for the tests of the ``user`` network kind: a conv encoder to 12
features, a decoder to ``out_shape`` (read as text and written where a test needs it)."""

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, event_shape, width=4, features=12):
        super().__init__()
        c, h, w = event_shape
        self.conv = nn.Conv2d(c, width, 3, padding=1)
        self.out = nn.Linear(width * h * w, features)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x)).flatten(1))


class Decoder(nn.Module):
    def __init__(self, in_features, out_shape, width=4):
        super().__init__()
        c, h, w = out_shape
        self.seed = (width, h, w)
        self.lin = nn.Linear(in_features, width * h * w)
        self.conv = nn.Conv2d(width, c, 3, padding=1)

    def forward(self, v):
        return self.conv(torch.relu(self.lin(v)).view(-1, *self.seed))
