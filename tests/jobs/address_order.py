# Orders objects by their address, as a set of objects without __hash__ does.
import json
class Node:
    def __init__(self, name): self.name = name
nodes = [Node(n) for n in "abcdefgh"]
order = "".join(n.name for n in sorted(nodes, key=lambda n: id(n) % 4099))
json.dump({"order": int.from_bytes(order.encode(), "big") % 1000003}, open("/out/metrics.json", "w"))
