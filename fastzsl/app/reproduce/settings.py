"""Sizes and constants of a ``fastzsl reproduce`` run."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..datasets import DEFAULT_UNSEEN  # noqa: F401  (the reproduce package's name for it)
# The pair sweep: distant and close pairs. CIFAR-10: the pairs the paper reports.
PAIRS = {
    "fashion-mnist": (("sandal", "pullover"), ("trouser", "bag"), ("dress", "sneaker"),
                      ("t-shirt", "shirt"), ("pullover", "coat"), ("sneaker", "ankle boot")),
    "cifar10": (("cat", "truck"), ("cat", "dog"), ("airplane", "automobile"),
                ("automobile", "deer"), ("deer", "ship")),
}
# Random distractors come from this band of GloVe's frequency-ordered vocabulary: common
# enough to be real words, past the function words at the top.
RANDOM_WORD_BAND = (1000, 50_000)
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Settings:
    """Sizes of one ``reproduce`` run (all recorded in its results)."""

    centroids: int = 400
    stride: int = 1
    n_patches: int = 200_000
    max_per_class: int | None = None     # main setting: training images per seen class
    sweep_per_class: int = 2000          # pair sweep: training images per seen class
    max_test: int | None = None          # main setting: random test subset
    n_pairs: int | None = None           # first n pairs of PAIRS (None: all)
    distractor_counts: tuple = (0, 1, 2, 3, 5, 10, 20, 30, 40)
    raw_reference: int = 10_000          # reference points of the novelty-space comparison
    n_neighbors: int = 20
    # Adam everywhere, so the mapping is trained the same way at every data size.
    mapper_params: dict = field(default_factory=lambda: {"optimizer": "adam"})


QUICK = dict(centroids=64, stride=2, n_patches=50_000, max_per_class=300, sweep_per_class=200,
             max_test=2000, n_pairs=3, distractor_counts=(0, 1, 5, 10, 20, 40),
             raw_reference=1000, n_neighbors=10)


def settings_for(dataset, quick=False, **overrides) -> Settings:
    """The default sizes of a data set (``quick``: a smoke run of a minute or two);
    ``overrides`` that are None are ignored."""
    base = Settings(stride=2, sweep_per_class=1000) if dataset == "cifar10" else Settings()
    if quick:
        base = replace(base, **QUICK)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})

