"""``key=value`` command-line arguments into a typed settings dataclass (via OmegaConf), shared
by ``python -m recozoo.serve``, ``python -m recozoo.recommend`` and the load test."""

from __future__ import annotations

from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


def parse_settings(cls: type[T], argv: list[str]) -> T:
    """``cls`` (a dataclass) filled from ``key=value`` arguments; unknown keys, missing required
    keys and values of the wrong type raise `SystemExit` with a message naming them.

    Example:
        >>> parse_settings(ServeSettings, ["run=logs/ease", "port=8080"]).port
        8080
    """
    bad = [arg for arg in argv if "=" not in arg]
    if bad:
        raise SystemExit(f"expected key=value arguments, got {bad}; keys: "
                         f"{', '.join(cls.__dataclass_fields__)}")
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(argv))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise SystemExit(f"missing required argument(s): {', '.join(f'{m}=...' for m in missing)}")
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        raise SystemExit(f"bad argument: {str(error).splitlines()[0]}; keys: "
                         f"{', '.join(cls.__dataclass_fields__)}") from None
