"""Scale-out: logical axes, sharding rules and device meshes (see parallel/sharding.py)."""
