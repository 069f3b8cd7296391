"""A job's parameters as typed form fields, built from the JSON schema of its kind's Params that the engine publishes
(GET /job-kinds): numbers with their bounds, switches, choices, lists and small maps as short text. The engine
validates what is submitted; the form only makes the right thing easy to type."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st


def field_type(prop: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the non-null schema of a property, whether it may be None), with a $ref resolved."""
    options = prop.get("anyOf") or [prop]
    typed = [o for o in options if o.get("type") != "null"]
    chosen = dict(typed[0]) if typed else {}
    if "$ref" in chosen:
        chosen |= defs.get(chosen["$ref"].rsplit("/", 1)[-1], {})
    return chosen | {k: v for k, v in prop.items() if k in ("description", "default", "title")}, len(typed) < len(
        options)


def parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def list_text(value: list | None) -> str:
    return ", ".join(json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
                     for v in value or [])


def map_text(value: dict | None) -> str:
    return ", ".join(f"{k}={list_text([v])}" for k, v in (value or {}).items())


def parse_list(text: str) -> list:
    return [parse_scalar(part.strip()) for part in text.split(",") if part.strip()]


def parse_map(text: str) -> dict:
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    bad = [p[0] for p in pairs if len(p) != 2]
    if bad:
        raise ValueError(f"write name=value pairs separated by commas (not {bad[0].strip()!r})")
    return {k.strip(): parse_scalar(v.strip()) for k, v in pairs}


def params_form(schema: dict[str, Any], values: dict[str, Any], key: str) -> tuple[dict[str, Any], list[str]]:
    """One widget per parameter of `schema`, filled with `values` (else the default). Returns (the parameters
    given — those in `values` and those changed from their default — and the problems of fields that did not
    parse)."""
    defs, out, problems = schema.get("$defs", {}), {}, []
    columns = st.columns(3)
    for index, (name, prop) in enumerate(schema.get("properties", {}).items()):
        kind, optional = field_type(prop, defs)
        current = values.get(name, kind.get("default"))
        where, widget_key, help_text = columns[index % 3], f"{key}__{name}", kind.get("description")
        label = name + ("" if name in values or "default" in kind else " (required)")
        type_ = kind.get("type")
        try:
            if "enum" in kind:
                choices = ([None] if optional else []) + list(kind["enum"])
                value = where.selectbox(label, choices, choices.index(current) if current in choices else 0,
                                        key=widget_key, help=help_text,
                                        format_func=lambda c: "–" if c is None else str(c))
            elif type_ == "boolean":
                value = where.toggle(label, bool(current), key=widget_key, help=help_text)
            elif type_ in ("integer", "number"):
                cast = int if type_ == "integer" else float
                low = kind.get("minimum", kind.get("exclusiveMinimum"))
                high = kind.get("maximum", kind.get("exclusiveMaximum"))
                value = where.number_input(label, None if low is None else cast(low),
                                           None if high is None else cast(high),
                                           None if current is None else cast(current),
                                           step=1 if cast is int else None, key=widget_key, help=help_text,
                                           format=None if cast is int else "%g")
            elif type_ in ("array", "object"):
                text = where.text_input(label, list_text(current) if type_ == "array" else map_text(current),
                                        key=widget_key, help=(help_text or "") + (
                                            " (comma-separated)" if type_ == "array" else
                                            " (name=value, comma-separated)"))
                # empty means "not given" where the parameter may be None: {} would be an answer (no quotas)
                value = None if optional and not text.strip() else \
                    parse_list(text) if type_ == "array" else parse_map(text)
            else:
                text = where.text_input(label, "" if current is None else str(current), key=widget_key,
                                        help=help_text)
                value = None if optional and not text else text
        except ValueError as e:
            problems.append(f"{name}: {e}")
            continue
        if name in values or value != kind.get("default"):
            out[name] = value
    return out, problems
