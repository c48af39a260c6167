"""Process-reward scorers: the Q-value head, self-evaluation and rule checks."""
