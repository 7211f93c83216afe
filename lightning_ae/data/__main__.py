"""``python -m lightning_ae.data ROOT OUTPUT_DIR [...]``: the same as ``lightning-ae-prepare``."""

from lightning_ae.data.streaming import main

main()
