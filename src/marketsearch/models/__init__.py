"""Model builders and trainers."""
