"""Feature drift on production data: what the registered neurons do on a new, unpaired batch of
images compared with a reference window (the probe set, a folder, or earlier batches).

- `design`: the reference window and the sampling design of its images (which images are
  independent), `design_covariance`.
- `shift`: per-neuron two-sample statistics (mean shift and tails, effect sizes with intervals).
- `joint`: one test on the joint vector of all neurons (MMD with a design-based null).
- `verdicts`: PASS/WARN/FAIL with Holm/BH across neurons, reasons, evidence, power figures.
- `batch`: loading a folder of photographs and the neurons' values on it.
"""
from .batch import load_batch, neuron_values
from .design import ReferenceWindow, design_covariance, image_units, probe_units
from .joint import JointShift, joint_shift
from .shift import NeuronShift, detectable_shift, images_needed, neuron_shift
from .verdicts import JOINT_ID, BatchVerdict, NeuronVerdict, judge_batch

__all__ = ["load_batch", "neuron_values", "ReferenceWindow", "design_covariance", "image_units", "probe_units",
           "JointShift", "joint_shift", "NeuronShift", "detectable_shift", "images_needed", "neuron_shift",
           "JOINT_ID", "BatchVerdict", "NeuronVerdict", "judge_batch"]
