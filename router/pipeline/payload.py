"""Request bodies: strict JSON (or form) parsing and JSON Schema validation (validators built once at load)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from jsonschema import exceptions as js_exceptions
from jsonschema import validators as js_validators

from router.errors import PayloadError, SchemaError

MAX_DETAIL = 100  # a 422 lists at most this many violations


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # two parsers may keep different copies: refuse rather than guess
            raise ValueError(f"duplicate key {key[:50]!r}")
        out[key] = value
    return out


def parse_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or PayloadError (400) saying why not."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicate_keys,
        )
    except RecursionError:
        raise PayloadError("body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # our hooks, and ints too long to convert
        raise PayloadError(f"body is not acceptable JSON: {exc}") from None
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else "a scalar"
        raise PayloadError(f"body must be a JSON object, not {kind}")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            # a lone \ud800 is no character; nothing downstream could encode it (RFC 7493 2.1)
            raise PayloadError("body has a string with an unpaired surrogate escape") from None
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


FORM = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 1000  # Slack and Twilio send a few dozen


def is_form(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == FORM


def parse_form(body: bytes, json_fields: Collection[str] = ()) -> dict[str, Any]:
    """A form-encoded body as an object of names to values, or PayloadError (400).

    Names that are in `json_fields` hold JSON (Slack's interactive `payload=`), parsed as strictly
    as a JSON body. A name given twice is refused, as a duplicate JSON key is.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict",
                          max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError:
        raise PayloadError("form body has a %-escape that is not UTF-8") from None
    except ValueError as exc:
        # parse_qsl's own message quotes the field, which may be a credential: say it in our words
        if "Max number of fields" in str(exc):
            raise PayloadError(f"form body has more than {MAX_FORM_FIELDS} fields") from None
        raise PayloadError("form body is not name=value pairs joined by '&'") from None
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise PayloadError(f"form body has the field {name[:50]!r} twice")
        if name in json_fields:
            try:
                out[name] = parse_body(value.encode("utf-8"))
            except PayloadError as exc:
                raise PayloadError(f"form field {name!r}: {exc.message}") from None
        else:
            out[name] = value
    return out


def parse_payload(body: bytes, content_type: str | None, *, forms: bool = False,
                  json_fields: Collection[str] = ()) -> dict[str, Any]:
    """The body as its provider sends it: a form for the providers that send forms (`forms`) when
    the request says it is one, JSON otherwise."""
    if forms and is_form(content_type):
        return parse_form(body, json_fields)
    return parse_body(body)


# --------------------------------------------------------------------------- schemas


def _bundled_dir() -> Path:
    """Installed, the build puts the top-level schemas/ folder at router/schemas; in a source
    checkout (or an editable install) it is the top-level folder itself."""
    here = Path(__file__).resolve().parent.parent  # the router package
    for candidate in (here / "schemas", here.parent / "schemas"):
        if (candidate / "panjaya.json").is_file():
            return candidate
    raise FileNotFoundError(f"the bundled schemas are missing (looked in {here / 'schemas'})")


_FAST_DRAFTS = {
    "http://json-schema.org/draft-04/schema",
    "http://json-schema.org/draft-06/schema",
    "http://json-schema.org/draft-07/schema",
}


def _no_remote_refs(uri: str) -> Any:
    raise ValueError(f"remote $ref not allowed: {uri}")


class SchemaValidator:
    """A JSON Schema validator built once at load.

    jsonschema is the reference and explains every violation for the 422. For drafts 4, 6 and 7
    the schema is also compiled to Python by fastjsonschema, about twenty times faster on the
    valid payloads that are nearly all of the traffic; only when it says "invalid" does jsonschema
    look, and jsonschema's word is final. Remote $refs are never fetched.
    """

    def __init__(self, schema: Any, cls: Any):
        self.reference = cls(schema)
        self.fast: Any = None
        draft = schema.get("$schema", "").rstrip("#") if isinstance(schema, dict) else ""
        if draft in _FAST_DRAFTS:
            try:
                import fastjsonschema

                self.fast = fastjsonschema.compile(
                    schema, handlers={"http": _no_remote_refs, "https": _no_remote_refs}, use_default=False,
                )
            except Exception:  # a schema fastjsonschema cannot compile is still checked by jsonschema
                self.fast = None

    def errors(self, payload: Any) -> Iterator[Any]:
        """The violations, lazily: a caller that stops at a cap pays only for what it took."""
        if self.fast is not None:
            try:
                self.fast(payload)
                return iter(())
            except Exception:
                pass
        return self.reference.iter_errors(payload)


_bundled_cache: dict[str, SchemaValidator] = {}


def bundled_validator(name: str) -> SchemaValidator:
    if name not in _bundled_cache:
        schema = json.loads((_bundled_dir() / name).read_text("utf-8"))
        cls = js_validators.validator_for(schema)
        cls.check_schema(schema)
        _bundled_cache[name] = SchemaValidator(schema, cls)
    return _bundled_cache[name]


def load_validator_file(path: Path, report: Callable[[str], None]) -> Any:
    """A validator for an operator's schema file; problems go to `report` and None is returned."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        report(f"schema file not found: {path}")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        report(f"cannot read schema file {path}: {getattr(exc, 'strerror', None) or exc}")
        return None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        report(f"schema file {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        return None
    if not isinstance(schema, (dict, bool)):
        report(f"schema file {path} is not a JSON Schema (expected an object)")
        return None
    cls = js_validators.validator_for(schema, default=js_validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except js_exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        report(f"schema file {path} is not a valid JSON Schema: at {where}: {exc.message}")
        return None
    try:
        return SchemaValidator(schema, cls)
    except Exception as exc:  # e.g. an unresolvable $ref discovered on build
        report(f"schema file {path} cannot be used: {exc}")
        return None


def validate(validator: Any, payload: dict[str, Any]) -> None:
    """Raise SchemaError with the 422 `detail` list when the payload breaks its schema.

    Violations are taken from the validator lazily, in its own (document) order, and no more are
    computed once MAX_DETAIL entries are listed: a body with 50,000 violations costs what 100 do.
    """
    if validator is None:
        return
    detail: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for error in validator.errors(payload):
        loc = ["body", *error.absolute_path]
        if error.validator == "required" and isinstance(error.instance, dict):
            # one entry per missing field, located at the field, as Panjaya's 422 does
            for name in error.validator_value:
                if name not in error.instance and (tuple(loc), name) not in seen:
                    seen.add((tuple(loc), name))
                    detail.append({"loc": [*loc, name], "msg": "field required", "type": "missing"})
        else:
            key = (tuple(str(p) for p in loc), error.message)
            if key not in seen:
                seen.add(key)
                detail.append({"loc": loc, "msg": _short(error.message), "type": str(error.validator)})
        if len(detail) >= MAX_DETAIL:
            break
    if detail:
        raise SchemaError(detail[:MAX_DETAIL])


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."
