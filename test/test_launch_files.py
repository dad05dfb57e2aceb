"""Launch files, config overlays and the RViz config: what can be checked without a ROS install.

launch / launch_ros / ament_index_python are not on PyPI, so the launch files are executed
against small recording stand-ins for those modules: the test sees the declared arguments, the
nodes (package, executable, name, parameters) and the files they reference.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from voxmap_ros.config import VoxmapConfig, ros_params_yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
CONFIG_FILES = sorted((ROOT / "config").glob("*.yaml"))


class _Recorded:
    def __init__(self, kind, *args, **kwargs):
        self.kind, self.args, self.kwargs = kind, args, kwargs


def _stub_modules(share: Path) -> dict:
    """Recording stand-ins for the launch API; each call returns a _Recorded."""
    def factory(kind):
        return lambda *a, **k: _Recorded(kind, *a, **k)

    mods = {
        "ament_index_python": types.ModuleType("ament_index_python"),
        "ament_index_python.packages": types.ModuleType("ament_index_python.packages"),
        "launch": types.ModuleType("launch"),
        "launch.actions": types.ModuleType("launch.actions"),
        "launch.conditions": types.ModuleType("launch.conditions"),
        "launch.substitutions": types.ModuleType("launch.substitutions"),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": types.ModuleType("launch_ros.actions"),
    }
    mods["ament_index_python.packages"].get_package_share_directory = lambda pkg: str(share)
    mods["launch"].LaunchDescription = lambda items: _Recorded("LaunchDescription", items)
    for name in ("DeclareLaunchArgument", "ExecuteProcess", "IncludeLaunchDescription", "GroupAction",
                 "SetEnvironmentVariable"):
        setattr(mods["launch.actions"], name, factory(name))
    mods["launch.conditions"].IfCondition = factory("IfCondition")
    mods["launch.conditions"].UnlessCondition = factory("UnlessCondition")
    for name in ("LaunchConfiguration", "PathJoinSubstitution", "PythonExpression"):
        setattr(mods["launch.substitutions"], name, factory(name))
    mods["launch_ros.actions"].Node = factory("Node")
    mods["launch_ros.actions"].PushRosNamespace = factory("PushRosNamespace")
    return mods


def _describe(path: Path, monkeypatch) -> list[_Recorded]:
    for name, mod in _stub_modules(ROOT).items():      # the source tree doubles as the share dir
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location(f"launch_under_test_{path.stem.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    desc = module.generate_launch_description()
    assert desc.kind == "LaunchDescription"
    return list(desc.args[0])


def _console_scripts() -> dict:
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"(\w+)\s*=\s*([\w.]+:\w+)"', text))


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_parses_and_references_existing_things(path, monkeypatch):
    ast.parse(path.read_text(), filename=str(path))
    items = _describe(path, monkeypatch)
    args = {i.args[0]: i.kwargs for i in items if i.kind == "DeclareLaunchArgument"}
    for a in args.values():
        assert a.get("description"), "every launch argument is described"
    nodes = [i for i in items if i.kind == "Node"]
    ours = [n for n in nodes if n.kwargs["package"] == "voxmap_ros"]
    assert len(ours) == 1
    scripts = _console_scripts()
    assert ours[0].kwargs["executable"] in scripts, "the node's executable is a console script of setup.py"
    module, func = scripts[ours[0].kwargs["executable"]].split(":")
    source = ROOT / (module.replace(".", "/") + ".py")      # read, not imported: rclpy may be absent
    assert f"def {func}(" in source.read_text()
    assert ours[0].kwargs["name"] == "voxmap"
    # Every file path the launch file mentions exists in the source tree (installed by setup.py).
    default_params = args["params_file"]["default_value"]
    assert Path(default_params).is_file()
    for n in nodes:
        for a in n.kwargs.get("arguments", []):
            if isinstance(a, str) and a.endswith(".rviz"):
                assert Path(a).is_file()
    if path.name == "voxmap.launch.py":
        assert set(args) >= {"params_file", "use_sim_time", "namespace", "rviz"}
    else:
        assert set(args) >= {"bag", "rate", "params_file", "rviz"}
        play = [i for i in items if i.kind == "ExecuteProcess"]
        assert play and play[0].kwargs["cmd"][:3] == ["ros2", "bag", "play"] and "--clock" in play[0].kwargs["cmd"]
        assert {"use_sim_time": True} in ours[0].kwargs["parameters"]


def test_setup_installs_launch_config_and_rviz_files():
    text = (ROOT / "setup.py").read_text()
    for folder, pattern in (("launch", "launch/*.py"), ("config", "config/*.yaml"), ("rviz", "rviz/*.rviz")):
        assert f'glob("{pattern}")' in text, folder
    assert LAUNCH_FILES and CONFIG_FILES and list((ROOT / "rviz").glob("*.rviz"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_files_load_and_validate(path):
    cfg = VoxmapConfig.load(path)          # unknown keys or bad values raise ValueError
    cfg.validate()
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["voxmap"] and "ros__parameters" in data["voxmap"], "ROS params file for node 'voxmap'"


def test_default_params_file_is_generated_from_the_config_and_commented():
    text = (ROOT / "config" / "voxmap.yaml").read_text()
    assert text == ros_params_yaml(), "regenerate with: python -m voxmap_ros.config config/voxmap.yaml"
    # Every parameter line carries or follows a comment.
    lines = [ln for ln in text.splitlines() if ln.strip()]
    params = [i for i, ln in enumerate(lines) if re.match(r"^\s{6}\w+:\s*\S", ln)]
    assert params
    assert all(lines[i - 1].strip().startswith("#") or "#" in lines[i] for i in params)


def test_overlays_differ_from_defaults_in_sensor_settings():
    base = VoxmapConfig()
    rgbd = VoxmapConfig.load(ROOT / "config" / "rgbd.yaml")
    lidar = VoxmapConfig.load(ROOT / "config" / "lidar.yaml")
    assert rgbd.node.cloud_topic == "" and rgbd.node.depth_topic
    assert lidar.node.depth_topic == "" and lidar.node.cloud_topic
    assert lidar.map.voxel_size_m > base.map.voxel_size_m or lidar.map.voxel_size_m >= 0.05


def _rviz_displays():
    data = yaml.safe_load((ROOT / "rviz" / "voxmap.rviz").read_text())
    manager = data["Visualization Manager"]
    return manager, manager["Displays"]


def test_rviz_config_matches_the_node_defaults():
    manager, displays = _rviz_displays()
    assert manager["Global Options"]["Fixed Frame"] == VoxmapConfig().map.frame_id == "map"
    by_class = {}
    for d in displays:
        by_class.setdefault(d["Class"].split("/")[-1], []).append(d)
    assert {"MarkerArray", "Map", "PointCloud2", "TF", "Image"} <= set(by_class)
    node = "/voxmap"          # node name in the launch files; outputs are private (~/...) topics
    node_src = (ROOT / "voxmap_ros" / "ros" / "node.py").read_text()
    for cls, topic in (("MarkerArray", "mesh"), ("Map", "occupancy"), ("PointCloud2", "occupied_voxels"),
                       ("Image", "render/color")):
        assert f'"~/{topic}"' in node_src, f"the node publishes ~/{topic}"
        assert by_class[cls][0]["Topic"]["Value"] == f"{node}/{topic}"
    # The rendered view is published reliable, volatile: the display must not ask for more.
    qos = by_class["Image"][0]["Topic"]
    assert qos["Reliability Policy"] in ("Reliable", "Best Effort") and qos["Durability Policy"] == "Volatile"
