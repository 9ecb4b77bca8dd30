# shellcheck disable=SC2154  # reprun_marker is set by the entrypoint this section goes into
# One probe's section of the manifest, framed by the run's random marker so that nothing a
# probe prints can forge a section. A group, not a subshell: one fork fewer per probe. The echo
# after it keeps the frame intact after output that does not end in a newline.
echo "$reprun_marker @NAME@"
{
: @PROBE@
} 2>/dev/null
# shellcheck disable=SC2320  # the probe's status, whatever its last command is
reprun_status=$?
echo
echo "$reprun_marker @NAME@ exit $reprun_status"
