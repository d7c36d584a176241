"""Mutated PointCloud2 messages for robustness tests of the node (tests/ros/test_node_fuzz.py, bench/bench_node.py).

Every mutant is a message a DDS peer could really send (all integers inside their ROS types), from a valid seed
cloud: wrong sizes, steps, offsets, datatypes, counts, names, endianness, truncated or extended data, random
byte flips and extreme coordinates. Seeds are duck-typed PointCloud2 objects; output is an rclpy message.
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np

U32 = 2**32 - 1


def _field_list(seed: Any) -> list[list]:
    return [[str(f.name), int(f.offset), int(f.datatype), int(f.count)] for f in seed.fields]


def _mutate_once(m: dict, rng: np.random.Generator) -> str:
    kind = rng.integers(14)
    fields, data = m["fields"], m["data"]
    if kind == 0:
        key = ("height", "width")[rng.integers(2)]
        m[key] = int(rng.choice([0, 1, m[key] + 1, max(m[key] - 1, 0), m[key] * 2, U32]))
        return f"{key}={m[key]}"
    if kind == 1:
        m["point_step"] = int(np.clip(m["point_step"] + rng.choice([-8, -1, 1, 4, -m["point_step"]]), 0, U32))
        return f"point_step={m['point_step']}"
    if kind == 2:
        m["row_step"] = int(np.clip(m["row_step"] + rng.choice([-1, 1, 64, -m["row_step"]]), 0, U32))
        return f"row_step={m['row_step']}"
    if kind == 3:
        cut = int(rng.integers(0, len(data) + 1))
        m["data"] = data[:cut] if rng.random() < 0.5 else data + rng.bytes(int(rng.integers(1, 64)))
        return f"data length {len(m['data'])}"
    if kind == 4 and fields:
        f = fields[rng.integers(len(fields))]
        f[1] = int(np.clip(f[1] + rng.choice([-4, -1, 1, 2, 4, 1000]), 0, U32))
        return f"offset of {f[0]}={f[1]}"
    if kind == 5 and fields:
        f = fields[rng.integers(len(fields))]
        f[2] = int(rng.integers(0, 12))
        return f"datatype of {f[0]}={f[2]}"
    if kind == 6 and fields:
        f = fields[rng.integers(len(fields))]
        f[3] = int(rng.choice([0, 2, 3, 1000]))
        return f"count of {f[0]}={f[3]}"
    if kind == 7 and fields:
        f = fields[rng.integers(len(fields))]
        f[0] = str(rng.choice(["", "x", "y", "z", "intensity", "X", "rgb", "x\x00"]))
        return f"name -> {f[0]!r}"
    if kind == 8 and fields:
        removed = fields.pop(int(rng.integers(len(fields))))
        return f"removed field {removed[0]}"
    if kind == 9:
        m["is_bigendian"] = not m["is_bigendian"]
        return "endianness flipped"
    if kind == 10 and data:
        buf = bytearray(data)
        for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 40))):
            buf[pos] = int(rng.integers(256))
        m["data"] = bytes(buf)
        return "byte flips"
    if kind == 11 and data:
        values = np.array([np.nan, np.inf, -np.inf, 1e38, -1e30, 3e5, 1e-45, 0.0, -0.0], np.float32)
        buf = np.frombuffer(bytearray(data), np.uint8).copy()
        n_pts = len(buf) // max(m["point_step"], 1)
        for _ in range(int(rng.integers(1, 20))):
            if n_pts == 0 or m["point_step"] < 12:
                break
            at = int(rng.integers(n_pts)) * m["point_step"] + 4 * int(rng.integers(3))
            buf[at:at + 4] = np.frombuffer(values[rng.integers(len(values))].tobytes(), np.uint8)
        m["data"] = buf.tobytes()
        return "extreme coordinates"
    if kind == 12 and data and m["point_step"]:
        step = m["point_step"]
        m["data"] = data[:step] * (len(data) // step) + data[(len(data) // step) * step:]
        return "all points identical"
    if kind == 13:
        fields.append([str(rng.choice(["pad", "x", "ring"])), int(rng.integers(0, 64)), int(rng.integers(1, 9)), 1])
        return f"extra field {fields[-1]}"
    return "unchanged"


def mutate_cloud(seed: Any, rng: np.random.Generator, max_mutations: int = 3):
    """(rclpy PointCloud2, description) with 1..max_mutations mutations of ``seed``."""
    from sensor_msgs.msg import PointCloud2, PointField

    m = {"height": int(seed.height), "width": int(seed.width), "point_step": int(seed.point_step),
         "row_step": int(seed.row_step), "is_bigendian": bool(seed.is_bigendian), "fields": _field_list(seed),
         "data": bytes(seed.data)}
    done = [_mutate_once(m, rng) for _ in range(int(rng.integers(1, max_mutations + 1)))]
    msg = PointCloud2()
    msg.header.frame_id = "lidar"
    msg.height, msg.width = m["height"], m["width"]
    msg.point_step, msg.row_step, msg.is_bigendian = m["point_step"], m["row_step"], m["is_bigendian"]
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in m["fields"]]
    payload = array.array("B")
    payload.frombytes(m["data"])
    msg.data = payload
    return msg, "; ".join(done) or "unchanged"
