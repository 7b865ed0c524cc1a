"""Quality metrics of feature visualizations.

* `self_top1`: fraction of visualizations the visualized model classifies top-1 as their class;
* `transfer_topk`: the same, top-k, on another model (VITAL's class visualizations should
  transfer to other networks; activation maximization images usually do not);
* `class_probability`: the mean softmax probability of the class, the graded form of transfer;
* `penultimate_features` + `frechet_distance`: Fréchet distance between visualizations and
  real images of the class in a network's penultimate (pre-logits) features, a small-sample
  FID (Heusel et al. 2017) as VITAL's paper reports per class;
* `evaluate_class_visualizations`: all of it for the class neurons of one configured model
  (the `neuron-audit evaluate` command);
* `inner_neuron_quality` / `evaluate_inner_visualizations`: a quality figure for inner neurons,
  where class metrics do not apply (the VITAL paper names the lack of one as a limit): the
  visualization's activation as a percentile of real activations, the channel's specificity
  rank in its layer, and the feature distance to the top real patches.

Images are either uint8 arrays [H, W, 3] (RGB) or one ImageNet-normalized tensor [N, 3, H, W];
both are resized (bilinear, antialiased) to the square input `size` the metric asks for.
Visualizations are square; a non-square uint8 image is resized to the shorter side and
centre-cropped (`audit.models.preprocess`).
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .builtin_weights import BUILTIN_MODELS, builtin_state_dict
from .models import fast_layout, load_model, model_input_size, preprocess

__all__ = ["images_to_tensor", "predict_logits", "self_top1", "transfer_topk", "class_probability", "penultimate_features",
           "shrunk_covariance", "frechet_distance", "evaluate_class_visualizations", "builtin_model", "channel_peaks",
           "inner_neuron_quality", "evaluate_inner_visualizations"]

ImagesLike = Sequence[np.ndarray] | torch.Tensor


def images_to_tensor(images: ImagesLike, size: int) -> torch.Tensor:
    """uint8 [H, W, 3] arrays or a normalized [N, 3, H, W] tensor -> normalized [N, 3, size, size]."""
    if isinstance(images, torch.Tensor):
        x = images.detach().float()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x
    arrays = list(images)
    if not arrays:
        return torch.zeros(0, 3, size, size)
    pil = []
    for a in arrays:
        a = np.asarray(a)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(f"expected uint8 [H, W, 3] images, got {a.dtype} {a.shape}")
        pil.append(Image.fromarray(a))
    return preprocess(pil, size)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _run_batched(model: nn.Module, x: torch.Tensor, fn, batch: int) -> list[torch.Tensor]:
    """fn over batches of x on the model's device, in eval mode for the call; results on the CPU."""
    dev, was_training = _device_of(model), model.training
    model.eval()
    try:
        return [fn(fast_layout(x[i:i + batch].to(dev))).cpu() for i in range(0, x.shape[0], batch)]
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_logits(model: nn.Module, images: ImagesLike, size: int, batch: int = 16) -> torch.Tensor:
    """Logits [N, classes] of the model (eval mode for the call) on the images at `size`."""
    out = _run_batched(model, images_to_tensor(images, size), lambda xb: model(xb).float(), batch)
    return torch.cat(out) if out else torch.zeros(0, 0)


def _classes(class_indices: int | Iterable[int], n: int) -> torch.Tensor:
    if isinstance(class_indices, (int, np.integer)):
        return torch.full((n,), int(class_indices), dtype=torch.long)
    c = torch.as_tensor(list(class_indices), dtype=torch.long)
    if c.numel() != n:
        raise ValueError(f"{c.numel()} class indices for {n} images")
    return c


def transfer_topk(model: nn.Module, images: ImagesLike, class_indices: int | Iterable[int], size: int,
                  k: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of images whose class is among the model's top-k: {"top1": ..., "top5": ...}."""
    logits = predict_logits(model, images, size)
    n = logits.shape[0]
    if n == 0:
        return {f"top{kk}": float("nan") for kk in k}
    cls = _classes(class_indices, n)
    order = logits.topk(max(k), dim=1).indices
    return {f"top{kk}": float((order[:, :kk] == cls[:, None]).any(1).float().mean()) for kk in k}


def class_probability(model: nn.Module, images: ImagesLike, class_indices: int | Iterable[int], size: int) -> float:
    """Mean softmax probability the model gives each image's class: a graded transfer measure
    that still separates methods when top-k saturates."""
    logits = predict_logits(model, images, size)
    if logits.shape[0] == 0:
        return float("nan")
    cls = _classes(class_indices, logits.shape[0])
    return float(logits.softmax(1).gather(1, cls[:, None]).mean())


def self_top1(model: nn.Module, images: ImagesLike, class_indices: int | Iterable[int], size: int) -> float:
    """Fraction of images the model itself classifies top-1 as their class."""
    return transfer_topk(model, images, class_indices, size, k=(1,))["top1"]


@torch.no_grad()
def penultimate_features(model: nn.Module, images: ImagesLike, size: int, batch: int = 16) -> np.ndarray:
    """Pre-logit features [N, D] (timm: forward_head(forward_features(x), pre_logits=True)), float64."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ValueError("penultimate_features needs a timm model (forward_features/forward_head)")
    out = _run_batched(model, images_to_tensor(images, size),
                       lambda xb: model.forward_head(model.forward_features(xb), pre_logits=True).flatten(1).double(),
                       batch)
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def shrunk_covariance(feats: np.ndarray, shrinkage: float | str | None = "auto") -> np.ndarray:
    """Covariance [D, D] of the rows of `feats` (maximum-likelihood, 1/N), shrunk towards mu*I
    (mu = mean variance): (1 - a) S + a mu I.

    shrinkage: "auto" (Ledoit-Wolf 2004 estimate of `a`), a float in [0, 1], or None / 0 for the
    plain sample covariance (unbiased, 1/(N-1), as the usual FID code uses). With one sample the
    covariance is zero.
    """
    x = np.asarray(feats, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        return np.zeros((d, d))
    if shrinkage is None or (not isinstance(shrinkage, str) and float(shrinkage) == 0.0):
        return np.cov(x, rowvar=False).reshape(d, d)
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = np.trace(s) / d
    if isinstance(shrinkage, str):
        if shrinkage != "auto":
            raise ValueError(f"shrinkage must be 'auto', a float in [0, 1] or None, got {shrinkage!r}")
        target = s - mu * np.eye(d)
        d2 = float(np.sum(target * target))
        # b2 = 1/n^2 sum_k ||x_k x_k^T - S||_F^2, with ||x x^T - S||^2 = |x|^4 - 2 x^T S x + ||S||^2
        sq = np.sum(xc * xc, 1)
        b2 = float(np.sum(sq ** 2 - 2 * np.einsum("ki,ij,kj->k", xc, s, xc) + np.sum(s * s))) / n ** 2
        a = 1.0 if d2 <= 0 else min(b2, d2) / d2
    else:
        a = float(shrinkage)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"shrinkage must lie in [0, 1], got {a}")
    return (1 - a) * s + a * mu * np.eye(d)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, shrinkage: float | str | None = "auto") -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [Na, D], [Nb, D]:

        ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))   (matrix root: scipy.linalg.sqrtm)

    Small samples: with fewer samples than feature dimensions (a few visualizations against a
    few dozen reference crops in 1280-D) the sample covariances are singular and noisy, so by
    default each covariance is shrunk towards a scaled identity with the Ledoit-Wolf weight
    (`shrunk_covariance`; the estimate is biased, and values are only comparable between runs
    with the same sample counts). `shrinkage=None` gives the textbook FID computation
    (unbiased sample covariances). Identical sets give ~0; sets that differ by a constant
    shift give ||shift||^2 under any shrinkage (their covariances are equal).
    """
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise ValueError(f"need two non-empty [N, D] feature sets with the same D, got {a.shape} and {b.shape}")
    diff = a.mean(0) - b.mean(0)
    sa, sb = shrunk_covariance(a, shrinkage), shrunk_covariance(b, shrinkage)
    if not sa.any() or not sb.any():        # a single sample: zero covariance, tr sqrt(Sa Sb) = 0
        return max(float(diff @ diff + np.trace(sa) + np.trace(sb)), 0.0)
    with warnings.catch_warnings():         # singular products (unshrunk, N < D) are expected here
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sa @ sb)
    if isinstance(covmean, tuple):      # older scipy returned (sqrtm, errest) with disp=False
        covmean = covmean[0]
    if not np.isfinite(covmean).all():
        eps = 1e-6 * max(np.trace(sa) / len(sa), np.trace(sb) / len(sb), 1e-12)
        off = eps * np.eye(len(sa))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm((sa + off) @ (sb + off))
    covmean = np.real(covmean)
    value = float(diff @ diff + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))
    return max(value, 0.0)


@lru_cache(maxsize=4)
def builtin_model(name: str) -> nn.Module:
    """A built-in Lite model (cached), on CUDA when available."""
    return load_model(name, f"builtin:{name}", state_dict=builtin_state_dict(name),
                      device="cuda" if torch.cuda.is_available() else "cpu")


def _reference_crops(specs: str | Sequence[str], base_dir: Path | None, size: int, n: int, seed: int) -> torch.Tensor:
    from .references import class_references, load_photographs

    photos = load_photographs([specs] if isinstance(specs, str) else list(specs), base_dir)
    return class_references(photos, size=size, n=n, seed=seed)


# ------------------------------------------------------------------------------------------ inner neurons


@torch.no_grad()
def channel_peaks(model: nn.Module, layer: str, index: int, images: torch.Tensor, batch: int = 16
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image: the spatial max of every channel of `layer` [N, C], and the layer's feature
    vector at the position where channel `index` peaks [N, C] (token layouts: over tokens)."""
    from .taps import capture, channels_first, get_layer

    get_layer(model, layer)

    def run(xb: torch.Tensor) -> torch.Tensor:
        with capture(model, [layer], detach=True) as acts:
            model(xb)
        a = channels_first(acts[layer]).float()                        # [b, C, N]
        where = a[:, index].argmax(-1)                                  # [b]
        at_peak = a.gather(2, where.view(-1, 1, 1).expand(-1, a.shape[1], 1)).squeeze(-1)
        return torch.cat([a.amax(-1), at_peak], 1)

    out = torch.cat(_run_batched(model, images, run, batch))
    c = out.shape[1] // 2
    return out[:, :c], out[:, c:]


def inner_neuron_quality(model: nn.Module, layer: str, index: int, images: ImagesLike, probe_images: torch.Tensor,
                         top_k: int = 16) -> dict[str, float]:
    """How well visualizations of an inner neuron (channel `index` of `layer`) show what fires it,
    measured against the real probe images (ImageNet-normalized [N, 3, S, S]; the visualizations
    are resized to S). Averaged over the visualizations:

    * `percentile`: the visualization's activation of the channel (spatial max) as a percentile of
      the channel's activations on the probe images (100: above every real image);
    * `specificity_rank`: the channel's rank among the layer's channels by standardized activation
      ((value - probe mean) / probe std per channel; 1 = the visualization drives this channel
      most), and `specificity` = 1 - (rank - 1) / (C - 1);
    * `patch_distance`: mean cosine distance between the layer's feature vector at the channel's
      peak in the visualization and the same vectors of the `top_k` probe images where the channel
      peaks highest (the top real patches), in the model's own feature space;
      `patch_distance_ratio`: that, divided by the mean distance of all probe images' peak vectors
      to the same top patches (< 1: closer to the top patches than a typical real image is).
    """
    size = int(probe_images.shape[-1])
    viz = images_to_tensor(images, size)
    p_max, p_vec = channel_peaks(model, layer, index, probe_images)
    v_max, v_vec = channel_peaks(model, layer, index, viz)
    target = p_max[:, index]
    below = (target[None, :] < v_max[:, index, None]).float().mean(1)
    ties = (target[None, :] == v_max[:, index, None]).float().mean(1)
    percentile = 100 * (below + 0.5 * ties)
    z = (v_max - p_max.mean(0)) / p_max.std(0).clamp_min(1e-6)
    rank = 1 + (z > z[:, index:index + 1]).sum(1).float()
    c = p_max.shape[1]
    top = torch.as_tensor(np.argsort(-target.numpy(), kind="stable")[: max(1, min(top_k, len(target)))].copy())
    patches = F.normalize(p_vec[top], dim=1)

    def distance(vectors: torch.Tensor) -> torch.Tensor:
        return (1 - F.normalize(vectors, dim=1) @ patches.T).mean(1)

    d_viz, d_probe = distance(v_vec), distance(p_vec)
    return {"percentile": float(percentile.mean()), "specificity_rank": float(rank.mean()),
            "specificity": float((1 - (rank - 1) / max(c - 1, 1)).mean()), "channels": int(c),
            "patch_distance": float(d_viz.mean()),
            "patch_distance_ratio": float(d_viz.mean() / d_probe.mean().clamp_min(1e-12))}


def evaluate_inner_visualizations(store_images: Callable[[str], list[np.ndarray]], model: nn.Module, model_cfg,
                                  probe_images: torch.Tensor, top_k: int = 16) -> dict:
    """`inner_neuron_quality` for every inner neuron of `model_cfg` with stored visualizations:
    {"neurons": {id: metrics}, "mean": averaged, "skipped": {id: reason}}."""
    neurons: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for n in model_cfg.neurons:
        if n.kind != "inner":
            continue
        images = [np.asarray(i) for i in store_images(n.id)]
        if not images:
            skipped[n.id] = "no stored visualizations"
            continue
        neurons[n.id] = {"n_images": len(images), "layer": n.layer, "index": n.index,
                         **inner_neuron_quality(model, n.layer, n.index, images, probe_images, top_k)}
    keys = ("percentile", "specificity_rank", "specificity", "patch_distance", "patch_distance_ratio")
    mean = {k: _mean(r.get(k) for r in neurons.values()) for k in keys}
    return {"neurons": neurons, "mean": mean, "skipped": skipped}


def _mean(values: Iterable[float | None]) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def evaluate_class_visualizations(store_images: Callable[[str], list[np.ndarray]], model: nn.Module, model_cfg,
                                  base_dir: Path | None = None, n_references: int = 32, seed: int = 0,
                                  feature_model: str = "efficientnet_lite0") -> dict:
    """Quality of the stored visualizations of every class neuron of `model_cfg` (audit.config.ModelConfig).

    Per class neuron with stored images (`store_images(neuron_id)` -> uint8 [H, W, 3] images, one
    per seed): `self_top1` (the audited model at its input size), transfer top-1/top-5 on the
    built-in Lite models other than the audited architecture (each at its native size), and the
    Fréchet distance (`frechet_distance`, Ledoit-Wolf shrinkage) between the visualizations and
    `n_references` random crops (`audit.references.class_references`, fixed seed) of the neuron's
    reference photos in `feature_model`'s penultimate features (at 224 px); None for neurons
    whose references are not photos (`top-k` or unset). Returns
    {"model", "neurons": {id: metrics}, "mean": metrics averaged over neurons, "skipped": {id: reason}}.
    """
    own_size = model_input_size(model)
    others = [m for m in BUILTIN_MODELS if m != model_cfg.architecture]
    feat_net = builtin_model(feature_model)
    feat_size = 224
    neurons: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for n in model_cfg.neurons:
        if n.kind != "class":
            continue
        images = [np.asarray(i) for i in store_images(n.id)]
        if not images:
            skipped[n.id] = "no stored visualizations"
            continue
        row: dict = {"n_images": len(images), "index": n.index,
                     "self_top1": self_top1(model, images, n.index, own_size)}
        for name in others:
            net = builtin_model(name)
            tk = transfer_topk(net, images, n.index, model_input_size(net), k=(1, 5))
            short = name.replace("efficientnet_", "")
            row[f"{short}_top1"], row[f"{short}_top5"] = tk["top1"], tk["top5"]
        row["frechet"] = None
        if n.references and n.references != "top-k":
            refs = _reference_crops(n.references, base_dir, feat_size, n_references, seed)   # str or list of specs
            fa = penultimate_features(feat_net, images, feat_size)
            fb = penultimate_features(feat_net, refs, feat_size)
            row["frechet"] = frechet_distance(fa, fb)
            row["n_references"] = n_references
        neurons[n.id] = row
    keys = sorted({k for r in neurons.values() for k in r if k not in ("n_images", "index", "n_references")})
    mean = {k: _mean(r.get(k) for r in neurons.values()) for k in keys}
    return {"model": model_cfg.name, "architecture": model_cfg.architecture, "feature_model": feature_model,
            "transfer_models": others, "neurons": neurons, "mean": mean, "skipped": skipped}
