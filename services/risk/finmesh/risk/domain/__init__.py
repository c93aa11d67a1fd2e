"""Risk rules without I/O: features in, score and decision out."""
