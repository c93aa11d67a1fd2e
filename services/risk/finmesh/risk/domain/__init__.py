"""Risk rules without I/O: features in, score, decision, warning level and AML findings out."""
