"""The curator's shard files: reads by key stay right and their prepared statements stay few."""
from __future__ import annotations

from services.curator.shards import SELECT_KEYS, ShardStore, padded


def test_padded_repeats_the_last_key_up_to_a_power_of_two():
    assert padded([]) == []
    assert padded(["a"]) == ["a"]
    assert padded(["a", "b", "c"]) == ["a", "b", "c", "c"]
    assert padded(list("abcde")) == list("abcde") + ["e"] * 3
    assert {len(padded(["k"] * n)) for n in range(1, SELECT_KEYS + 1)} == {2 ** i for i in range(10)}


def test_reads_of_every_batch_size_find_their_keys_with_a_few_statements(tmp_path):
    store = ShardStore(tmp_path)
    db = store.reset(0)
    entries = {f"t/{i:04d}": b"record %d" % i for i in range(1200)}
    store.put_many(0, entries.items())
    in_lists: set[int] = set()  # the IN list's length of each SELECT: one prepared statement each
    db.set_trace_callback(lambda sql: sql.startswith("SELECT") and in_lists.add(sql.split(" IN ")[1].count(",") + 1))
    keys = list(entries)
    for n in range(1, 1100, 7):  # sizes over, at and under the chunk, plus a key not in the file
        asked = keys[n % 100:n % 100 + n] + ["t/missing"]
        assert store.get_many(0, asked) == {k: entries[k] for k in asked if k in entries}
    assert 0 < len(in_lists) <= 10 and max(in_lists) == SELECT_KEYS, sorted(in_lists)
    store.close(0)
