"""Notify rules without I/O: which notifications an event asks for, templates."""
