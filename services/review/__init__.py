"""The review page: people fix labels where it matters (disagreements first), in a browser."""
