"""Synthetic capability tasks: selective copying, induction heads, MQAR (built-in data)."""
