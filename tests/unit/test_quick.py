"""quick_init: the per-record frozen dataclasses get a faster __init__ that builds the same objects."""
from __future__ import annotations

import dataclasses

import pytest

from services.common.quick import quick_init
from services.common.streams import Item, Meta
from services.curator.logic import CuratedCall


# Meta's own fields, with the dataclass's generated __init__ (not quick_init's): what quick_init must match.
Generated = dataclasses.make_dataclass(
    "Generated", [(f.name, f.type, dataclasses.field(default=f.default)) if f.default is not dataclasses.MISSING
                  else (f.name, f.type) for f in dataclasses.fields(Meta)], frozen=True)


@pytest.mark.parametrize("args, kwargs", [(("t", 1, 2), {}), (("t", 1, 2, b"k", 1.5, (("h", b"v"),)), {}),
                                          (("t",), {"offset": 3, "partition": 0, "headers": ()})])
def test_quick_init_builds_what_the_generated_init_builds(args, kwargs):
    quick, generated = Meta(*args, **kwargs), Generated(*args, **kwargs)
    assert quick.__dict__ == generated.__dict__ and list(quick.__dict__) == list(generated.__dict__)
    assert hash(quick) == hash(Meta(*args, **kwargs)) and quick == Meta(*args, **kwargs)
    assert repr(quick) == repr(generated).replace("Generated", "Meta")
    assert dataclasses.asdict(quick) == dataclasses.asdict(generated)
    assert dataclasses.replace(quick, offset=9).offset == 9
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.offset = 5


def test_quick_init_keeps_the_signature_and_its_errors():
    with pytest.raises(TypeError):
        Meta("t", 1)  # offset is required
    with pytest.raises(TypeError):
        Meta("t", 1, 2, nope=3)
    item = Item(value="v", meta=Meta("t", 0, 0))
    assert item == Item("v", Meta("t", 0, 0)) and item.value == "v"
    call = CuratedCall("c1", "t", 5, "in", "ab", "train", None)
    assert not call.usable and call.as_dict()["split"] == "train"


def test_quick_init_refuses_what_it_cannot_do_faithfully():
    @dataclasses.dataclass
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Factory:
        a: list = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True)
    class Post:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, Factory, Post):
        with pytest.raises(TypeError):
            quick_init(cls)
