"""The embedded default and what exists for demos: the tiny demo checkpoints (checkpoint.py), the `random:<preset>`
full-size shapes (presets.py) and synthetic images (images.py: the server's warm-up inputs and the bench datasets).
Kept out of models/ (which holds models) and server/ so production code paths name their demo dependencies."""
