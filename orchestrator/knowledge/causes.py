"""The table of known causes. Adding a cause is adding an entry; docs/causes.md follows from it.

`interventions` are those whose success points to the cause (execution/interventions.py),
`factors` the --vary factors that expose it (variations/factors.py); `libraries` the Python
distribution names that make it apply to a job (as the manifest lists them), empty for a cause
any Python job can have. `shows` is the manifest fact that says the cause is live in a run (a
dotted path into the manifest, an operator, a value: ("frameworks.torch.num_threads", ">", 1)),
read by the environment probe (manifest/pyprobe.py) before the job starts; an entry whose fact
says it is live is cited with that fact, and first among its library's entries. `test` names
the real-engine test that triggers it on a CPU and checks that reprun names it (the PyTorch
entries' in the image that has torch); an entry without one says why (`untested_because`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KnownCause:
    id: str
    title: str
    looks_like: str
    fix: str
    source: str
    libraries: tuple[str, ...] = ()
    interventions: tuple[str, ...] = ()
    factors: tuple[str, ...] = ()
    on_cpu: bool = True
    shows: tuple[str, str, Any] | None = None      # (manifest path, "==" or ">", value)
    test: str | None = None          # tests/FILE.py::test_name
    untested_because: str | None = None


_TORCH_NOTES = "https://pytorch.org/docs/stable/notes/randomness.html"
_NOT_IN_TEST_IMAGE = "{} is not in the example image the tests run"
_NEEDS_GPU = "needs a GPU; the test machine has none"
_IN_INTERVENTIONS = "tests/test_interventions.py::"
_IN_VARIATIONS = "tests/test_variations.py::"
_IN_TORCH = "tests/test_knowledge_torch.py::"

CAUSES: tuple[KnownCause, ...] = (
    KnownCause(
        "python-random-unseeded", "Python's random module without a seed",
        "runs under identical inputs differ; with the entropy fixed two runs are identical",
        "call `random.seed(int(os.environ[\"REPRUN_SEED\"]))` (or use `random.Random(seed)`) "
        "before the first draw",
        "https://docs.python.org/3/library/random.html#random.seed",
        interventions=("entropy",),
        test=_IN_INTERVENTIONS + "test_each_unseeded_randomness_api_is_named_for_the_entropy"),
    KnownCause(
        "os-urandom-in-results", "os.urandom, secrets or uuid4 feeding the training",
        "runs differ; with the entropy fixed two runs are identical",
        "derive the bytes from REPRUN_SEED (`random.Random(seed).randbytes(n)`); keep "
        "`secrets` for secrets, never for training",
        "https://docs.python.org/3/library/secrets.html",
        interventions=("entropy",),
        test=_IN_INTERVENTIONS + "test_each_unseeded_randomness_api_is_named_for_the_entropy"),
    KnownCause(
        "numpy-rng-unseeded", "NumPy's default_rng() or the legacy global generator unseeded",
        "runs differ; with the entropy fixed two runs are identical; numpy in the manifest",
        "seed `numpy.random.default_rng(int(os.environ[\"REPRUN_SEED\"]))` and pass the "
        "generator down; legacy code: `numpy.random.seed(seed)`",
        "https://numpy.org/doc/stable/reference/random/generator.html",
        libraries=("numpy",), interventions=("entropy",),
        test=_IN_INTERVENTIONS + "test_each_unseeded_randomness_api_is_named_for_the_entropy"),
    KnownCause(
        "sklearn-random-state-none", "scikit-learn estimators with random_state=None",
        "runs differ; with the entropy fixed two runs are identical; scikit-learn in the manifest",
        "pass `random_state=int(os.environ[\"REPRUN_SEED\"])` to every estimator, splitter and "
        "`train_test_split`",
        "https://scikit-learn.org/stable/common_pitfalls.html#controlling-randomness",
        libraries=("scikit-learn",), interventions=("entropy",),
        test=_IN_INTERVENTIONS + "test_each_unseeded_randomness_api_is_named_for_the_entropy"),
    KnownCause(
        "sklearn-n-jobs", "scikit-learn's n_jobs=-1: as many workers as CPUs",
        "the result depends on the CPU count (--vary cpus), not on the seed",
        "fix `n_jobs` to a number, and reduce results in a fixed order",
        "https://scikit-learn.org/stable/computing/parallelism.html",
        libraries=("scikit-learn",), interventions=("threads",), factors=("cpus",),
        untested_because=("scikit-learn's estimators give the same result for any n_jobs once "
                          "random_state is set; the CPU-count dependence is tested "
                          "through blas-threads")),
    KnownCause(
        "wall-clock-in-results", "the wall clock read into the results",
        "runs differ; with the wall clock frozen two runs are identical",
        "take times from REPRUN_SEED or SOURCE_DATE_EPOCH, or keep them out of the compared "
        "metrics (`compare.metrics: {name: ignore}`)",
        "https://reproducible-builds.org/docs/timestamps/",
        interventions=("clock",), factors=("time",),
        test=_IN_INTERVENTIONS + "test_a_job_that_reads_the_clock_is_named_for_the_clock"),
    KnownCause(
        "embedded-build-time", "a build time embedded in a document artifact (PDF CreationDate)",
        "only document-like artifacts differ (PDF, SVG, HTML, zip); the model and metrics agree",
        "honour SOURCE_DATE_EPOCH (reprun sets it; matplotlib, LaTeX and zip tools read it), or "
        "leave the documents out of `outputs.artifacts`",
        "https://reproducible-builds.org/specs/source-date-epoch/",
        interventions=("clock",), factors=("time",),
        test=_IN_INTERVENTIONS + "test_a_pdf_that_embeds_the_time_is_ranked_first"),
    KnownCause(
        "object-address-order", "objects ordered by their address (id(), default hash)",
        "runs differ; with address-space randomization off two runs are identical",
        "sort by a key that is data (a name, an index), never by `id()` or an object's default "
        "hash; give classes used in sets a `__hash__` of their own",
        "https://docs.python.org/3/library/functions.html#id",
        interventions=("aslr",),
        test=_IN_INTERVENTIONS + "test_an_address_ordered_set_is_named_for_address_randomization"),
    KnownCause(
        "pythonhashseed", "str and bytes hashing: set and dict-of-str order",
        "the result depends on the Python hash seed (--vary hash-seed)",
        "sort sets before iterating them; reprun pins PYTHONHASHSEED=0, so this shows only "
        "when the job runs elsewhere",
        "https://docs.python.org/3/using/cmdline.html#envvar-PYTHONHASHSEED",
        factors=("hash-seed",),
        test=_IN_VARIATIONS + "test_set_iteration_order_names_the_hash_seed"),
    KnownCause(
        "parallel-reduction-order", "a parallel reduction summed in completion order",
        "runs differ in the last digits of a float metric; with one thread two runs are "
        "identical",
        "reduce in a fixed order (collect per-worker partial sums by worker index), or use "
        "`math.fsum`",
        "https://docs.python.org/3/library/math.html#math.fsum",
        interventions=("threads",), factors=("cpus",),
        untested_because=("no race in a parallel reduction fires reliably on the two-core "
                          "test machine; "
                          "the one-thread intervention is tested through its CPU count and thread "
                          "variables")),
    KnownCause(
        "blas-threads", "BLAS thread count (OpenBLAS, MKL, BLIS, OpenMP)",
        "the result depends on the CPU count; the manifest's BLAS section shows num_threads",
        "pin OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS (reprun pins them to the "
        "CPU limit), or `threadpoolctl.threadpool_limits(1)`",
        "https://github.com/OpenMathLib/OpenBLAS/wiki/Faq#multi-threaded",
        libraries=("numpy", "scipy"), interventions=("threads",), factors=("cpus",),
        test=(_IN_VARIATIONS
              + "test_a_parallel_float32_sum_depends_on_the_cpu_count_and_nothing_else")),
    KnownCause(
        "mkl-cbwr", "Intel MKL picks code paths per CPU (conditional numerical reproducibility)",
        "the same run differs between hosts with different CPU models; mkl in the manifest",
        "set MKL_CBWR=COMPATIBLE (or AVX2) in the spec's env",
        "https://www.intel.com/content/www/us/en/docs/onemkl/developer-guide-linux/2024-0/"
        "obtaining-numerically-reproducible-results.html",
        libraries=("mkl",), untested_because=_NOT_IN_TEST_IMAGE.format("MKL")),
    KnownCause(
        "openblas-coretype", "OpenBLAS picks its kernels for the CPU it finds",
        "the same run differs between hosts; the manifest's BLAS section shows another "
        "architecture",
        "set OPENBLAS_CORETYPE (e.g. Haswell) in the spec's env on every host",
        "https://github.com/OpenMathLib/OpenBLAS/blob/develop/USAGE.md",
        libraries=("numpy", "scipy"),
        untested_because="needs two hosts with different CPU models"),
    KnownCause(
        "torch-manual-seed", "PyTorch's generators unseeded",
        "runs differ; with the entropy fixed two runs are identical; torch in the manifest",
        "`torch.manual_seed(int(os.environ[\"REPRUN_SEED\"]))` before building the model",
        _TORCH_NOTES, libraries=("torch",), interventions=("entropy",),
        test=_IN_TORCH + "test_unseeded_torch_randomness_is_named_for_the_entropy_with_its_entry"),
    KnownCause(
        "torch-deterministic-algorithms", "PyTorch's nondeterministic kernels",
        "runs differ with identical inputs on a GPU; torch in the manifest",
        "`torch.use_deterministic_algorithms(True)` (it raises on an op that has no "
        "deterministic version)",
        _TORCH_NOTES, shows=("frameworks.torch.deterministic_algorithms", "==", False),
        libraries=("torch",), on_cpu=False, untested_because=_NEEDS_GPU),
    KnownCause(
        "torch-cudnn-benchmark", "cuDNN autotuning picks another convolution algorithm",
        "runs differ on a GPU; torch in the manifest with cudnn.benchmark true",
        "`torch.backends.cudnn.benchmark = False` and `torch.backends.cudnn.deterministic = "
        "True`",
        _TORCH_NOTES, shows=("frameworks.torch.cudnn.benchmark", "==", True),
        libraries=("torch",), on_cpu=False, untested_because=_NEEDS_GPU),
    KnownCause(
        "torch-cublas-workspace", "cuBLAS workspaces reused across streams (CUDA 10.2 and later)",
        "runs differ on a GPU; use_deterministic_algorithms raises about CUBLAS_WORKSPACE_CONFIG",
        "set CUBLAS_WORKSPACE_CONFIG=:4096:8 (or :16:8) in the spec's env; needed from CUDA 10.2",
        _TORCH_NOTES, libraries=("torch",), on_cpu=False, untested_because=_NEEDS_GPU),
    KnownCause(
        "torch-dataloader-workers", "DataLoader workers seeded from the base seed in any order",
        "runs differ when num_workers > 0; torch in the manifest",
        "pass `generator=torch.Generator().manual_seed(seed)` and a `worker_init_fn` that seeds "
        "numpy and random from `torch.initial_seed()`",
        _TORCH_NOTES, libraries=("torch",), interventions=("entropy",),
        test=_IN_TORCH + "test_unseeded_torch_randomness_is_named_for_the_entropy_with_its_entry"),
    KnownCause(
        "torch-set-num-threads", "PyTorch's intra-op thread count follows the CPUs",
        "the result depends on the CPU count; torch in the manifest",
        "`torch.set_num_threads(n)` with a fixed n (and OMP_NUM_THREADS, which reprun pins)",
        "https://pytorch.org/docs/stable/generated/torch.set_num_threads.html",
        shows=("frameworks.torch.num_threads", ">", 1),
        libraries=("torch",), interventions=("threads",), factors=("cpus",),
        test=_IN_TORCH + "test_a_sum_split_by_torchs_thread_count_is_named_for_the_cpu_count"),
    KnownCause(
        "tf32-ampere", "TF32 matrix products on Ampere and later GPUs",
        "results differ from a run on an older GPU or the CPU beyond float32 rounding",
        "`torch.backends.cuda.matmul.allow_tf32 = False` and `torch.backends.cudnn.allow_tf32 = "
        "False`; TensorFlow: `tf.config.experimental.enable_tensor_float_32_execution(False)`",
        "https://pytorch.org/docs/stable/notes/cuda.html#tensorfloat-32-tf32-on-ampere-and-later-devices",
        shows=("frameworks.torch.matmul_allow_tf32", "==", True),
        libraries=("torch", "tensorflow"), on_cpu=False, untested_because=_NEEDS_GPU),
    KnownCause(
        "tf-op-determinism", "TensorFlow's nondeterministic ops",
        "runs differ with identical inputs; tensorflow in the manifest",
        "`tf.keras.utils.set_random_seed(seed)` and `tf.config.experimental."
        "enable_op_determinism()` (TensorFlow 2.9 and later; TF_DETERMINISTIC_OPS is deprecated)",
        "https://www.tensorflow.org/api_docs/python/tf/config/experimental/enable_op_determinism",
        shows=("frameworks.tensorflow.op_determinism", "==", False),
        libraries=("tensorflow", "tensorflow-cpu"), interventions=("entropy", "threads"),
        untested_because=_NOT_IN_TEST_IMAGE.format("tensorflow")),
    KnownCause(
        "jax-gpu-deterministic-ops", "XLA's nondeterministic GPU reductions in JAX",
        "runs differ on a GPU; jax in the manifest",
        "set XLA_FLAGS=--xla_gpu_deterministic_ops=true in the spec's env",
        "https://jax.readthedocs.io/en/latest/gpu_performance_tips.html",
        libraries=("jax", "jaxlib"), on_cpu=False, untested_because=_NEEDS_GPU),
    KnownCause(
        "xgboost-threads", "XGBoost's thread count and histogram building",
        "the result depends on the CPU count; xgboost in the manifest",
        "fix `nthread` (n_jobs) and `seed`; on a GPU set `deterministic_histogram`",
        "https://xgboost.readthedocs.io/en/stable/parameter.html",
        shows=("frameworks.xgboost.nthread", ">", 1),
        libraries=("xgboost",), interventions=("threads",), factors=("cpus",),
        untested_because=_NOT_IN_TEST_IMAGE.format("xgboost")),
    KnownCause(
        "lightgbm-deterministic", "LightGBM's parallel histogram building",
        "the result depends on the CPU count; lightgbm in the manifest",
        "`deterministic=True`, `force_row_wise=True` (or force_col_wise), a fixed "
        "`num_threads` and `seed`",
        "https://lightgbm.readthedocs.io/en/latest/Parameters.html#deterministic",
        libraries=("lightgbm",), interventions=("threads",), factors=("cpus",),
        untested_because=_NOT_IN_TEST_IMAGE.format("lightgbm")),
    KnownCause(
        "seed-not-wired", "the job ignores its seed",
        "with another seed (--vary seed) the results stay identical",
        "pass REPRUN_SEED (or the `{seed}` argument) to every generator the job uses",
        "https://docs.python.org/3/library/random.html#random.seed",
        factors=("seed",),
        test=_IN_VARIATIONS + "test_a_job_that_ignores_its_seed_is_named_by_the_seed_factor"),
)
