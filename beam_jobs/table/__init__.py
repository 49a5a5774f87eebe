"""A dataset as a table of snapshots: its on-disk layout, manifests, commits, leases, integrity, TFDS metadata."""
