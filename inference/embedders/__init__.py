"""Local text embedders that need no network and no torch.

Modules:
    minilm: :class:`MiniLMEmbedder`, all-MiniLM-L6-v2 (384-d) as a pure numpy forward pass.
"""
