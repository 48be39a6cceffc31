"""Input/output at the edges: safe loading, checkpoints, pictures, the gallery."""
