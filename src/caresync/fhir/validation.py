"""Every resource checked by a FHIR model library: ``fhir.resources`` (R4B models).

The library is an optional extra (it brings pydantic): ``pip install
"caresync[fhir]"``. It is imported on first use, so the rest of caresync, and
the mapping itself, work without it; :func:`require_models` raises
MissingExtraError, naming the command to run, when it is absent. Its errors
(pydantic's ValidationError) never escape: they become InvalidFhirError.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from caresync.exceptions import InvalidFhirError, MissingExtraError

__all__ = ["INSTALL_HINT", "require_models", "validate_resource"]

INSTALL_HINT = 'pip install "caresync[fhir]"'
_MAX_ERRORS_SHOWN = 3

ModelLookup = Callable[[str], Any]


@functools.cache
def require_models() -> ModelLookup:
    """The library's lookup from a resource type to its R4B model class.

    Raises MissingExtraError when ``fhir.resources`` (with its R4B models) is not installed.
    """
    try:
        from fhir.resources.R4B import get_fhir_model_class
    except ImportError as exc:
        raise MissingExtraError(
            f"FHIR import and export need the fhir extra, which is not installed ({exc}); "
            f"install it with: {INSTALL_HINT}"
        ) from None
    lookup: ModelLookup = get_fhir_model_class
    return lookup


def validate_resource(resource: Mapping[str, Any], where: str) -> None:
    """Check ``resource`` (JSON) against its FHIR R4B model; InvalidFhirError if it fails.

    ``where`` says where the resource was found (``line 3``, ``entry 2``), for the message.
    """
    lookup = require_models()
    kind = resource.get("resourceType")
    if not isinstance(kind, str) or not kind:
        raise InvalidFhirError(f"{where}: not a FHIR resource (no resourceType)")
    try:
        model = lookup(kind)
    except (KeyError, ValueError, AttributeError, ImportError):
        raise InvalidFhirError(f"{where}: {kind[:80]!r} is not a FHIR R4 resource type") from None
    try:
        model.model_validate(dict(resource))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise InvalidFhirError(f"{where} ({kind}): {_describe(exc)}") from None
    except RecursionError:
        raise InvalidFhirError(f"{where} ({kind}): nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the model library's own faults on odd input
        # (a KeyError or TypeError from deep inside it): the file is refused all the same.
        raise InvalidFhirError(
            f"{where} ({kind}): the FHIR model library could not read it ({type(exc).__name__})"
        ) from None


def _describe(error: ValueError) -> str:
    """The first few problems pydantic found, each as ``element.path: message``."""
    errors: Callable[[], list[dict[str, Any]]] | None = getattr(error, "errors", None)
    if errors is None:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    found = errors()
    shown = []
    for item in found[:_MAX_ERRORS_SHOWN]:
        location = ".".join(str(part) for part in item.get("loc", ())) or "(resource)"
        message = str(item.get("msg", "invalid"))
        shown.append(f"{location}: {message}")
    more = len(found) - len(shown)
    text = "; ".join(shown)
    return text + (f" (and {more} more problem(s))" if more > 0 else "")
