"""The demo: the whole graduation loop on Banking77, end to end, with a report (`make demo`)."""
