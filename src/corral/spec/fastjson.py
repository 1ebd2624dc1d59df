"""JSON without importing the `json` package.

`json.decoder` imports `re`, which imports `enum`: about 11 ms, a third of
a `corral-runtime start` or `kill`.  The C scanner and encoder that `json`
itself uses need neither; this is the few lines that drive them.  Output
meant for people (indented) still goes through `json`.
"""

from __future__ import annotations

import _json


class _Options:
    """The attributes json.JSONDecoder gives its scanner, with the defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__


_scan = _json.make_scanner(_Options())


def loads(text: str | bytes):
    """Like json.loads; malformed input raises json.JSONDecodeError (a ValueError)."""
    if isinstance(text, bytes):
        text = text.decode()
    text = text.strip()
    try:
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except Exception:  # noqa: BLE001, S110 - the scanner reports errors through `json`
        pass
    import json  # only for bad input: it words the error precisely

    return json.loads(text)


def _unserializable(value):
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# Go's json.Marshal form, as runc writes it (events, list, hooks' state): no spaces
# after the separators; keys in insertion order, NaN allowed.
_encode = _json.make_encoder(None, _unserializable, _json.encode_basestring_ascii, None,
                             ":", ",", False, False, True)


def dumps(value) -> str:
    return "".join(_encode(value, 0))
