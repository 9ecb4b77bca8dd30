"""Compare two model files inside the image that wrote them; reprun mounts this file there.

A pickle (scikit-learn, XGBoost's scikit-learn wrappers, joblib) and a PyTorch checkpoint are
programs: loading one runs code of the job's choosing, so reprun never loads one on the host.
This script runs with the job's hermetic settings (no network, read-only root, every
capability dropped) and prints one line: `REPRUN-ANSWER {json}` with per-parameter figures
from figures.py, mounted beside it. It needs only the Python of the image.

Usage: in_image_comparator.py KIND FILE_A FILE_B TOLERANCE_JSON
"""
import json
import os
import sys

ANSWER = "REPRUN-ANSWER "
MAX_DEPTH = 8
MAX_PARTS = 10_000


def answer(value):
    sys.stdout.write(ANSWER + json.dumps(value) + "\n")
    sys.stdout.flush()
    sys.exit(0)


def parameters(value, prefix, into, depth=0):
    """Every numeric array or number inside a fitted model, by a dotted name."""
    import numpy as np
    if len(into) >= MAX_PARTS or depth > MAX_DEPTH:
        return
    if isinstance(value, bool):
        into[prefix] = np.asarray(value)
    elif isinstance(value, (int, float, np.generic)):
        if np.asarray(value).dtype.kind in "biufc":
            into[prefix] = np.asarray(value)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "biufc":
            into[prefix] = value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            parameters(value[key], f"{prefix}.{key}" if prefix else str(key), into, depth + 1)
    elif isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value)
        except ValueError:
            array = None
        if array is not None and array.dtype.kind in "biufc" and array.size:
            into[prefix] = array
        else:
            for i, item in enumerate(value):
                parameters(item, f"{prefix}[{i}]", into, depth + 1)
    elif hasattr(value, "get_booster"):
        parameters(booster_parameters(value.get_booster()), prefix, into, depth + 1)
    elif hasattr(value, "state_dict") and callable(value.state_dict):
        parameters(tensors(value.state_dict()), prefix, into, depth + 1)
    elif hasattr(value, "get_params") and hasattr(value, "__dict__"):
        # A scikit-learn estimator: what fitting learned ends in "_"; nested estimators too.
        fitted = {k: v for k, v in vars(value).items() if k.endswith("_") and not k.startswith("_")}
        nested = {k: v for k, v in vars(value).items()
                  if not k.endswith("_") and (hasattr(v, "get_params") or k == "steps")}
        parameters({**fitted, **nested}, prefix, into, depth + 1)


def tensors(state):
    out = {}
    for key, value in state.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if str(value.dtype) == "torch.bfloat16":
                value = value.float()
            out[key] = value.numpy()
        else:
            out[key] = value
    return out


def booster_parameters(booster):
    return json.loads(bytes(booster.save_raw("json")).decode("utf-8"))


def load_pickle(path):
    try:
        import joblib
        return joblib.load(path)
    except ImportError:
        import pickle
        with open(path, "rb") as handle:
            return pickle.load(handle)


def load_torch(path):
    import torch
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:       # torch before 1.13 has no weights_only
        loaded = torch.load(path, map_location="cpu")
    return tensors(loaded.state_dict() if hasattr(loaded, "state_dict") else loaded)


def load_xgboost(path):
    import xgboost
    booster = xgboost.Booster()
    booster.load_model(path)
    return booster_parameters(booster)


LOADERS = {"pickle": load_pickle, "torch": load_torch, "xgboost": load_xgboost}
LIBRARIES = {"pickle": "the library that pickled the model", "torch": "torch",
             "xgboost": "xgboost"}


def main():
    kind, path_a, path_b, tolerance = sys.argv[1:5]
    tolerance = json.loads(tolerance)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import numpy  # noqa: F401  (figures.py needs it)
        from figures import compare_arrays
    except ImportError:
        answer({"unavailable": "numpy"})
    found = []
    for path in (path_a, path_b):
        params = {}
        try:
            parameters(LOADERS[kind](path), "", params)
        except ImportError as exc:
            answer({"unavailable": getattr(exc, "name", None) or LIBRARIES[kind]})
        except Exception as exc:  # whatever a job's file makes its loader raise
            answer({"failed": f"{type(exc).__name__}: {exc}"[:400]})
        found.append(params)
    a, b = found
    parts = {}
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            parts[name or "(value)"] = {"missing": "a" if name not in a else "b"}
        else:
            parts[name or "(value)"] = compare_arrays(a[name], b[name], tolerance.get("abs"),
                                                      tolerance.get("rel"))
    answer({"parts": parts})


if __name__ == "__main__":
    main()
