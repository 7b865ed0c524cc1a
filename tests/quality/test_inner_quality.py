"""The inner-neuron quality figure on real images: the images that fire a channel most score as
such; a flat grey image does not."""
from __future__ import annotations

import numpy as np
import torch

from audit.models import to_uint8_image
from audit.quality import channel_peaks, images_to_tensor, inner_neuron_quality


def _probe(sample_images):
    from audit.references import class_references

    names = ["chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "camera", "coins", "moon"]
    return torch.cat([class_references([sample_images[n]], 64, 4, seed=i) for i, n in enumerate(names)])


def test_top_images_score_high_and_grey_scores_low(lite0, sample_images):
    probe = _probe(sample_images)
    grey = [np.full((64, 64, 3), 128, np.uint8)]
    peaks, _ = channel_peaks(lite0, "blocks.3", 0, probe)
    grey_peaks, _ = channel_peaks(lite0, "blocks.3", 0, images_to_tensor(grey, 64))
    # a channel that real content drives and a flat image does not
    channel = int(torch.argmax((peaks.amax(0) - grey_peaks[0]) / peaks.std(0).clamp_min(1e-3)))
    order = torch.argsort(peaks[:, channel], descending=True)
    best = [to_uint8_image(probe[int(i)]) for i in order[:2]]
    good = inner_neuron_quality(lite0, "blocks.3", channel, best, probe)
    bad = inner_neuron_quality(lite0, "blocks.3", channel, grey, probe)
    assert good["percentile"] > 90 and bad["percentile"] < 50
    assert good["specificity_rank"] < bad["specificity_rank"] and 0 <= bad["specificity"] <= good["specificity"] <= 1
    assert good["patch_distance_ratio"] < 1 and good["patch_distance_ratio"] < bad["patch_distance_ratio"]
    assert good["channels"] == peaks.shape[1] == 80
