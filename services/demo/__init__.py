"""The demo: a user of the product — one runner (loop.py) and a scenario per data set (`make demo TASK=…`)."""
