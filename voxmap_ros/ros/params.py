"""ROS parameters from the config dataclasses: one declaration per field, validated on change.

Parameter names are the dotted config names (`map.voxel_size_m`, `node.mesh_rate_hz`), which is
what a ROS params YAML with nested sections produces. Fields not marked `runtime` are read-only
after start; the rest are checked by the same validation as YAML and CLI values.
"""
from __future__ import annotations

import copy

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)

from ..config import VoxmapConfig, iter_fields, section_names

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_DOUBLE_ARRAY}


def descriptor(name: str, f) -> ParameterDescriptor:
    meta = f.metadata
    kind = meta["type"]
    d = ParameterDescriptor(name=name, type=_TYPES[kind], description=meta["description"],
                            read_only=not meta["runtime"])
    if meta.get("choices"):
        d.additional_constraints = "one of: " + ", ".join(meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    if kind is float and lo is not None and hi is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    elif kind is int and lo is not None and hi is not None:
        d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
    return d


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_override_names(names) -> None:
    """ValueError for a start-up override in one of the config's sections that names no field
    (`map.voxel_size:=0.1`, a typo): ROS would ignore it silently and the node would run with the
    default. Names outside the sections (use_sim_time, qos_overrides.*) are ROS's to judge."""
    known = {n for n, _, _ in iter_fields()}
    sections = set(section_names())
    unknown = sorted(n for n in names if n.split(".", 1)[0] in sections and n not in known)
    if unknown:
        section = unknown[0].split(".", 1)[0]
        fields = sorted(n.split(".", 1)[1] for n in known if n.startswith(section + "."))
        raise ValueError(f"unknown parameter '{unknown[0]}'" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1
                         else "") + f"; '{section}' has {fields}")


def declare_config(node, base: VoxmapConfig | None = None, fixed: tuple = ()) -> VoxmapConfig:
    """Declare every config field as a parameter (defaults from `base`) and return the config
    built from the values the node was started with. Fields named in `fixed` keep `base`'s value
    whatever the node was started with (a loaded map file's voxel size). Raises ValueError on
    invalid start values."""
    base = base or VoxmapConfig()
    cfg = copy.deepcopy(base)
    overrides = getattr(node, "_parameter_overrides", None) or {}
    check_override_names(overrides)
    for name, value, f in iter_fields(base):
        ignore_override = name in fixed
        override = overrides.get(name)
        ov = override.value if override is not None and not ignore_override else None
        # `-p node.mesh_rate_hz:=2` or `mesh_rate_hz: 2` in a params file arrive as integers (and
        # `[0, 0, 0, 0, 0, 0]` as an integer array); rclpy would reject them for a double (array)
        # parameter, so take them, converted, as the default instead.
        if f.metadata["type"] is float and _is_int(ov):
            value, ignore_override = float(ov), True
        elif (f.metadata["type"] is list and ov is not None and not isinstance(ov, (str, bytes))
              and hasattr(ov, "__len__") and len(ov) and all(_is_int(v) for v in ov)):
            value, ignore_override = [float(v) for v in ov], True
        declared = node.declare_parameter(name, value, descriptor(name, f), ignore_override=ignore_override).value
        if f.metadata["type"] is float and isinstance(declared, int):
            declared = float(declared)
        if f.metadata["type"] is list:
            declared = list(declared)
        cfg.set(name, declared)
    cfg.validate()
    return cfg


def validate_changes(cfg: VoxmapConfig, params) -> tuple[VoxmapConfig | None, SetParametersResult]:
    """Check a batch of parameter changes against a copy of the config.

    Returns (new_config or None, result). Unknown names (e.g. use_sim_time) are left to ROS.
    """
    new = copy.deepcopy(cfg)
    fields = {n: f for n, _, f in iter_fields(cfg)}
    try:
        for p in params:
            if p.name not in fields:
                continue
            if not fields[p.name].metadata["runtime"]:
                raise ValueError(f"{p.name} cannot change while the node runs (not a runtime parameter); "
                                 f"restart the node with the new value")
            value = p.value
            if isinstance(value, int) and not isinstance(value, bool) and isinstance(new.get(p.name), float):
                value = float(value)
            if not isinstance(value, (bool, int, float, str)) and value is not None:
                value = list(value)
            new.set(p.name, value)
        new.validate()
    except ValueError as e:
        return None, SetParametersResult(successful=False, reason=str(e))
    return new, SetParametersResult(successful=True)
