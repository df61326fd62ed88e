"""How config values appear in the one-sentence errors: as they would be typed on the command line."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def render(value) -> str:
    """``[0.9,0.999]``, ``true``, ``null``: what the user would type, not Python's repr."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value)


def show(node: DictConfig, key: str):
    """``node[key]`` rendered, or as written when it does not resolve."""
    try:
        return render(node.get(key))
    except Exception:  # noqa: BLE001 - an unresolvable value is still worth naming
        return OmegaConf.to_container(node, resolve=False).get(key)


def render_number(x: float) -> str:
    """1e-3 rather than 0.001: how learning rates are written on command lines."""
    if x and abs(x) < 1e-2:
        mantissa, exponent = f"{x:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"
