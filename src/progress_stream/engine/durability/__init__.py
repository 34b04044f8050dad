"""Durability: state-file snapshots, the shared Redis store and the takeover of streams held elsewhere."""
