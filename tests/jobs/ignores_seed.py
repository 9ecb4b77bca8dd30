# Takes {seed} on its command line and never uses it.
import json, sys
json.dump({"loss": 0.125}, open("/out/metrics.json", "w"))
