"""The shadow processor: the small model on live traffic, off the hot path."""
