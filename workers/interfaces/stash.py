"""Weight stashing for the synthesizer: each prediction keeps the weights that made it, copied only when needed.

A stage trains its synthesizer on a prediction when that batch's true target
comes back, without a second forward pass: autograd keeps the prediction's
graph, and the graph needs the weights it was computed with (PipeDream's weight
stashing). Those weights must not be changed in place before the target comes.

- Window 1: no target can arrive between a prediction and its own target, so
  the live synthesizer makes every prediction and nothing is copied.
- Wider windows: predictions are made by replicas. A replica is refreshed from
  the live weights only when they have changed since it was last filled, and
  only once no pending prediction still uses it; all predictions between two
  synthesizer steps share one replica. Replicas share the live module's buffers
  (BatchNorm's running statistics), so those move exactly as they would in the
  live module. The live parameters and each replica's lie in one buffer each,
  so a refresh is a single copy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

__all__ = ["Replica", "WeightStash"]


@dataclass
class Replica:
    module: nn.Module
    parameters: list[torch.Tensor]
    version: int = -1
    users: int = 0
    flat: Optional[torch.Tensor] = None  # all its parameters' memory, when they share one buffer


class WeightStash:
    def __init__(self, synthesizer: nn.Module, window: int) -> None:
        self.live = synthesizer
        self.live_parameters: list[torch.Tensor] = list(synthesizer.parameters())
        self.copies = window > 1
        self.live_flat = _flatten(self.live_parameters) if self.copies else None
        self.version = 0  # bumped whenever the live weights change
        self.replicas: list[Replica] = []
        self.refreshes = 0  # weight copies made: the stash's whole cost

    def acquire(self) -> tuple[nn.Module, list[torch.Tensor], Optional[Replica]]:
        """The module to predict with, the parameters its gradients are taken for, and the replica to release."""
        if not self.copies:
            return self.live, self.live_parameters, None
        replica = self._current() or self._refreshed(self._free() or self._new())
        replica.users += 1
        return replica.module, replica.parameters, replica

    def release(self, replica: Optional[Replica]) -> None:
        """A prediction was trained on (or dropped): its replica may be refilled."""
        if replica is not None:
            replica.users -= 1

    def changed(self) -> None:
        """The live weights were just changed (an optimiser step, a restored checkpoint)."""
        self.version += 1

    def _current(self) -> Optional[Replica]:
        return next((replica for replica in self.replicas if replica.version == self.version), None)

    def _free(self) -> Optional[Replica]:
        return next((replica for replica in self.replicas if replica.users == 0), None)

    def _new(self) -> Replica:
        module = copy.deepcopy(self.live)
        for live, twin in zip(self.live.modules(), module.modules()):
            for name, buffer in live._buffers.items():  # running statistics move as they would in the live module
                twin._buffers[name] = buffer
        replica = Replica(module, list(module.parameters()))
        replica.flat = _flatten(replica.parameters) if self.live_flat is not None else None
        self.replicas.append(replica)
        return replica

    def _refreshed(self, replica: Replica) -> Replica:
        with torch.no_grad():
            if replica.flat is not None and self.live_flat is not None:  # a replica is flat only if the live weights are
                replica.flat.copy_(self.live_flat)
            else:
                torch._foreach_copy_(replica.parameters, self.live_parameters)
        replica.version = self.version
        self.refreshes += 1
        return replica


def _flatten(parameters: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """Move the parameters into one buffer (each becomes a view of it), so that copying them all is one copy;
    None (and nothing moved) when they differ in dtype or device."""
    if not parameters or len({(p.dtype, p.device) for p in parameters}) != 1:
        return None
    flat = torch.cat([p.detach().reshape(-1) for p in parameters])
    offset = 0
    for parameter in parameters:
        parameter.data = flat[offset:offset + parameter.numel()].view_as(parameter)
        offset += parameter.numel()
    return flat
