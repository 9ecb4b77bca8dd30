"""`reprun check`: the scheduled rebuild check over many specs."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.cli.shared import (backend_option, observer, open_backend, open_store, say,
                                     tabulate)


def check(ctx: typer.Context,
          specs: List[Path] = typer.Argument(None, help="Spec files (default: specs/*.yaml)."),
          jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Check this many specs at once."),
          junit_path: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML summary."),
          report_dir: Optional[Path] = typer.Option(None, "--report-dir",
                                                    help="Write each spec's report here (Markdown and HTML)."),
          backend: Optional[str] = backend_option(),
          quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Scheduled rebuild check: environment drift of rebuilt images, and results against baselines."""
    from orchestrator.workflows import check as workflow
    paths = workflow.specs_to_check(specs)
    workflow.refuse_unwritable_outputs(junit_path, report_dir)
    store = open_store(ctx)
    results = workflow.check_all(paths, store=store, engine=open_backend(backend),
                                 observer=observer(quiet, parallel=True), jobs=jobs)
    for result in results:
        if result.drift:
            say(f"\n{result.spec_name}: the rebuilt image's environment drifted")
            say(tabulate(workflow.drift_rows(result),
                                headers=["section", "name", "pinned", "rebuilt"]))
    workflow.save_reports(results, store=store, report_dir=report_dir, junit_path=junit_path)
    say("")
    say(tabulate(workflow.summary_rows(results),
                        headers=["spec", "environment drift", "results", "compared with", "exit",
                                 "first cause"]))
    raise typer.Exit(workflow.overall_exit(results))
