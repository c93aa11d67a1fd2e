"""Identity rules without I/O: identity numbers, contact formats, masking."""
