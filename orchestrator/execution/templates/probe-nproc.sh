# A subshell, so that the unset does not reach the probes after it.
( unset OMP_NUM_THREADS OMP_THREAD_LIMIT; exec nproc )
