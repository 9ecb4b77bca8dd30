# GPUs, where the container has nvidia-smi (the engine's NVIDIA runtime mounts it, and the
# devices, into a container that asked for GPUs): one CSV line per GPU, then the banner line
# that names the CUDA version the driver supports. Without nvidia-smi the command is not found
# (127), which is no missing fact: most runs have no GPU.
nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_mode,ecc.mode.current \
  --format=csv && { nvidia-smi | grep -m 1 'CUDA Version' || true; }
