"""Feature drift on production data: what the registered neurons do on a new, unpaired batch of
images compared with a reference window (the probe set, a folder, or earlier batches).

- `design`: the reference window and the sampling design of its images (which images are
  independent), `design_covariance`.
- `shift`: per-neuron two-sample statistics (mean shift and tails, effect sizes with intervals).
- `joint`: one test on the joint vector of all neurons (MMD with a design-based null).
- `layers`: the whole-layer test (every channel of the tapped layers and the pooled embedding,
  photographs as units, permutation null).
- `verdicts`: PASS/WARN/FAIL with Holm/BH across neurons, reasons, evidence, power figures.
- `batch`: loading a folder of photographs and the neurons' values and layer means on it.
- `refcache`: the reference window's model outputs cached by content key.
"""
from .batch import batch_features, load_batch, neuron_values, tested_layers
from .design import PROBE_REFERENCE_LIMITS, ReferenceWindow, design_covariance, image_units, probe_units
from .joint import JointShift, joint_shift
from .layers import LAYERS_ID, LayerShift, LayersShift, layers_shift
from .refcache import CachedReference, load_reference, reference_key, save_reference
from .shift import NeuronShift, detectable_shift, images_needed, neuron_shift
from .verdicts import JOINT_ID, BatchVerdict, NeuronVerdict, judge_batch

__all__ = ["batch_features", "load_batch", "neuron_values", "tested_layers", "PROBE_REFERENCE_LIMITS",
           "ReferenceWindow", "design_covariance", "image_units", "probe_units", "JointShift", "joint_shift",
           "LAYERS_ID", "LayerShift", "LayersShift", "layers_shift", "CachedReference", "load_reference",
           "reference_key", "save_reference", "NeuronShift", "detectable_shift", "images_needed", "neuron_shift",
           "JOINT_ID", "BatchVerdict", "NeuronVerdict", "judge_batch"]
