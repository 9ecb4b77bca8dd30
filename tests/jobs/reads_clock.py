# Writes the wall clock into its metrics: identical only with the clock frozen.
import json, sys, time
json.dump({"started": time.time()}, open("/out/metrics.json", "w"))
