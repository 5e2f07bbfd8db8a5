"""k-nearest-neighbour probe on cached features: cosine similarity on L2-normalised clean-view features.

No training: the training features are the model. Votes are uniform, or weighted by exp(similarity / T)
(DINOv2's kNN evaluation uses T = 0.07). k is chosen on a validation split of the training images when
every class has at least MIN_PER_CLASS_TO_CHOOSE images for it, else it is FALLBACK_K (1-NN).
KNNHead outputs the log of its vote shares, so a softmax on top (as an exported model applies) gives the
vote shares back: the head drops into the same place as a Linear head.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import FeatcacheError
from .config import MIN_PER_CLASS_TO_CHOOSE

DEFAULT_KS = (1, 3, 5, 10, 20, 50)
FALLBACK_K = 1  # too few images to choose k: the nearest neighbour (larger k ties on a few images)


class KNNHead(nn.Module):
    """Features [B, D] to log vote shares [B, C] of the k most cosine-similar training features."""

    def __init__(self, bank: torch.Tensor, labels: torch.Tensor, classes: int, k: int, temperature: float | None = None):
        super().__init__()
        self.k, self.temperature = int(k), temperature
        self.register_buffer("bank", nn.functional.normalize(bank.float(), dim=1))
        self.register_buffer("onehot", nn.functional.one_hot(labels.long(), classes).float())

    @classmethod
    def from_state(cls, state: dict, knn: dict) -> KNNHead:
        """The head a run saved: `state` its weights.pt (bank, onehot), `knn` its history's "knn" record."""
        if not {"bank", "onehot"} <= set(state):
            raise FeatcacheError("the saved state does not fit a kNN head: it lacks bank and onehot")
        return cls(state["bank"], state["onehot"].argmax(1), state["onehot"].shape[1], knn["k"], knn.get("temperature"))

    def forward(self, features: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
        similarity = nn.functional.normalize(features.float(), dim=1) @ self.bank.T
        if exclude_self:  # leave-one-out on the bank itself: each row's own entry does not vote
            similarity = similarity.fill_diagonal_(-float("inf"))
        values, indices = similarity.topk(self.k, dim=1)
        # exp(s / T) relative to the nearest (the shares are the same), so small T cannot overflow
        weights = ((values - values[:, :1]) / self.temperature).exp() if self.temperature else torch.ones_like(values)
        votes = (weights.unsqueeze(-1) * self.onehot[indices]).sum(1)
        return (votes / votes.sum(1, keepdim=True)).log()


def knn_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
              test_labels: torch.Tensor, seed: int = 0, val_fraction: float = 0.2, ks=DEFAULT_KS,
              temperature: float | None = None, classes: int | None = None) -> dict:
    """kNN on clean views [N, D] (k chosen on a validation split when there are enough images):
    the head on all training images, its grid, and train (leave-one-out) and test accuracy."""
    from .heads import validation_split

    classes = classes or int(max(train_labels.max(), test_labels.max())) + 1
    counts = np.bincount(train_labels.numpy(), minlength=classes)
    grid = []
    if counts.min() >= MIN_PER_CLASS_TO_CHOOSE:
        fit, val = validation_split(train_labels, val_fraction, seed)
        for k in (k for k in ks if k <= len(fit)):
            head = KNNHead(train_features[fit], train_labels[fit], classes, k, temperature)
            with torch.no_grad():
                accuracy = (head(train_features[val]).argmax(1) == train_labels[val]).double().mean().item()
            grid.append({"k": k, "val_acc": accuracy})
        k = max(grid, key=lambda row: row["val_acc"])["k"]  # first of equals: the smaller k
        chosen = "validation split"
    else:
        k, chosen = FALLBACK_K, f"fixed (fewer than {MIN_PER_CLASS_TO_CHOOSE} images in a class)"
    head = KNNHead(train_features, train_labels, classes, k, temperature)
    with torch.no_grad():
        test_log_shares = head(test_features)
        train_log_shares = head(train_features, exclude_self=len(train_labels) > k)
    return {"head": head, "k": k, "chosen": chosen, "grid": grid, "test_log_shares": test_log_shares,
            "test_acc": (test_log_shares.argmax(1) == test_labels).double().mean().item(),
            "train_acc": (train_log_shares.argmax(1) == train_labels).double().mean().item(),
            "train_loss": -train_log_shares.gather(1, train_labels[:, None]).clamp(min=-20).mean().item()}
