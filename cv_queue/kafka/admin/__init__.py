"""The broker's resources: the queue's topics, the names of its other resources, the principals' ACLs, and lag.

- `topics.py`: topics as declarative specs and the provisioning that converges the broker onto them (start here).
- `names.py`: the layout topic, its reader group and the presence group.
- `acls.py`: least-privilege ACLs of the queue's principals, applied idempotently and printed as the README's table.
- `lag.py`: end offsets, committed offsets and lag per partition, with the AdminClient only.

May import `client/` and `wire/`; never fleet, metrics, worker or replay (the fleet builds on these topics and names,
not the other way round).
"""
