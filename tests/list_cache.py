"""The smallest object that meets the attention's KV-cache protocol, shared by the model tests."""

import torch


class ListCache:
    """Per-layer key/value tensors grown by concatenation; `pos` is advanced by the caller."""

    def __init__(self):
        self.pos = 0
        self.kv = {}

    def update(self, layer, k, v):
        if layer in self.kv:
            k = torch.cat([self.kv[layer][0], k], dim=2)
            v = torch.cat([self.kv[layer][1], v], dim=2)
        self.kv[layer] = (k, v)
        return k, v
