"""A run record, readable by a person: what ran, where, and what came out."""
from __future__ import annotations

from tabulate import tabulate

from orchestrator.compare.comparison import natural_key
from orchestrator.compare.numbers import metric_value_text
from orchestrator.records import RunRecord


def render_record(record: RunRecord, *, baseline=None) -> str:
    """`baseline`: the spec's current approval (baselines.Approval), if any."""
    inputs, env, outputs = record.inputs, record.environment, record.outputs
    if baseline is None:
        baseline_text = "no baseline approved for this spec"
    elif baseline.run_id == record.id:
        baseline_text = (f"THIS RUN is the baseline (approved by {baseline.approved_by} at "
                         f"{baseline.approved_at}: {baseline.reason})")
    else:
        baseline_text = f"run {baseline.run_id}"
    facts = [
        ("run", record.id),
        ("baseline", baseline_text),
        ("spec", f"{inputs.spec_name} ({inputs.spec_path})"),
        ("status", record.status + (f": {outputs.message}" if outputs and outputs.message else "")),
        ("started / finished", f"{record.started_at} / {record.finished_at}"),
        ("image", inputs.image.id),
        ("repo digest", inputs.image.repo_digest or "-"),
        ("dataset", f"{inputs.dataset.path} sha256:{inputs.dataset.sha256} "
                    f"({inputs.dataset.kind}, {inputs.dataset.files} files, {inputs.dataset.bytes} bytes)"
         if inputs.dataset else "none (the job makes its own data)"),
        ("seed", inputs.seed),
        ("command", " ".join(inputs.command)),
        ("params", inputs.params or "-"),
        ("resources", ", ".join(f"{k}={v}" for k, v in inputs.resources.items())),
        ("container", f"network={inputs.container.get('network')}, user={inputs.container.get('user')}, "
                      f"read-only root={inputs.container.get('read_only_root')}, "
                      f"hostname={inputs.container.get('hostname')}"),
        ("os", env.os.get("pretty_name", "-")),
        ("kernel", env.kernel or "-"),
        ("python", env.python.get("version", "-")),
        ("packages", f"{len(env.os_packages)} {env.package_manager or 'OS'} packages, "
                     f"{len(env.python_distributions)} Python distributions"),
        ("blas", ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads)"
                           for b in env.blas) or "-"),
        ("cpu", f"{env.cpu.get('model', '-')} × {env.cpu.get('count', '?')}, limits {env.limits}"),
        ("engine", f"{env.host.get('engine_version', '-')} ({env.host.get('storage_driver', '-')})"),
    ]
    if env.missing:
        facts.append(("facts missing", "; ".join(f"{k}: {v}" for k, v in env.missing.items())))
    if outputs:
        facts.append(("exit / took", f"{outputs.exit_code} / {outputs.duration_s:.1f}s"))
        facts.append(("log", f"{outputs.log_bytes} bytes sha256:{outputs.log_sha256}"
                             + (" (capped)" if outputs.log_truncated else "")))
    parts = [tabulate(facts, tablefmt="plain")]
    if outputs and outputs.metrics:
        parts.append(tabulate([(name, metric_value_text(outputs.metrics[name]))
                               for name in sorted(outputs.metrics, key=natural_key)],
                              headers=["metric", "value"], disable_numparse=True))
    if outputs and outputs.artifacts:
        parts.append(tabulate([(name, a.sha256[:16], a.size) for name, a in sorted(outputs.artifacts.items())],
                              headers=["artifact", "sha256", "bytes"]))
    return "\n\n".join(parts)
