"""The autoencoder network: a plain ``torch.nn.Module`` that never sees AnnData or sparse data."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

__all__ = ["AutoencoderModule"]


class DropoutMasks:
    """Seeded dropout masks, shared by a network's dropout layers; never torch's global RNG.

    On the CPU masks come from the network's own generator. On another device they are
    drawn there, from a generator of that device seeded once from the network's own (a
    mask drawn on the host and copied would cost more than the layer it masks), so a seed
    gives the same masks on every run on the device.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.on_device: dict[torch.device, torch.Generator] = {}

    def keep(self, shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
        """Mask of the entries kept (1.0) with probability ``1 - p``."""
        if device.type == "cpu":
            return torch.empty(shape).bernoulli_(1 - p, generator=self.generator)
        if device not in self.on_device:
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            self.on_device[device] = torch.Generator(device=device).manual_seed(seed)
        return torch.empty(shape, device=device).bernoulli_(1 - p, generator=self.on_device[device])


class SeededDropout(nn.Module):
    """Dropout drawing its masks from :class:`DropoutMasks`, so training never touches torch's global RNG."""

    def __init__(self, p: float, masks: DropoutMasks) -> None:
        super().__init__()
        self.p, self.masks = p, masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * self.masks.keep(x.shape, self.p, x.device) / (1 - self.p)


class AutoencoderModule(nn.Module):
    """MLP autoencoder: genes → hidden layers → bottleneck → hidden layers (mirrored) → genes.

    Hidden layers use ReLU and dropout; the bottleneck and the output are linear: the
    output is on the input's (transformed) scale, or, for a count likelihood, the logits
    of each gene's share of the cell's counts (the training loop makes them rates).

    Parameters
    ----------
    n_genes
        Input and output width.
    bottleneck
        Width of the code layer: the knob that is calibrated.
    hidden
        Widths of the hidden layers of the encoder (the decoder mirrors them).
    dropout
        Dropout probability after every hidden layer.
    generator
        Source of the initial weights and of dropout masks (CPU generator; on another
        device, of the seed of that device's masks).
    gene_dispersion
        Whether to learn a per-gene inverse dispersion ``θ`` (``log_theta``, starting at
        ``θ = 1``) for a negative-binomial likelihood.
    """

    def __init__(
        self,
        n_genes: int,
        bottleneck: int,
        hidden: tuple[int, ...],
        dropout: float,
        generator: torch.Generator,
        *,
        gene_dispersion: bool = False,
    ) -> None:
        super().__init__()
        widths = [n_genes, *hidden]
        masks = DropoutMasks(generator)

        def stack(sizes: list[int]) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for a, b in itertools.pairwise(sizes):
                layers += [nn.Linear(a, b), nn.ReLU(), SeededDropout(dropout, masks)]
            return layers

        self.encoder = nn.Sequential(*stack(widths), nn.Linear(widths[-1], bottleneck))
        self.decoder = nn.Sequential(
            *stack([bottleneck, *reversed(hidden)]), nn.Linear(widths[-1] if hidden else bottleneck, n_genes)
        )
        for layer in self.modules():
            if isinstance(layer, nn.Linear):  # PyTorch's default initialisation, from our generator
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        if gene_dispersion:
            self.log_theta = nn.Parameter(torch.zeros(n_genes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
