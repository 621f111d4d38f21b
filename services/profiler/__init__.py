"""The profiler: which captured calls are worth graduating to a small model, and what it saves."""
