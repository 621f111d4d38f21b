"""The curator: captured calls -> a deduplicated, split, reviewed dataset and its snapshots."""
