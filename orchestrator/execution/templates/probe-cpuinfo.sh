cat /proc/cpuinfo
