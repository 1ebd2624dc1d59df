"""corral.images: image building, content store, unpack and snapshots."""
