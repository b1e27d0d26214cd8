"""The mirror: how remote state becomes rows, and rows become protocol objects again.

- ``ordering``: the pure rules (which observation is newer, how deltas fold), tested with hypothesis;
- ``upsert``: the one upsert every source applies remote objects through;
- ``representation``: the protocol's own shapes made from rows, for every door (API, live pages, feed).

May use: models, conf, signals. Never the client, the services or anything above them.
"""
