"""Game guides -> self-instruct question-answer data (placeholder; the package docstring and Task come at merge)."""
