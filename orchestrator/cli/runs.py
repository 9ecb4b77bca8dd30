"""`reprun runs`: list, show, approve and audit the recorded runs."""
from __future__ import annotations

import json
from typing import Optional

import typer

from orchestrator.cli.shared import open_store, tabulate
from orchestrator.errors import ExitCode

runs_app = typer.Typer(help="List and show recorded runs (for audits).", no_args_is_help=False)


@runs_app.callback(invoke_without_command=True)
def runs_list(ctx: typer.Context,
              spec: Optional[str] = typer.Option(None, help="Only runs of this spec name."),
              status: Optional[str] = typer.Option(None, help="succeeded, failed, interrupted, error, running."),
              since: Optional[str] = typer.Option(None, help="Started at or after: an ISO date or date-time (UTC unless an offset is given), or a time ago (30m, 12h, 7d)."),
              until: Optional[str] = typer.Option(None, help="Started before: as --since."),
              limit: int = typer.Option(50, help="At most this many (newest first)."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """List recorded runs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator.workflows.runs import run_filter
    wanted = run_filter(spec=spec, status=status, since=since, until=until)
    store = open_store(ctx)
    summaries = store.list(spec=wanted.spec, status=wanted.status, limit=limit,
                           since=wanted.since, until=wanted.until)
    if as_json:
        typer.echo(json.dumps([s.__dict__ for s in summaries], indent=2))
        return
    rows = [(s.id, s.spec, s.status, s.started_at[:19].replace("T", " "),
             "" if s.duration_s is None else f"{s.duration_s:.1f}s",
             (s.image_id or "")[7:19], s.note or "") for s in summaries]
    if rows:
        typer.echo(tabulate(rows, headers=["run", "spec", "status", "started (UTC)", "took",
                                           "image", "note"]))
    elif wanted.narrows and store.list(limit=1):
        typer.echo("no runs match these filters; `reprun runs` lists them all")
    else:
        typer.echo("no runs recorded")


@runs_app.command("approve")
def runs_approve(ctx: typer.Context, run_id: str,
                 reason: str = typer.Option(..., "--reason", help="Why this run is the accepted one."),
                 by: Optional[str] = typer.Option(None, "--by", help="Who approves (default: the current user).")) -> None:
    """Mark a run as the accepted baseline of its spec (who, when, why are kept)."""
    from orchestrator.store.baselines import approve
    approval = approve(open_store(ctx), run_id, reason=reason, by=by)
    typer.echo(f"run {approval.run_id} is now the baseline of {approval.spec} "
               f"(approved by {approval.approved_by} at {approval.approved_at})")


@runs_app.command("show")
def runs_show(ctx: typer.Context, run_id: str,
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Print one run record readably (or as JSON)."""
    from orchestrator.reports.record import render_record
    from orchestrator.store.baselines import baseline_of
    from orchestrator.store.db import record_json
    store = open_store(ctx)
    record = store.get(run_id)
    if as_json:
        typer.echo(record_json(record))
        return
    typer.echo(render_record(record, baseline=baseline_of(store, record.inputs.spec_name)))


@runs_app.command("verify")
def runs_verify(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Prove no stored record, log or artifact was altered or removed (exit 1 naming any that was)."""
    from orchestrator.store.integrity import audit_store
    from orchestrator.workflows.runs import audit_as_dict
    store = open_store(ctx, repair=False)
    repaired = store.repair()
    audit = audit_store(store)
    if as_json:
        typer.echo(json.dumps(audit_as_dict(audit, repaired), indent=2))
    else:
        _print_audit(audit, repaired)
    if not audit.intact:
        raise typer.Exit(int(ExitCode.DIFFERS))


def _print_audit(audit, repaired) -> None:
    for line in repaired:
        typer.echo(f"repaired {line}")
    typer.echo(f"store {audit.root}: {audit.records} records in the chain"
               + (f", newest #{audit.head_seq} (run {audit.head_run}) sha256:{audit.head_sha256}"
                  if audit.records else ""))
    if audit.unrecorded:
        typer.echo(f"{len(audit.unrecorded)} runs were interrupted before a record was written: "
                   + ", ".join(audit.unrecorded))
    if audit.running:
        typer.echo(f"{len(audit.running)} runs are still going: {', '.join(audit.running)}")
    if audit.intact:
        typer.echo(f"re-hashed {audit.records} records, {audit.logs} logs and "
                   f"{audit.artifacts} artifacts: nothing was altered or removed.")
    else:
        typer.echo(f"{len(audit.problems)} problems: the store was altered after the fact", err=True)
        for problem in audit.problems:
            typer.echo(f"  {problem}", err=True)
