"""Neural-network building blocks: backbones, heads, the exported encoder."""
