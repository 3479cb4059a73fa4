"""`histoscan cv`: the one command that composes two stages (train each fold, evaluate it on its held-out fold).

Stages never import each other, so the composition sits in its own layer above them, below the CLI.
"""
