# cgroup v2 first, then v1; read with the shell's own `read`, one fork fewer per file.
reprun_cg() { [ -r "$2" ] && read -r reprun_v < "$2" && echo "$1=$reprun_v"; }
reprun_cg cpu.max /sys/fs/cgroup/cpu.max
reprun_cg memory.max /sys/fs/cgroup/memory.max
reprun_cg pids.max /sys/fs/cgroup/pids.max
reprun_cg cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_quota_us
reprun_cg cfs_period_us /sys/fs/cgroup/cpu/cpu.cfs_period_us
reprun_cg memory.limit_in_bytes /sys/fs/cgroup/memory/memory.limit_in_bytes
reprun_cg pids.max /sys/fs/cgroup/pids/pids.max
reprun_cg cpuset /sys/fs/cgroup/cpuset.cpus.effective
reprun_cg cpuset /sys/fs/cgroup/cpuset/cpuset.effective_cpus
true
