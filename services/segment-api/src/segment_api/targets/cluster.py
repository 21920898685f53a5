"""The k-means fit of `POST /v1/segments/cluster`: the only step of a target-group operation
that runs in Python (in a worker thread, off the event loop). The features arrive log-scaled
from the database; here they are standardised and clustered, and the centroids go back to
the database, which assigns every buyer to the nearest one."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FEATURES = ("recency", "frequency", "monetary")
# Enough for stable centroids; more only costs time (the assignment covers every buyer).
SAMPLE_SIZE = 20_000
N_INIT = 4


@dataclass(frozen=True)
class Scaling:
    means: tuple[float, float, float]
    stds: tuple[float, float, float]


@dataclass(frozen=True)
class Fit:
    # One row per cluster, best customers first: standardised units, all three features
    # (an unchosen feature's coordinate is 0 and carries no weight).
    centroids: list[list[float]]


def order_key(centroid: Sequence[float], weights: Sequence[float]) -> float:
    """Higher is better: recent (low recency), frequent and high-spending."""
    recency, frequency, monetary = centroid
    return -recency * weights[0] + frequency * weights[1] + monetary * weights[2]


def fit(
    sample: Sequence[Sequence[float]], scaling: Scaling, weights: Sequence[float], k: int, seed: int
) -> Fit:
    """k-means over the chosen features of `sample` (rows of log-scaled features)."""
    data = (np.asarray(sample, dtype=np.float64) - np.asarray(scaling.means)) / np.asarray(
        scaling.stds
    )
    chosen = [index for index, weight in enumerate(weights) if weight]
    # Imported at the first clustering (in its thread), not by every process that starts:
    # scikit-learn takes seconds of CPU to load.
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    # One thread: deterministic, and polite to the other work of a small machine.
    with threadpool_limits(limits=1):
        model = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit(data[:, chosen])
    centroids = []
    for center in model.cluster_centers_:
        full = [0.0, 0.0, 0.0]
        for position, index in enumerate(chosen):
            full[index] = float(center[position])
        centroids.append(full)
    centroids.sort(key=lambda centroid: -order_key(centroid, weights))
    return Fit(centroids)


def describe(centroid: Sequence[float], scaling: Scaling, weights: Sequence[float]) -> str:
    """The centroid in the features' own units: days, orders, revenue."""
    values = [
        float(np.expm1(mean + std * z))
        for z, mean, std in zip(centroid, scaling.means, scaling.stds, strict=True)
    ]
    parts = []
    if weights[0]:
        parts.append(f"last order about {values[0]:.0f} days ago")
    if weights[1]:
        parts.append(f"about {values[1]:.1f} orders")
    if weights[2]:
        parts.append(f"about {values[2]:.2f} in revenue")
    return ", ".join(parts)
