"""The launch files and the RViz config, checked without launch/launch_ros (they have no PyPI wheel).

A tiny fake `launch` / `launch_ros` module tree records what the launch files build; a resolver evaluates the
substitutions the way launch would (FindPackageShare -> the source tree, whose launch/ and config/ mirror the
installed share/ssov_ros), opaque functions run against a fake context, and the result is checked against the
real node, bags, CLIs and files. The exit handlers are checked as launch calls them (a ProcessExited-like event).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import yaml

from ssov_ros import bags
from ssov_ros.params import NodeConfig, flat_defaults

REPO = Path(__file__).resolve().parents[2]
CLASSES = {
    "launch": ["LaunchDescription"],
    "launch_ros": [],
    "launch.actions": ["DeclareLaunchArgument", "IncludeLaunchDescription", "LogInfo", "OpaqueFunction",
                       "RegisterEventHandler", "EmitEvent"],
    "launch.conditions": ["IfCondition", "UnlessCondition"],
    "launch.event_handlers": ["OnProcessExit"],
    "launch.events": ["Shutdown"],
    "launch.substitutions": ["LaunchConfiguration", "PathJoinSubstitution"],
    "launch.launch_description_sources": ["PythonLaunchDescriptionSource"],
    "launch_ros.actions": ["Node"],
    "launch_ros.substitutions": ["FindPackageShare"],
}


class Fake:
    """Any launch class: remembers its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.args}{self.kwargs}"

    def perform(self, context) -> str:  # a substitution evaluated in an opaque function
        return resolve(self, context.launch_configurations)


@pytest.fixture
def load_launch(monkeypatch):
    for module, names in CLASSES.items():
        mod = types.ModuleType(module)
        for name in names:
            setattr(mod, name, type(name, (Fake,), {}))
        monkeypatch.setitem(sys.modules, module, mod)
    for parent in ("launch", "launch_ros"):  # `from launch.actions import ...` needs the attribute too
        for module in CLASSES:
            if module.startswith(parent + "."):
                setattr(sys.modules[parent], module.split(".")[1], sys.modules[module])

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO / "launch" / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.generate_launch_description()

    return load


def resolve(sub, config: dict) -> str:
    name = type(sub).__name__
    if isinstance(sub, str):
        return sub
    if isinstance(sub, (list, tuple)):
        return "".join(resolve(s, config) for s in sub)
    if name == "LaunchConfiguration":
        return config[sub.args[0]]
    if name == "PathJoinSubstitution":
        return os.path.join(*(resolve(s, config) for s in sub.args[0]))
    if name == "FindPackageShare":
        assert sub.args[0] == "ssov_ros"
        return str(REPO)
    raise AssertionError(f"unexpected substitution {sub!r}")


def arguments(ld, overrides: dict | None = None) -> dict:
    """Launch argument name -> default (None when required), then the resolved configuration."""
    declared = {a.args[0]: a.kwargs.get("default_value") for a in ld.args[0]
                if type(a).__name__ == "DeclareLaunchArgument"}
    config = dict(overrides or {})
    for name, default in declared.items():
        if name not in config and default is not None:
            config[name] = resolve(default, config)
    return declared, config


def entities(ld, kind: str) -> list:
    return [e for e in ld.args[0] if type(e).__name__ == kind]


def console_scripts() -> set[str]:
    text = (REPO / "setup.py").read_text()
    return {line.split("=")[0].strip().strip('"') for line in text.splitlines() if " = ssov_" in line}


def run_opaque(ld, config: dict) -> list:
    """The actions the launch description's opaque function returns for this configuration."""
    (opaque,) = entities(ld, "OpaqueFunction")
    return opaque.kwargs["function"](types.SimpleNamespace(launch_configurations=config))


def exited(code: int):
    return types.SimpleNamespace(returncode=code)  # what OnProcessExit hands its on_exit (ProcessExited)


@pytest.mark.parametrize("rviz_installed", [True, False])
def test_ssov_launch(load_launch, monkeypatch, rviz_installed):
    from ssov_ros import launch_support

    monkeypatch.setattr(launch_support, "package_installed", lambda name: rviz_installed and name == "rviz2")
    ld = load_launch("ssov.launch.py")
    declared, config = arguments(ld)
    assert set(declared) == {"params_file", "model_path", "points_topic", "camera_topic_prefix", "odom_topic",
                             "use_sim_time", "rviz"}
    assert config["rviz"] == "false" and config["model_path"] == ""
    segmenter, handler = run_opaque(ld, config)  # no RViz unless asked for
    kw = segmenter.kwargs
    assert (kw["package"], kw["executable"], kw["name"]) == ("ssov_ros", "ssov_segmenter", "ssov_segmenter")
    assert kw["executable"] in console_scripts()
    # the params file alone decides model.path unless model_path:= is given; then the override wins (it comes after)
    params_file, overrides = kw["parameters"]
    assert resolve(params_file, config) == str(REPO / "config" / "ssov_node.yaml")
    assert set(overrides) == {"use_sim_time"}
    (given, _) = run_opaque(ld, {**config, "model_path": "/models/mine.ssovpkg"})
    assert resolve(given.kwargs["parameters"][1]["model.path"], config | {"model_path": "/models/mine.ssovpkg"}) \
        == "/models/mine.ssovpkg"
    assert set(given.kwargs["parameters"][1]) <= set(flat_defaults()) | {"use_sim_time"}
    # every remapped input lands on a topic of the shipped bags, and the node really has those inputs
    remaps = {src: resolve(dst, config) for src, dst in kw["remappings"]}
    node_src = (REPO / "ssov_ros" / "node.py").read_text()
    shipped = bags.bag_info(REPO / "rosbags" / "synthetic_street").topics
    assert remaps["~/input/points"] == bags.LIDAR_TOPIC and remaps["~/input/odometry"] == bags.ODOM_TOPIC
    for src, dst in remaps.items():
        assert dst in shipped, (src, dst)
        assert src.startswith("~/input/")
    for cam in bags.CAMERAS:
        assert remaps[f"~/input/{cam}/image"] == bags.image_topic(cam)
        assert remaps[f"~/input/{cam}/camera_info"] == bags.camera_info_topic(cam)
    assert '"~/input/points"' in node_src and 'f"~/input/{name}/image"' in node_src
    # the node's exit ends the launch; an error exit makes `ros2 launch` fail (launch returns 1 on an exception)
    (on_exit,) = handler.args
    assert type(on_exit).__name__ == "OnProcessExit" and on_exit.kwargs["target_action"] is segmenter
    with pytest.raises(launch_support.ProcessFailed, match="ssov_segmenter exited with code 1"):
        on_exit.kwargs["on_exit"](exited(1), None)
    (emit,) = on_exit.kwargs["on_exit"](exited(0), None)
    assert type(emit.kwargs["event"]).__name__ == "Shutdown"
    # RViz only on request, with the shipped config, and only where rviz2 is installed (else one log line)
    *_, extra = run_opaque(ld, {**config, "rviz": "true"})
    if rviz_installed:
        assert extra.kwargs["executable"] == "rviz2" and extra.kwargs["arguments"][0] == "-d"
        assert resolve(extra.kwargs["arguments"][1], config) == str(REPO / "config" / "ssov.rviz")
    else:
        assert type(extra).__name__ == "LogInfo" and "rviz2 is not installed" in extra.kwargs["msg"]


def test_replay_launch(load_launch):
    from ssov_ros import launch_support
    from ssov_ros.replay import build_parser

    ld = load_launch("replay.launch.py")
    declared, config = arguments(ld, {"bag": "/data/my_bag"})
    assert declared["bag"] is None  # required
    assert config["rviz"] == "false"  # RViz2 only when asked for
    (include,) = entities(ld, "IncludeLaunchDescription")
    assert resolve(include.args[0].args[0], config) == str(REPO / "launch" / "ssov.launch.py")
    assert dict(include.kwargs["launch_arguments"])["rviz"].args == ("rviz",)
    once, looped = entities(ld, "Node")
    for node, loop in ((once, False), (looped, True)):
        assert node.kwargs["executable"] == "ssov-replay" and node.kwargs["executable"] in console_scripts()
        assert type(node.kwargs["condition"]).__name__ == ("IfCondition" if loop else "UnlessCondition")
        args = build_parser().parse_args([resolve(a, config) for a in node.kwargs["arguments"]])
        assert (str(args.bag), args.rate, args.loop, args.wait_for_subscribers, args.delay) == (
            "/data/my_bag", 1.0, loop, 60.0, 1.0)
    # a failed replay takes everything down with it; a finished one leaves the node (and RViz2) up
    handlers = [h.args[0] for h in entities(ld, "RegisterEventHandler")]
    assert [h.kwargs["target_action"] for h in handlers] == [once, looped]
    for h in handlers:
        with pytest.raises(launch_support.ProcessFailed, match="ssov-replay exited with code 2"):
            h.kwargs["on_exit"](exited(2), None)
        assert h.kwargs["on_exit"](exited(0), None) == []


def test_package_installed_reads_the_ament_index(tmp_path, monkeypatch):
    from ssov_ros.launch_support import package_installed

    marker = tmp_path / "share" / "ament_index" / "resource_index" / "packages" / "rviz2"
    marker.parent.mkdir(parents=True)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "empty"))
    assert not package_installed("rviz2")
    marker.write_text("")
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{tmp_path / 'empty'}:{tmp_path}")
    assert package_installed("rviz2") and not package_installed("ssov_nonexistent")


def test_rviz_config():
    cfg = yaml.safe_load((REPO / "config" / "ssov.rviz").read_text())
    manager = cfg["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "lidar_top"
    displays = {d["Name"]: d for d in manager["Displays"]}
    cloud = displays["Labelled cloud"]
    assert cloud["Class"] == "rviz_default_plugins/PointCloud2" and cloud["Enabled"]
    assert cloud["Color Transformer"] == "RGB8"  # the node's packed rgb field
    assert cloud["Topic"]["Value"] == "/ssov_segmenter/output/points"
    assert cloud["Topic"]["Reliability Policy"] == "Best Effort"
    legend = displays["Legend"]
    assert legend["Class"] == "rviz_default_plugins/MarkerArray" and legend["Namespaces"] == {"legend": True}
    assert legend["Topic"]["Value"] == "/ssov_segmenter/output/legend"
    assert legend["Topic"]["Durability Policy"] == "Transient Local"
    images = {d["Topic"]["Value"] for d in displays.values() if d["Class"] == "rviz_default_plugins/Image"}
    assert images == {f"/ssov_segmenter/output/{cam}/overlay" for cam in bags.CAMERAS}
    node_src = (REPO / "ssov_ros" / "node.py").read_text()
    for topic in ('"~/output/points"', '"~/output/legend"', 'f"~/output/{name}/overlay"'):
        assert topic in node_src
    assert displays["Input cloud"]["Topic"]["Value"] == bags.LIDAR_TOPIC
