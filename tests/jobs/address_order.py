# Iterates a set of objects without a __hash__ of their own: the set orders them by address.
# Enough of them that the set's table reaches the address bits that randomization moves (above
# the page offset), so two runs with randomization on part almost surely.
import hashlib
import json
class Node:
    def __init__(self, name): self.name = name
nodes = {Node(n) for n in range(20000)}
order = ",".join(str(n.name) for n in nodes)
digest = hashlib.sha256(order.encode()).digest()
json.dump({"order": int.from_bytes(digest[:6], "big")}, open("/out/metrics.json", "w"))
