"""The Jobs page's typed fields: lists and small maps read and write as short text, and a field that does not parse
says how to write it."""

import pytest

from studio.params_form import field_type, list_text, map_text, parse_list, parse_map


def test_lists_and_maps_round_trip_through_their_text():
    assert parse_list(list_text([16, 32, 64])) == [16, 32, 64]
    assert parse_list(list_text([False, False, True])) == [False, False, True]
    assert parse_map(map_text({"depth": 6, "patch_size": 8})) == {"depth": 6, "patch_size": 8}
    assert parse_map(map_text({"vasc": 8.0})) == {"vasc": 8.0}
    assert parse_list("") == [] and parse_map("") == {}
    with pytest.raises(ValueError, match="name=value"):
        parse_map("depth 6")


def test_an_optional_field_and_a_referenced_choice_are_read_from_the_schema():
    defs = {"Rule": {"enum": ["majority", "fixed"], "type": "string"}}
    kind, optional = field_type({"anyOf": [{"$ref": "#/$defs/Rule"}, {"type": "null"}], "default": None}, defs)
    assert optional and kind["enum"] == ["majority", "fixed"] and kind["default"] is None
    kind, optional = field_type({"type": "integer", "minimum": 1, "default": 4}, defs)
    assert not optional and kind["minimum"] == 1
