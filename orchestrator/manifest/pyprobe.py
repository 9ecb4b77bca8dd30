"""Runs inside the training container, with the image's own Python, before the job starts.

Prints one JSON object: the interpreter, every installed distribution, the BLAS/OpenMP
libraries with their thread counts, and the determinism settings of the ML frameworks the image
carries (what the knowledge base's entries look at, orchestrator/knowledge). Must run on any
Python 3 with only the standard library; each part that fails is reported under "missing"
instead of failing.
"""
import json
import platform
import signal
import sys
import time

# The frameworks are imported only when installed, and all of them within this many seconds:
# importing torch or tensorflow takes seconds, and a broken install may hang.
FRAMEWORKS_BUDGET_SECONDS = 20.0

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



def _torch(torch):
    facts = {"version": torch.__version__, "num_threads": torch.get_num_threads(),
             "num_interop_threads": torch.get_num_interop_threads(),
             "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
             "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    cudnn = torch.backends.cudnn
    facts["cudnn"] = {"version": cudnn.version() if cudnn.is_available() else None,
                      "benchmark": cudnn.benchmark, "deterministic": cudnn.deterministic,
                      "allow_tf32": cudnn.allow_tf32}
    facts["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    # Only the parallel part of the build configuration: the rest is compiler flags.
    parallel = torch.__config__.parallel_info()
    facts["parallel"] = [line.strip() for line in parallel.splitlines()
                         if line.strip() and not line.startswith("--")]
    return facts


def _tensorflow(tf):
    facts = {"version": tf.__version__}
    build = tf.sysconfig.get_build_info()
    facts["cuda"], facts["cudnn"] = build.get("cuda_version"), build.get("cudnn_version")
    facts["op_determinism"] = tf.config.experimental.is_op_determinism_enabled()
    facts["intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    facts["inter_op_threads"] = tf.config.threading.get_inter_op_parallelism_threads()
    return facts


def _jax(jax):
    import os
    return {"version": jax.__version__, "backend": jax.default_backend(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _xgboost(xgb):
    config = xgb.get_config()
    return {"version": xgb.__version__, "nthread": config.get("nthread"),
            "build": {k: v for k, v in xgb.build_info().items()
                      if k in ("USE_CUDA", "USE_OPENMP", "USE_NCCL")}}


def _lightgbm(lgb):
    return {"version": lgb.__version__}


def _threadpoolctl(tpc):
    return {"version": tpc.__version__,
            "limits": {lib["internal_api"]: lib["num_threads"] for lib in tpc.threadpool_info()}}


# distribution name (as installed), module, what is read of it
FRAMEWORKS = (("torch", "torch", _torch), ("tensorflow", "tensorflow", _tensorflow),
              ("tensorflow-cpu", "tensorflow", _tensorflow), ("jax", "jax", _jax),
              ("xgboost", "xgboost", _xgboost), ("lightgbm", "lightgbm", _lightgbm),
              ("threadpoolctl", "threadpoolctl", _threadpoolctl))


class _OverBudget(Exception):
    pass


def _over_budget(signum, frame):
    raise _OverBudget()


def framework_facts(installed, budget=FRAMEWORKS_BUDGET_SECONDS):
    """{module: facts} of the installed frameworks, and {module: why} of those not read."""
    found, missing = {}, {}
    names = {name.lower().replace("_", "-") for name in installed}
    deadline = time.monotonic() + budget
    previous = signal.signal(signal.SIGALRM, _over_budget)
    try:
        for dist, module, read in FRAMEWORKS:
            if dist not in names or module in found:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                missing[module] = "not read: the probe's %gs for frameworks ran out" % budget
                continue
            signal.setitimer(signal.ITIMER_REAL, left)
            try:
                found[module] = read(__import__(module))
            except _OverBudget:
                missing[module] = "not read: importing it took over the probe's %gs" % budget
            except BaseException as exc:  # a broken framework must not fail the run
                missing[module] = "%s: %s" % (type(exc).__name__, exc)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return found, missing


if __name__ == "__main__":
    facts["frameworks"], unread = framework_facts(facts["distributions"])
    facts["missing"].update(("frameworks." + name, why) for name, why in unread.items())
    json.dump(facts, sys.stdout, default=str)

