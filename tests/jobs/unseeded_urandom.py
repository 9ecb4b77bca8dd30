# os.urandom and secrets, straight into the results.
import json, os, secrets
value = int.from_bytes(os.urandom(4), "big") + secrets.randbits(16)
json.dump({"draw": value}, open("/out/metrics.json", "w"))
