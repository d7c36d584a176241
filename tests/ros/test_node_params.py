"""The node's parameters as ROS users meet them: the parameter services `ros2 param` calls (list, get, describe,
set), start-up checks of overrides and params files, and `ssov_segmenter --help`."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ros_test_utils import DEMO_MODEL, DOMAIN_ID, OUT, Harness, encode, to_rclpy

rclpy = pytest.importorskip("rclpy")

from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import (DescribeParameters, GetParameters, ListParameters,  # noqa: E402
                                SetParameters, SetParametersAtomically)
from sensor_msgs.msg import PointCloud2  # noqa: E402

from ssov_ros.params import parameter_table  # noqa: E402
from ssov_ros.pointcloud import read_cloud  # noqa: E402
from ssov_train.errors import ConfigError  # noqa: E402

NODE = "/ssov_segmenter"
FIELD = {ParameterType.PARAMETER_BOOL: "bool_value", ParameterType.PARAMETER_INTEGER: "integer_value",
         ParameterType.PARAMETER_DOUBLE: "double_value", ParameterType.PARAMETER_STRING: "string_value",
         ParameterType.PARAMETER_STRING_ARRAY: "string_array_value",
         ParameterType.PARAMETER_DOUBLE_ARRAY: "double_array_value"}
ROS_TYPE = {"bool": ParameterType.PARAMETER_BOOL, "integer": ParameterType.PARAMETER_INTEGER,
            "double": ParameterType.PARAMETER_DOUBLE, "string": ParameterType.PARAMETER_STRING,
            "string_array": ParameterType.PARAMETER_STRING_ARRAY,
            "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY}


def plain(value: ParameterValue):
    v = getattr(value, FIELD[value.type])
    return list(v) if value.type in (ParameterType.PARAMETER_STRING_ARRAY,
                                     ParameterType.PARAMETER_DOUBLE_ARRAY) else v


def same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def call(h: Harness, srv_type, name: str, request):
    client = h.peer.create_client(srv_type, f"{NODE}/{name}")
    assert h.spin_until(client.service_is_ready, 30), f"{name} service not available"
    future = client.call_async(request)
    assert h.spin_until(future.done, 30)
    return future.result()


def set_request(srv_type, **values):
    req = srv_type.Request()
    for name, value in values.items():
        kind = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}[type(value)]
        msg = ParameterMsg(name=name, value=ParameterValue(type=kind))
        setattr(msg.value, FIELD[kind], value)
        req.parameters.append(msg)
    return req


def labelled(h: Harness, frame, listen: list) -> np.ndarray:
    before = len(listen)
    h.node.on_cloud(to_rclpy(encode("nuscenes", frame.points, frame.intensity)))
    assert h.spin_until(lambda: len(listen) > before and h.node.wait_idle(0.01), 120)
    return read_cloud(listen[-1]).columns["label"]


def test_parameter_services_get_describe_and_set(frame):
    h = Harness({"afi.enabled": False, "model.warmup": False})
    try:
        table = {spec.name: spec for spec in parameter_table()}
        # `ros2 param dump`: list every name, then get them all in one request (one undeclared type-only
        # parameter would make the whole answer empty)
        names = call(h, ListParameters, "list_parameters", ListParameters.Request()).result.names
        assert set(table) <= set(names)
        values = call(h, GetParameters, "get_parameters", GetParameters.Request(names=list(names))).values
        assert len(values) == len(names) and all(v.type != ParameterType.PARAMETER_NOT_SET for v in values)
        got = dict(zip(names, values))
        expected = {**{n: s.default for n, s in table.items()}, "model.path": str(DEMO_MODEL),
                    "afi.enabled": False, "model.warmup": False}
        for name, spec in table.items():
            assert got[name].type == ROS_TYPE[spec.type], name
            assert same(plain(got[name]), expected[name]), (name, plain(got[name]))
        descriptors = call(h, DescribeParameters, "describe_parameters",
                           DescribeParameters.Request(names=list(table))).descriptors
        for d in descriptors:
            spec = table[d.name]
            assert d.read_only == spec.read_only and d.description == spec.description and d.type == ROS_TYPE[spec.type]
            if spec.min is not None and not spec.unset:
                r = (d.integer_range or d.floating_point_range)[0]
                assert (r.from_value, r.to_value) == (spec.min, spec.max), d.name

        out = h.listen(OUT, PointCloud2)
        rng = np.linalg.norm(frame.points, axis=1)
        before = labelled(h, frame, out)
        assert (before[rng > 10.0] > 0).mean() > 0.99  # far points labelled with max_range 300 m
        ok = call(h, SetParameters, "set_parameters", set_request(SetParameters, **{"input.max_range": 10.0}))
        assert [r.successful for r in ok.results] == [True]
        after = labelled(h, frame, out)
        assert (after[rng > 10.0] == 0).all() and (after[rng <= 10.0] > 0).all()  # the next cloud uses it

        refused = call(h, SetParameters, "set_parameters", set_request(
            SetParameters, **{"model.path": "other.pt", "temporal.history": -1, "input.max_range": 0.0}))
        reasons = [r.reason for r in refused.results]
        assert not any(r.successful for r in refused.results)
        assert "read-only" in reasons[0] and "model.path" in reasons[0]
        assert "out of range" in reasons[1] and "out of range" in reasons[2]
        # a combination that AFI refuses is rejected whole, with the reason, and nothing changes
        atomic = call(h, SetParametersAtomically, "set_parameters_atomically", set_request(
            SetParametersAtomically, **{"afi.enabled": True, "afi.ground_ring_min": 9.0})).result
        assert not atomic.successful and "ground_ring_min < ground_ring_max" in atomic.reason
        assert h.node.segmenter.afi is None and h.node.get_parameter("afi.enabled").value is False
        assert h.node.cfg.input.max_range == 10.0
        # AFI switched on at runtime: the segmenter gets its AFI stage with the new history
        ok = call(h, SetParametersAtomically, "set_parameters_atomically", set_request(
            SetParametersAtomically, **{"afi.enabled": True, "temporal.history": 1}))
        assert ok.result.successful
        assert h.node.segmenter.afi is not None and h.node.segmenter.afi.temporal.history == 1
    finally:
        h.close()


def test_unknown_parameters_stop_start_up_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) afi.enabeld \(did you mean afi.enabled\?\)"):
        Harness({"afi.enabeld": False})
    # a params file with a misspelt section: rcl flattens it to afii.enabled, which names no parameter
    params_file = tmp_path / "params.yaml"
    params_file.write_text("/**:\n  ros__parameters:\n    afii:\n      enabled: false\n    cameras:\n"
                           "      names: []\n")  # an empty list has no type in a params file: still accepted
    context = rclpy.Context()
    rclpy.init(args=["ssov_segmenter", "--ros-args", "--params-file", str(params_file)], context=context,
               domain_id=DOMAIN_ID)
    try:
        from ssov_ros.node import SegmenterNode

        with pytest.raises(ConfigError) as err:
            SegmenterNode(context=context)
        assert str(err.value).startswith("unknown parameter(s) afii.enabled (did you mean afi.enabled?)")
        assert "\n" not in str(err.value)
    finally:
        rclpy.shutdown(context=context)


def _script() -> str:
    script = shutil.which("ssov_segmenter", path=os.path.dirname(sys.executable))
    assert script, "console script ssov_segmenter not installed (pip install -e .)"
    return script


def test_help_prints_usage_and_every_parameter():
    r = subprocess.run([_script(), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: ssov_segmenter")
    for spec in parameter_table():
        assert f"  {spec.name} = " in r.stdout
    bad = subprocess.run([_script(), "--halp"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unrecognized arguments: --halp" in bad.stderr


def test_misspelt_override_on_the_command_line_is_one_error_line():
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID))
    r = subprocess.run([_script(), "--ros-args", "-p", "afi.enabeld:=false"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "ssov_segmenter: unknown parameter(s) afi.enabeld (did you mean afi.enabled?)")
