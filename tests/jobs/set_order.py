# Iterates a set of strings: its order follows the hash seed.
import json
order = list({"alpha", "beta", "gamma", "delta", "epsilon"})
json.dump({"order": sum(len(word) * 10 ** i for i, word in enumerate(order))},
          open("/out/metrics.json", "w"))
