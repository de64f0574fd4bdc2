"""3D feature extractors: (N, 1, D, H, W) float32 volumes in, (N, F) float features out."""
