python3 /reprun/pyprobe.py
