"""Runs inside the training container, with the image's own Python, before the job starts.

Prints one JSON object: the interpreter, every installed distribution, and the BLAS/OpenMP
libraries with their thread counts. Must run on any Python 3 with only the standard library;
each part that fails is reported under "missing" instead of failing.
"""
import json
import platform
import sys

facts = {"python": {"version": platform.python_version(), "executable": sys.executable},
         "distributions": {}, "blas": [], "missing": {}}

try:
    from importlib import metadata
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            facts["distributions"][name] = dist.version
except Exception as exc:  # an unreadable site-packages must not fail the run
    facts["missing"]["python_distributions"] = "%s: %s" % (type(exc).__name__, exc)

# BLAS and OpenMP only show up in threadpoolctl once a library has loaded them.
for module in ("numpy", "scipy.linalg", "sklearn"):
    try:
        __import__(module)
    except Exception:
        pass
try:
    import threadpoolctl
    facts["blas"] = threadpoolctl.threadpool_info()
except ImportError:
    facts["missing"]["blas"] = "threadpoolctl is not installed in the image"
except Exception as exc:
    facts["missing"]["blas"] = "%s: %s" % (type(exc).__name__, exc)

json.dump(facts, sys.stdout, default=str)
