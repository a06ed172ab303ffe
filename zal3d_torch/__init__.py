"""Learned branches of 3DzAL (PointNet++ encoder, losses, normalcy classifier) in torch."""
