"""Registering model versions the way MLflow 3 users do (`mlflow.pytorch.log_model(..., registered_model_name=)`),
for the registry tests. The process-wide MLflow tracking URI is set only while logging and restored afterwards,
so that the code under test cannot lean on it."""
from __future__ import annotations

import contextlib
from pathlib import Path

ARCH = "test_efficientnet"     # a 0.36 M-parameter timm EfficientNet: exports in about a second


def tiny_model(seed: int = 0, negate_row: int | None = None):
    """The test architecture at random init (seeded), with BatchNorm statistics that are not the defaults;
    negate_row flips the sign of one classifier row (a planted change of that class neuron)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        if negate_row is not None:
            model.classifier.weight[negate_row] *= -1
            model.classifier.bias[negate_row] = -model.classifier.bias[negate_row] - 1.0
    return model


@contextlib.contextmanager
def _tracking(uri: str):
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(before)


def log_registered(uri: str, artifact_root: Path, name: str, model, *, serialization_format: str | None = None,
                   alias: str | None = None) -> str:
    """Log `model` with mlflow.pytorch.log_model and register it as a new version of `name`; returns the version."""
    import numpy as np

    with _tracking(uri) as mlflow:
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("training")
        exp_id = exp.experiment_id if exp else client.create_experiment("training", artifact_location=artifact_root.as_uri())
        kwargs = {"serialization_format": serialization_format} if serialization_format else {}
        with mlflow.start_run(experiment_id=exp_id):
            info = mlflow.pytorch.log_model(model, name="model", registered_model_name=name,
                                            input_example=np.zeros((1, 3, 64, 64), np.float32),
                                            pip_requirements=["torch", "timm"], **kwargs)
        version = str(info.registered_model_version)
        if alias:
            client.set_registered_model_alias(name, alias, version)
    return version


def log_state_dict_version(uri: str, artifact_root: Path, name: str, model) -> str:
    """Log `model.state_dict()` with mlflow.pytorch.log_state_dict and register that folder as a version (MLflow 3's
    register_model("runs:/...") looks for a logged model, so the folder is registered by its artifact URI)."""
    with _tracking(uri) as mlflow:
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("training")
        exp_id = exp.experiment_id if exp else client.create_experiment("training", artifact_location=artifact_root.as_uri())
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.pytorch.log_state_dict(model.state_dict(), artifact_path="weights")
        mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/weights", run_id=run.info.run_id)
    return str(mv.version)
