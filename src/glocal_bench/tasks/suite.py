"""The no-regret suite: small tasks of different kinds, each started where a user would start.

Every task here runs offline (scikit-learn's bundled data or generated data) and is kept small
(the untuned run takes a few seconds on one CPU thread), so the whole suite runs with 3 seeds and
all strategies on a laptop. The initial hyperparameters are common library defaults, not tuned.

* ``digits-cnn-bn``: a CNN with BatchNorm on 8x8 digits (buffers, conv layers), SGD-momentum.
* ``seq-transformer``: a one-layer Transformer encoder on a synthetic pointer task (plateau, then a
  sudden drop), AdamW.
* ``diabetes-mlp``: MLP regression on the diabetes data (442 samples: heavy overfitting), SGD-momentum.
* ``digits-mlp-long``: an MLP on digits for 5000 steps (5x logistic-digits): extrapolation over ~50 windows.
* ``mnist1d-mlp-indep``: an MNIST-1D MLP of another width, split and horizon than ``mnist1d-mlp``,
  from lr 0.003 (the configuration the default had never seen).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor, nn

from .base import (
    Task,
    cross_entropy,
    global_rngs_kept,
    mse,
    optimizer_and_space,
    seeded_init,
    stratified_split,
    to_split,
)
from .mnist1d import make_mnist1d

__all__ = [
    "SUITE_TASKS",
    "make_diabetes_mlp",
    "make_digits_cnn_bn",
    "make_digits_mlp_long",
    "make_mnist1d_independent",
    "make_seq_transformer",
]


#: the registered names of this module's tasks (their grid oracles are small: lr x weight decay, 6 runs)
SUITE_TASKS = ("digits-cnn-bn", "seq-transformer", "diabetes-mlp", "digits-mlp-long", "mnist1d-mlp-indep")


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    with global_rngs_kept():
        from sklearn.datasets import load_digits

        data = load_digits()
    return data.data.astype(np.float64), data.target.astype(np.int64)


def _digits_splits(data_seed: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Digits scaled to [0, 1] (pixel values 0..16) and a stratified 60/20/20 split."""
    x_np, y_np = _digits()
    x, y = torch.from_numpy(x_np) / 16.0, torch.from_numpy(y_np)
    return x, y, stratified_split(y, (0.6, 0.2, 0.2), data_seed)


class DigitsCNN(nn.Module):
    """8x8 -> conv(8)+BN+ReLU -> conv(16, stride 2)+BN+ReLU -> linear: about 2.9k parameters."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),  # 8 -> 4
        )
        self.head = nn.Linear(2 * c * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.reshape(-1, 1, 8, 8)).flatten(1))


def make_digits_cnn_bn(seed: int = 0, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                       data_seed: int = 0) -> Task:
    """CNN with BatchNorm on digits: SGD-momentum from lr 0.01, wd 1e-4, momentum 0.9; batch 64, 400 steps."""
    x, y, (tr, va, te) = _digits_splits(data_seed)
    with seeded_init(seed):
        model = DigitsCNN()
    model = model.to(dtype=dtype, device=device)
    opt, space = optimizer_and_space("sgd", 0.01, 1e-4, 0.9, dtype, device)
    return Task(
        name="digits-cnn-bn", model=model, optimizer=opt, space=space,
        train=to_split(x[tr], y[tr], dtype, device), val=to_split(x[va], y[va], dtype, device),
        test=to_split(x[te], y[te], dtype, device), batch_size=64, total_steps=400,
        train_loss=cross_entropy, val_loss=cross_entropy, num_classes=10, seed=seed,
        grid={"lr": [0.01, 0.03, 0.1], "weight_decay": [1e-4, 1e-3]},
    )


class DigitsMLP(nn.Module):
    """64 -> hidden -> 10 with ReLU."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_digits_mlp_long(seed: int = 0, *, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None, data_seed: int = 0) -> Task:
    """MLP 64-32-10 on digits, batch 32, 5000 steps (~150 epochs: a long tail of overfitting)."""
    x, y, (tr, va, te) = _digits_splits(data_seed)
    with seeded_init(seed):
        model = DigitsMLP()
    model = model.to(dtype=dtype, device=device)
    opt, space = optimizer_and_space("sgd", 0.01, 1e-4, 0.9, dtype, device)
    return Task(
        name="digits-mlp-long", model=model, optimizer=opt, space=space,
        train=to_split(x[tr], y[tr], dtype, device), val=to_split(x[va], y[va], dtype, device),
        test=to_split(x[te], y[te], dtype, device), batch_size=32, total_steps=5000,
        train_loss=cross_entropy, val_loss=cross_entropy, num_classes=10, seed=seed,
        grid={"lr": [0.003, 0.01, 0.03], "weight_decay": [1e-4, 1e-3]},
    )


@functools.lru_cache(maxsize=1)
def _diabetes() -> tuple[np.ndarray, np.ndarray]:
    with global_rngs_kept():
        from sklearn.datasets import load_diabetes

        data = load_diabetes()
    return data.data.astype(np.float64), data.target.astype(np.float64)


class RegressionMLP(nn.Module):
    """inputs -> hidden -> hidden -> 1 with tanh."""

    def __init__(self, inputs: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_diabetes_mlp(seed: int = 0, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                      data_seed: int = 0) -> Task:
    """MLP 10-64-64-1 regression on diabetes (standardised x and y), MSE; batch 32, 800 steps."""
    x_np, y_np = _diabetes()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    gen = torch.Generator().manual_seed(data_seed)
    perm = torch.randperm(len(y), generator=gen)
    n_tr, n_va = round(0.6 * len(y)), round(0.2 * len(y))
    tr, va, te = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]
    mean, std = x[tr].mean(0), x[tr].std(0)
    x = (x - mean) / std
    y = (y - y[tr].mean()) / y[tr].std()
    with seeded_init(seed):
        model = RegressionMLP(x.shape[1])
    model = model.to(dtype=dtype, device=device)
    opt, space = optimizer_and_space("sgd", 0.01, 1e-4, 0.9, dtype, device)
    return Task(
        name="diabetes-mlp", model=model, optimizer=opt, space=space,
        train=to_split(x[tr], y[tr], dtype, device, regression=True),
        val=to_split(x[va], y[va], dtype, device, regression=True),
        test=to_split(x[te], y[te], dtype, device, regression=True), batch_size=32, total_steps=800,
        train_loss=mse, val_loss=mse, num_classes=None, seed=seed,
        grid={"lr": [0.001, 0.003, 0.01], "weight_decay": [1e-4, 1e-2]},
    )


class EncoderLayer(nn.Module):
    """A pre-norm Transformer encoder layer (multi-head self-attention + GELU MLP, no dropout).

    Attention is written out (softmax(QK^T / sqrt(d)) V) rather than ``nn.TransformerEncoderLayer``:
    torch's fused CPU attention kernels have no double backward, which forward-mode hypergradients need.
    """

    def __init__(self, d_model: int, heads: int, hidden: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model}: expected a multiple of heads={heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.out((attention @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class PointerTransformer(nn.Module):
    """Token + learned position embeddings, one pre-norm encoder layer, read out at position 0."""

    def __init__(self, vocab: int, length: int, d_model: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.randn(length, d_model) * 0.1)
        self.encoder = EncoderLayer(d_model, heads, 2 * d_model)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(self.embed(x) + self.position)
        return self.head(self.norm(h[:, 0]))


def pointer_data(num: int, length: int, vocab: int, seed: int, noise: float = 0.1) -> tuple[Tensor, Tensor]:
    """Sequences whose first token k (1..length-1, ids past the content symbols) points at position k;
    the label is the content symbol (0..vocab-1) found there, replaced by a random one with probability
    ``noise`` (so the loss has a floor and the model can overfit)."""
    gen = torch.Generator().manual_seed(seed)
    content = torch.randint(0, vocab, (num, length), generator=gen)
    pointer = torch.randint(1, length, (num,), generator=gen)
    label = content[torch.arange(num), pointer]
    flip = torch.rand(num, generator=gen) < noise
    label = torch.where(flip, torch.randint(0, vocab, (num,), generator=gen), label)
    content[:, 0] = vocab + pointer - 1  # pointer tokens have their own ids
    return content, label


def make_seq_transformer(seed: int = 0, *, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None, data_seed: int = 0) -> Task:
    """One-layer Transformer (d 32, 2 heads) on the pointer task (length 12, 12 symbols, 10% label noise),
    AdamW from lr 1e-3, wd 1e-2; 1500 train / 500 val / 1000 test, batch 64, 400 steps. Learning shows a
    plateau then a sudden drop (around step 300 at lr 1e-3), then overfitting."""
    length, vocab = 12, 12
    x, y = pointer_data(3000, length, vocab, 1000 + data_seed)
    with seeded_init(seed):
        model = PointerTransformer(vocab + length - 1, length)
    model = model.to(dtype=dtype, device=device)
    opt, space = optimizer_and_space("adamw", 1e-3, 1e-2, None, dtype, device)
    return Task(
        name="seq-transformer", model=model, optimizer=opt, space=space,
        train=(x[:1500].to(device), y[:1500].to(device)), val=(x[1500:2000].to(device), y[1500:2000].to(device)),
        test=(x[2000:].to(device), y[2000:].to(device)), batch_size=64, total_steps=400,
        train_loss=cross_entropy, val_loss=cross_entropy, num_classes=vocab, seed=seed,
        grid={"lr": [1e-3, 3e-3, 1e-2], "weight_decay": [1e-2, 1e-1]},
    )


def make_mnist1d_independent(seed: int = 0, *, dtype: torch.dtype = torch.float32,
                             device: torch.device | str | None = None) -> Task:
    """MNIST-1D MLP 40-64-64-10, 2000 train / 500 val / 1000 test, batch 64, 1500 steps, SGD-momentum from
    lr 0.003, wd 1e-4, momentum 0.9 (width, split, horizon and start all differ from ``mnist1d-mlp``)."""
    task = make_mnist1d(seed, arch="mlp", optimizer="sgd", dtype=dtype, device=device, num_train=2000,
                        num_val=500, num_test=1000, hidden=64, name="mnist1d-mlp-indep")
    opt, space = optimizer_and_space("sgd", 0.003, 1e-4, 0.9, dtype, device)
    task.optimizer, task.space = opt, space
    task.batch_size, task.total_steps = 64, 1500
    task.grid = {"lr": [0.003, 0.01, 0.03], "weight_decay": [1e-4, 1e-2]}
    return task
