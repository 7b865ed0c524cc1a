"""neuron-audit library: models, references, probe sets, VITAL and baseline
visualizers, relevance, activation statistics, drift tests and quality metrics.

Imports neither Prefect nor MLflow: `flows/` and `storage/` wrap it.
"""

__version__ = "0.1.0"
