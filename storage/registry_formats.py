"""Moved to the `sources` package (sources/pt2.py, sources/state_dicts.py, sources/mlflow_layout.py); this module
re-exports the old names for one release so that `storage.registry_formats` imports keep working."""
from sources.errors import SourceFormatError as RegistryFormatError
from sources.mlflow_layout import PICKLE_OPT_IN, describe_layout, pickle_refusal, pickled_model_state_dict, read_mlmodel
from sources.pt2 import PT2_DTYPES, PT2_STRIDED_LAYOUT, pt2_state_dict
from sources.state_dicts import STATE_DICT_SUFFIXES
from sources.state_dicts import read_state_dict as state_dict_file

__all__ = ["PICKLE_OPT_IN", "PT2_DTYPES", "PT2_STRIDED_LAYOUT", "RegistryFormatError", "STATE_DICT_SUFFIXES",
           "describe_layout", "pickle_refusal", "pickled_model_state_dict", "pt2_state_dict", "read_mlmodel",
           "state_dict_file"]
