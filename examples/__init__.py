"""Examples for optax_muon: Muon-family optimizers against AdamW on three tasks.

Run ``python examples/compare.py --help``; see ``examples/README.md``.
"""
