# Iterates a set of objects without a __hash__ of their own: the set orders them by address.
import json
class Node:
    def __init__(self, name): self.name = name
nodes = {Node(n) for n in "abcdefgh"}
order = "".join(n.name for n in nodes)
json.dump({"order": int.from_bytes(order.encode(), "big") % 1000003}, open("/out/metrics.json", "w"))
