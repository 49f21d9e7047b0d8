"""Reading sweep configs: YAML with duplicate-key checks, `include:` of other configs' experiments,
and dotted `key.path=value` overrides."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """Bad input, found before any work starts: one line naming the offending key path or file."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads 1e-3 as a float (YAML 1.1 wants 1.0e-3)."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)  # YAML merge keys (<<) first, as SafeLoader does
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}: malformed YAML{where}: {problem}") from None


def read_config_file(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The mapping a config file holds, `include:` resolved.

    `include: [a.yaml, b.yaml]` (paths relative to the including file) puts the experiments of
    those configs, in order, before the file's own; every other setting of an included file
    (name, results_dir, ...) is ignored: the including file's own settings apply. So conf/quick.yaml
    is the four conf/quick_<workload>.yaml sweeps run as one, with no block written twice.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: {'is a directory' if path.is_dir() else 'no such config file'}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}); "
                          "expected a UTF-8 encoded YAML file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top, got {type(raw).__name__}")
    if "include" not in raw:
        return raw
    includes = raw.pop("include")
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise ConfigError(f"{path}: include: expected a list of config file paths relative to this file")
    own = raw.get("experiments", [])
    if not isinstance(own, list):
        raise ConfigError(f"{path}: experiments: expected a list of experiment blocks")
    experiments: list = []
    for name in includes:
        target = (path.parent / name).resolve()
        if target in chain or target == path.resolve():
            raise ConfigError(f"{path}: include: {name} includes itself (an include cycle)")
        if not target.is_file():
            raise ConfigError(f"{path}: include: {name}: no such config file (looked at {target})")
        blocks = read_config_file(target, chain + (path.resolve(),)).get("experiments")
        if not isinstance(blocks, list):
            raise ConfigError(f"{target}: experiments: expected a list of experiment blocks to include")
        experiments += blocks
    raw["experiments"] = experiments + own
    return raw


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Set `key.path=value` items (values parsed as YAML scalars); list items go by index."""
    for item in overrides:
        path, sep, text = item.partition("=")
        keys = path.split(".")
        if not sep or not all(keys):
            raise ConfigError(f"override {item!r}: expected key.path=value")
        value = parse_yaml(text, f"override {item!r}")
        node: Any = raw
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"override {item!r}: {where}: expected an index below {len(node)}")
                key = int(key)
            elif not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(keys[:depth])} is not a mapping or list")
            if last:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return raw
