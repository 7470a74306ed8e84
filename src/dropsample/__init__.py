"""dropsample: dropout at training time vs. decoding at inference, on a small GPT."""

__version__ = "0.1.0"
