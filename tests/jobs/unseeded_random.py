# Python's random module, never seeded: it seeds itself from the kernel's entropy.
import json, random
json.dump({"draw": random.random()}, open("/out/metrics.json", "w"))
