#!/bin/sh
# The entrypoint of every run's container. In this order: the setup hooks (variations that must
# act before the environment is read, so that the manifest records what the job will see), the
# environment probes, the hooks that act just before the job, and the job itself, exec'd so that
# it keeps the container's PID and signals.
#
# The probes print the manifest at the start of the container's output, ended by the marker's
# `end` line, before the job exists: reprun takes it from there (manifest/probes.py,
# ManifestCapture), so nothing the job does later can change it, and it is never a file the job
# could rewrite (/reprun is mounted read-only).
#
# reprun renders it (orchestrator/execution/entrypoint.py): the marker is filled in, and each
# ": @NAME@" line (a no-op as it stands) is replaced by the named parts, templates of this folder.
# shellcheck disable=SC2034  # read by the probe sections that go in below
reprun_marker='@MARKER@'
: @SETUP_HOOKS@
{
: @PROBES@
echo "$reprun_marker end"
}
: @BEFORE_EXEC_HOOKS@
exec "$@"
