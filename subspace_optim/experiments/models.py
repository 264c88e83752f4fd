"""Models and losses of the paper's experiments."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["TransformerClassifier", "cnn", "half_sum_mse", "mlp"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def mlp(
    widths: Sequence[int] = (64, 64, 64, 10),
    *,
    activation: str = "tanh",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """Fully connected network with layer widths ``widths`` (input first, output last).

    ``mlp((64, 64, 64, 10))`` is the digits network of the experiments: 64 inputs, two
    hidden layers of 64 with tanh, 10 outputs, 8,970 parameters. Weights use PyTorch's
    default initialization, drawn from ``generator`` when given (a private stream), so a
    seed reproduces the network without touching the global RNG.

    Args:
        widths: the layer sizes, input first and output last (at least two).
        activation: ``"tanh"``, ``"relu"`` or ``"gelu"``, after every layer but the last.
        generator: draws the weights from this private stream; ``None``: PyTorch's own
            initialization.
        dtype: the parameters' dtype.

    Returns:
        The network, a stack of ``nn.Linear`` layers and activations.

    Raises:
        ValueError: fewer than two widths, or an unknown activation.

    Example:
        >>> from subspace_optim.experiments import mlp
        >>> sum(p.numel() for p in mlp().parameters())
        8970
    """
    if len(widths) < 2:
        raise ValueError(f"widths needs at least an input and an output size; got {widths}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {sorted(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b, dtype=dtype))
        if i < len(widths) - 2:
            layers.append(_ACTIVATIONS[activation]())
    model = nn.Sequential(*layers)
    if generator is not None:
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / layer.in_features**0.5
                    layer.weight.copy_(
                        (
                            torch.rand(layer.weight.shape, generator=generator, dtype=torch.float64)
                            * 2
                            - 1
                        )
                        * bound
                    )
                    layer.bias.copy_(
                        (
                            torch.rand(layer.bias.shape, generator=generator, dtype=torch.float64)
                            * 2
                            - 1
                        )
                        * bound
                    )
    return model


def half_sum_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """``0.5 · Σ_j (f_j − y_j)²`` averaged over examples: the paper's MSE loss.

    Args:
        outputs: ``(n, c)``, the model's outputs.
        targets: ``(n, c)``, e.g. one-hot labels.

    Returns:
        The loss, a 0-dim tensor.

    Example:
        >>> import torch
        >>> from subspace_optim.experiments import half_sum_mse
        >>> float(half_sum_mse(torch.ones(2, 3), torch.zeros(2, 3)))
        1.5
    """
    return 0.5 * (outputs - targets).pow(2).sum(dim=-1).mean()


def cnn(
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    *,
    channels: int = 32,
    activation: str = "tanh",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """The CIFAR-10 network of the experiments: two 3×3 convolutions of ``channels`` channels
    (padding 1), each followed by the activation and 2×2 max pooling, then a linear head.

    For 3×32×32 inputs and 32 channels: 9,248 + 896 convolution weights and a 2,048 → 10
    head, 30,634 parameters. With ``generator`` the weights are drawn like PyTorch's default
    initialization (uniform ±1/√fan_in) from that private stream.

    Args:
        in_channels: channels of the input images.
        image_size: height and width of the (square) images, divisible by 4.
        num_classes: outputs.
        channels: channels of each convolution.
        activation: ``"tanh"``, ``"relu"`` or ``"gelu"``.
        generator: draws the weights from this private stream; ``None``: PyTorch's own
            initialization.
        dtype: the parameters' dtype.

    Returns:
        The network; it maps ``(n, in_channels, image_size, image_size)`` to
        ``(n, num_classes)``.

    Raises:
        ValueError: an unknown activation, or ``image_size`` not divisible by 4.

    Example:
        >>> from subspace_optim.experiments.models import cnn
        >>> sum(p.numel() for p in cnn().parameters())
        30634
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {sorted(_ACTIVATIONS)}")
    if image_size % 4:
        raise ValueError(f"image_size must be divisible by 4 (two 2×2 poolings); got {image_size}")
    act = _ACTIVATIONS[activation]
    model = nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, dtype=dtype),
        act(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, channels, 3, padding=1, dtype=dtype),
        act(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * (image_size // 4) ** 2, num_classes, dtype=dtype),
    )
    if generator is not None:
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    fan_in = layer.weight[0].numel()
                    bound = 1.0 / fan_in**0.5
                    for p in (layer.weight, layer.bias):
                        u = torch.rand(p.shape, generator=generator, dtype=torch.float64)
                        p.copy_((u * 2 - 1) * bound)
    return model


class TransformerClassifier(nn.Module):
    """The SST-2 network of the experiments: token embedding, sinusoidal positions, a
    Transformer encoder, mean pooling over positions and a linear head.

    Inputs are ``(n, 2, L)`` integer tensors: token ids in ``[:, 0]`` and the attention mask
    (1 for a token, 0 for padding) in ``[:, 1]``; padded keys are masked in attention. The
    mean is taken over all ``L`` positions, padding included, as in the public code that
    accompanies the paper, so every example must be padded to the same ``L`` for its loss
    not to depend on its batch. Outputs are ``(n, num_classes)``.

    Args:
        vocab_size: rows of the token embedding.
        max_len: longest sequence the positional encoding covers.
        width: model width (the paper: 64).
        heads: attention heads (8).
        layers: encoder layers (2).
        feedforward: hidden width of each feed-forward block (2048).
        num_classes: outputs (2).
        generator: draws the weights from this private stream (embedding ``N(0, 1)``,
            attention projections Xavier-uniform with zero biases, linear layers
            uniform ±1/√fan_in, LayerNorm at 1 and 0), like PyTorch's defaults; without it,
            PyTorch's own initialization.
        dtype: the parameters' dtype.

    Raises:
        ValueError: ``width`` is odd or not divisible by ``heads``.

    .. note::
        Dropout is 0 and the encoder runs without nested tensors, so training and
        evaluation compute the same function.

    Example:
        >>> import torch
        >>> from subspace_optim.experiments.models import TransformerClassifier
        >>> model = TransformerClassifier(50, 8, generator=torch.Generator().manual_seed(0))
        >>> x = torch.stack([torch.randint(2, 50, (3, 8)), torch.ones(3, 8, dtype=torch.long)], 1)
        >>> model(x).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        *,
        width: int = 64,
        heads: int = 8,
        layers: int = 2,
        feedforward: int = 2048,
        num_classes: int = 2,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if width % 2 or width % heads:
            raise ValueError(f"width ({width}) must be even and divisible by heads ({heads})")
        self.embedding = nn.Embedding(vocab_size, width, dtype=dtype)
        position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
        freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(1e4) / width))
        pe = torch.zeros(max_len, width, dtype=torch.float64)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
        self.register_buffer("positions", pe.to(dtype), persistent=False)
        layer = nn.TransformerEncoderLayer(
            width, heads, feedforward, dropout=0.0, batch_first=True, dtype=dtype
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_classes, dtype=dtype)
        if generator is not None:
            self._init(generator)

    @torch.no_grad()
    def _init(self, g: torch.Generator) -> None:
        def uniform(p: Tensor, bound: float) -> None:
            p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * bound)

        self.embedding.weight.copy_(
            torch.randn(self.embedding.weight.shape, generator=g, dtype=torch.float64)
        )
        for name, module in self.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                fan_out, fan_in = module.in_proj_weight.shape
                uniform(module.in_proj_weight, math.sqrt(6.0 / (fan_in + fan_out)))
                module.in_proj_bias.zero_()
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.in_features)
                uniform(module.weight, bound)
                if name.endswith("out_proj"):
                    module.bias.zero_()
                else:
                    uniform(module.bias, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Class scores of a batch.

        Args:
            x: ``(n, 2, L)`` integers: token ids, then the attention mask (1: token).

        Returns:
            ``(n, num_classes)`` outputs.
        """
        ids, mask = x[:, 0], x[:, 1]
        h = self.embedding(ids) + self.positions[: ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=mask == 0)
        return self.head(h.mean(dim=1))
