#!/bin/sh
# The entrypoint of every run's container. In this order: the setup hooks (variations that must
# act before the environment is read, so that the manifest records what the job will see), the
# environment probes, the hooks that act just before the job, and the job itself, exec'd so that
# it keeps the container's PID and signals.
#
# reprun renders it (orchestrator/execution/entrypoint.py): the marker is filled in, and each
# ": @NAME@" line (a no-op as it stands) is replaced by the named parts, templates of this folder.
# shellcheck disable=SC2034  # read by the probe sections that go in below
reprun_marker='@MARKER@'
: @SETUP_HOOKS@
{
: @PROBES@
} > /reprun/manifest.txt
: @BEFORE_EXEC_HOOKS@
exec "$@"
