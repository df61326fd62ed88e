"""Errors meant for the person at the keyboard: one sentence naming the field, the value and the fix.

run.py turns whatever ends a run into one line with :func:`explain`: our own ``UserError``, and the bad
inputs Hydra and OmegaConf report (a config group option that does not exist, a misspelt key, a value of
the wrong type for the schema, an override that does not parse, a value left ``???``, an object its config
cannot build). They exit with status 2 and no traceback; anything else is a bug, reported in one line with
status 1. HYDRA_FULL_ERROR=1 shows the traceback of both.
"""

from __future__ import annotations

import difflib
import re

from omegaconf import DictConfig, OmegaConf

USER_ERROR_STATUS = 2
FAILURE_STATUS = 1


class UserError(Exception):
    """A configuration or input problem the user can fix; its message is the whole story."""


class ConfigError(UserError):
    """A config value the checks before training refuse (optsweep.preflight)."""


# ------------------------------------------------------------------ how a value appears in a sentence
# As the user would type it on the command line, not as Python's repr.

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


def explain(error: BaseException) -> tuple[str, int]:
    """One line for the end of stderr and the exit status: 2 for a bad input, 1 for anything else."""
    sentence = user_sentence(error)
    if sentence is not None:
        return one_line(sentence), USER_ERROR_STATUS
    return one_line(
        f"{type(error).__name__}: {error} (an unexpected failure, not a recognised bad input: rerun with "
        "HYDRA_FULL_ERROR=1 for the traceback)"
    ), FAILURE_STATUS


def user_sentence(error: BaseException) -> str | None:
    """The sentence for a bad input, or None when ``error`` is not one."""
    if isinstance(error, UserError):
        return _from_worker(error)
    lost = tracking_server_lost(error)
    if lost is not None:
        return str(lost)
    try:
        from hydra.errors import (
            ConfigCompositionException,
            InstantiationException,
            MissingConfigException,
            OverrideParseException,
        )
        from omegaconf.errors import (
            ConfigAttributeError,
            ConfigKeyError,
            ConfigTypeError,
            MissingMandatoryValue,
            OmegaConfBaseException,
            ValidationError,
        )
    except ImportError:  # pragma: no cover - both ship with the project
        return None

    if isinstance(error, MissingConfigException):
        return _missing_option(error)
    if isinstance(error, OverrideParseException):
        detail = [ln for ln in str(error.message).splitlines()
                  if ln.strip() and not ln.startswith(("Error parsing override", "See https://"))]
        return (f"the override '{error.override}' cannot be parsed ({'; '.join(detail) or 'bad syntax'}): write "
                "it as key=value, e.g. optimizer.lr=1e-3, lists as optimizer.betas=[0.9,0.95], and quote values "
                "with spaces or special characters")
    if isinstance(error, InstantiationException):
        cause = error.__cause__
        inner = user_sentence(cause) if cause is not None else None
        if inner is not None:
            return inner
        return _not_buildable(error, cause)
    if isinstance(error, ConfigCompositionException):
        # an override's error is the cause; a config file's, the context
        cause = error.__cause__ or error.__context__
        sentence = None
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and _UNKNOWN_KEY.match(str(cause)):
            sentence = _unknown_key(str(error), cause)
        elif isinstance(cause, (ValidationError, ConfigTypeError)) and getattr(cause, "full_key", None):
            sentence = _wrong_type(str(error), cause)
        if sentence is None:
            return " ".join(s.strip().rstrip(".") + "." for s in str(error).splitlines() if s.strip())[:-1]
        in_file = re.match(r"In '([^']+)': ", str(error))
        if in_file is None:
            return sentence
        group = in_file.group(1).rpartition("/")[0]
        if group and getattr(cause, "full_key", None) == group:
            return (f"{in_file.group(1)}.yaml puts its keys under {group}, which the config does not have: start "
                    "it with the line `# @package _global_` to set keys such as train.* or logger.*")
        return f"{in_file.group(1)}.yaml: {sentence}"
    if isinstance(error, MissingMandatoryValue):
        key = getattr(error, "full_key", None) or "a setting"
        return f"{key} has no value (it is ??? in the config): add {key}=<value> to the command line"
    if isinstance(error, OmegaConfBaseException) and getattr(error, "full_key", None):
        message = str(getattr(error, "msg", None) or error).splitlines()[0]
        return f"{error.full_key} cannot be resolved ({message}): fix the value of {error.full_key}"
    if isinstance(error, OSError) and getattr(error, "filename", None):  # a path the config or machine gave
        return (f"cannot use {error.filename} ({error.strerror or type(error).__name__}): fix the setting that "
                "names this path, or the path's permissions and free space")
    return None


def _from_worker(error: UserError) -> str:
    """The sentence itself: a dataloader worker's error comes back as "Caught X in DataLoader worker
    process N. Original Traceback ..." with the sentence on the traceback's last line."""
    text = str(error)
    if not text.startswith(f"Caught {type(error).__name__} ") or "Original Traceback" not in text:
        return text
    marker = f"{type(error).__name__}: "
    last = [line for line in text.splitlines() if marker in line]
    return last[-1].split(marker, 1)[1] if last else text


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def closest(word: str, choices) -> str | None:
    """The choice a typo most likely meant, if any is close."""
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return found[0] if found else None


def _missing_option(error) -> str:
    missing = getattr(error, "missing_cfg_file", None) or ""
    options = list(getattr(error, "options", None) or [])
    group, _, name = missing.rpartition("/")
    if not group or not options:
        return str(error).splitlines()[0]
    guess = closest(name, options)
    hint = f" (did you mean {group}={guess}?)" if guess else ""
    return f"{group}={name} names no {group} config{hint}: choose {group}=<one of {', '.join(options)}>"


# a key missing from a plain config ("is not in struct") or from one typed by a dataclass ("not in 'Train'")
_UNKNOWN_KEY = re.compile(r"Key '[^']*' (is not in struct|not in ')")


def _unknown_key(message: str, cause) -> str:
    full_key = str(getattr(cause, "full_key", "") or "")
    key = str(getattr(cause, "key", "") or full_key.rpartition(".")[2])
    parent_path = full_key.rpartition(".")[0]
    prefix = f"{parent_path}." if parent_path else ""
    value = None
    match = re.search(r"use \+(\S+?)=(.*)$", message, flags=re.MULTILINE)
    if match:
        value = match.group(2)
    shown = f"{full_key}={value}" if value is not None else full_key
    parent = getattr(cause, "parent_node", None)
    keys = []
    try:
        keys = [str(k) for k in parent if not str(k).startswith("_")] if parent is not None else []
    except Exception:  # noqa: BLE001 - the key list only improves the sentence
        keys = []
    guess = closest(key, keys)
    where = f"under {parent_path} " if parent_path else "at the top level "
    if guess:
        fixed = f"{prefix}{guess}={value}" if value is not None else f"{prefix}{guess}"
        return f"{shown} names no setting {where}(did you mean {fixed}?): fix the spelling"
    known = f" (its settings are {', '.join(sorted(keys))})" if keys else ""
    return (f"{shown} names no setting {where}{known}: fix the spelling, or write +{shown} only to add a "
            "setting the code reads")


def _wrong_type(message: str, cause) -> str:
    """A value whose type the config's schema refuses (optsweep.preflight.schema types the run-level keys)."""
    from omegaconf import BooleanNode, FloatNode, IntegerNode, StringNode

    key = cause.full_key
    node = getattr(cause, "child_node", None)
    override = re.match(r"Error merging override (.+)", message)  # as typed, when it came from the command line
    shown = override.group(1) if override else f"{key}={render(cause.value)}"
    if isinstance(node, DictConfig) and len(node):
        first = next(iter(node))
        return (f"{shown} cannot replace the settings under {key}: set one of them instead, e.g. "
                f"{key}.{first}={render(node._get_node(first)._value())}")
    kinds = {BooleanNode: "true or false", IntegerNode: "an integer", FloatNode: "a number", StringNode: "text"}
    kind = next((text for node_type, text in kinds.items() if isinstance(node, node_type)), None)
    if kind is None:
        return f"{shown} is refused ({str(cause.msg).splitlines()[0]}): fix the value of {key}"
    if isinstance(node, BooleanNode):
        return f"{shown} must be {kind}: set {key}=true or {key}=false"
    null = ", or null" if node._is_optional() else ""
    example = _current_value(node)  # the value the override would have replaced is of the right type
    if example is None:
        return f"{shown} is not {kind}: set {key} to {kind}{null}"
    return f"{shown} must be {kind}: set e.g. {key}={render(example)}{null}"


def _current_value(node):
    """A node's value, its interpolation resolved; None when unset or unresolvable."""
    try:
        return None if node._is_missing() else node._dereference_node()._value()
    except Exception:  # noqa: BLE001 - only an example for the sentence
        return None


def _not_buildable(error, cause) -> str | None:
    """An object the config names could not be built: a bad input when the constructor refused the values."""
    # TypeError/ValueError: the constructor refused an argument; Lightning's MisconfigurationException too
    if not (isinstance(cause, (TypeError, ValueError)) or type(cause).__name__ == "MisconfigurationException"):
        return None
    text = str(error)
    target = re.search(r"target '([^']+)'", text)
    full_key = re.search(r"full_key: (\S+)", text)
    where = full_key.group(1) if full_key else "the config"
    what = target.group(1).rsplit(".", 1)[-1] if target else "its target"
    unexpected = re.search(r"unexpected keyword argument '([^']+)'", str(cause))
    if unexpected:
        return (f"{where}.{unexpected.group(1)} is not a setting {what} takes: remove it, or fix its spelling")
    return f"{where} cannot be built: {what} says {one_line(cause)}: fix the {where}.* setting it names"


class ServiceUnreachableError(UserError):
    """A tracking server or study storage does not answer; the message names it and the fix."""


_LOST = re.compile(r"API request to (https?://[^/\s]+)\S* failed with exception .*?"
                   r"(Connection refused|Failed to establish a new connection|Read timed out|Max retries exceeded)")


def tracking_server_lost(error: BaseException) -> ServiceUnreachableError | None:
    """An MLflow call that failed because the tracking server stopped answering during the run, as the
    sentence to stop with (None for any other error)."""
    if type(error).__name__ != "MlflowException":
        return None
    message = " ".join(str(error).split())
    found = _LOST.search(message)
    if found is None:
        return None
    reason = "connection refused" if "Connection refused" in message else "no answer"
    return ServiceUnreachableError(
        f"the MLflow tracking server {found.group(1)} stopped answering during the run ({reason}, after MLflow's "
        "retries): the checkpoints written so far are kept; start the server again and resume with "
        "train.ckpt_path=last, or resume with logger=csv to train on without it"
    )
