"""`ssov-replay BAG`: publish a rosbag2's messages with their original timing (what `ros2 bag play` does).

Messages go out as the recorded CDR bytes (rclpy publishes serialized bytes as they are: no deserialization),
each at ``start + (t - t_first) / rate``. Publishers use the recorded QoS (/tf_static transient local, sensor
topics as recorded). A topic whose message package has no Python module here (tf2_msgs has no PyPI wheel) is
skipped with one warning. Bag reading and the schedule live in :mod:`ssov_ros.bags` (ROS-free).

``--wait-for-subscribers S`` waits (up to S seconds) for a subscriber on every replayed PointCloud2 topic and
for every subscriber the graph shows on the other topics: topics nobody subscribes to are not waited for.
SIGINT / SIGTERM stop the replay cleanly (exit code 0).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from ssov_train.errors import SsovError

from .bags import BagInfo, QosSpec, bag_info, read_messages, replay_schedule
from .shutdown import stop_on_signals

CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"


def message_class(msgtype: str):
    """'sensor_msgs/msg/PointCloud2' -> the rclpy message class; None when its package is not installed."""
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError):
        return None


def rclpy_qos(spec: QosSpec):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=spec.depth,
                      reliability=ReliabilityPolicy.RELIABLE if spec.reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if spec.durability == "transient_local"
                      else DurabilityPolicy.VOLATILE)


def parse_remaps(remaps: Iterable[str]) -> dict[str, str]:
    out = {}
    for r in remaps:
        src, sep, dst = r.partition(":=")
        if not sep or not src or not dst:
            raise SsovError(f"remap {r!r}: expected FROM:=TO")
        out[src] = dst
    return out


class Replayer:
    """Publishers for a bag's topics on ``node``; :meth:`play` publishes the messages on schedule."""

    def __init__(self, node, bag: str | Path, topics: Optional[Sequence[str]] = None,
                 remap: Optional[dict[str, str]] = None, log: Callable[[str], None] = print):
        self.node, self.bag = node, Path(bag)
        self.info: BagInfo = bag_info(self.bag)
        wanted = list(topics) if topics else sorted(self.info.topics)
        unknown = [t for t in wanted if t not in self.info.topics]
        if unknown:
            raise SsovError(f"bag {self.bag}: no topic {', '.join(unknown)} "
                            f"(topics: {', '.join(sorted(self.info.topics))})")
        remap = remap or {}
        self.publishers: dict[str, object] = {}  # bag topic -> publisher
        self.skipped: dict[str, str] = {}  # bag topic -> message type without a Python module
        for topic in wanted:
            t = self.info.topics[topic]
            cls = message_class(t.msgtype)
            if cls is None:
                self.skipped[topic] = t.msgtype
                continue
            self.publishers[topic] = node.create_publisher(cls, remap.get(topic, topic), rclpy_qos(t.qos))
        if self.skipped:
            log(f"replay: skipping {', '.join(sorted(self.skipped))}: no Python module for "
                f"{', '.join(sorted(set(self.skipped.values())))} in this environment")
        if not self.publishers:
            raise SsovError(f"bag {self.bag}: none of the selected topics can be published here")
        self.published = 0

    def wait_for_subscribers(self, topics: Sequence[str], timeout_s: float) -> list[str]:
        """Wait until each bag topic in ``topics`` has a matched subscription; return those that have none."""
        deadline = time.monotonic() + timeout_s
        pending = [t for t in topics if t in self.publishers]
        while pending and time.monotonic() < deadline:
            pending = [t for t in pending if self.publishers[t].get_subscription_count() == 0]
            if pending:
                time.sleep(0.02)
        return pending

    def cloud_topics(self) -> list[str]:
        """The replayed bag topics that carry point clouds."""
        return [t for t in self.publishers if self.info.topics[t].msgtype == CLOUD_TYPE]

    def unmatched_subscribers(self, topic: str) -> int:
        """Subscribers the graph shows on ``topic`` (as published) that this publisher has not matched yet."""
        pub = self.publishers[topic]
        return max(0, self.node.count_subscribers(pub.topic_name) - pub.get_subscription_count())

    def wait_for_readers(self, timeout_s: float, stop: Optional[threading.Event] = None) -> list[str]:
        """Wait until every replayed cloud topic has a subscriber and every subscriber the graph shows on the other
        topics is matched (topics nobody subscribes to are not waited for); return the topics still waiting."""
        deadline = time.monotonic() + timeout_s
        clouds = self.cloud_topics()
        while True:
            pending = [t for t in self.publishers if (t in clouds and self.publishers[t].get_subscription_count() == 0)
                       or self.unmatched_subscribers(t)]
            if not pending or time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return pending
            time.sleep(0.02)

    def play(self, rate: float = 1.0, stop: Optional[threading.Event] = None,
             on_publish: Optional[Callable[[str, int, float], None]] = None) -> int:
        """Publish every selected message once at ``rate`` x real time; return how many were published.

        ``on_publish(topic, bag_time_ns, wall_time)`` is called after each publish (the demo measures latency
        with it). The bag is streamed, not loaded: a long bag costs no memory.
        """
        if not rate > 0:
            raise SsovError(f"replay rate must be > 0, got {rate}")
        stop = stop or threading.Event()
        start_wall, count = time.monotonic(), 0
        for offset, (topic, _, t_ns, raw) in replay_schedule(read_messages(self.bag, list(self.publishers)), rate):
            due = start_wall + offset
            while not stop.is_set():
                wait = due - time.monotonic()
                if wait <= 0:
                    break
                stop.wait(min(wait, 0.1))
            if stop.is_set():
                break
            self.publishers[topic].publish(raw)  # serialized bytes: rclpy publishes them as they are
            count += 1
            if on_publish is not None:
                on_publish(topic, t_ns, time.time())
        self.published += count
        return count


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ssov-replay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or mcap)")
    ap.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    ap.add_argument("--loop", action="store_true", help="play the bag again and again until Ctrl-C")
    ap.add_argument("--topics", nargs="+", help="replay only these topics")
    ap.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO", help="publish a bag topic under another name")
    ap.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS",
                    help="before playing, wait up to this long for a subscriber on each replayed cloud topic (and "
                         "until the subscribers other topics have are matched; topics nobody reads are not waited for)")
    ap.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                    help="then wait this long before the first message (as `ros2 bag play --delay`): discovery "
                         "is matched on the subscriber's side a moment after the publisher sees it, and a "
                         "best-effort message sent before that is lost")
    return ap


def split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the tool's own arguments, ``--ros-args ...`` and everything after it, for rclpy.init)."""
    argv = list(argv)
    k = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    return argv[:k], argv[k:]


def main(argv: Optional[list[str]] = None) -> int:
    argv, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not args.rate > 0:
        build_parser().error(f"--rate must be > 0, got {args.rate}")
    if not args.delay >= 0:
        build_parser().error(f"--delay must be >= 0, got {args.delay}")
    try:
        info = bag_info(args.bag)  # a missing or corrupt bag fails here, before ROS starts
        remap = parse_remaps(args.remap)
    except SsovError as exc:
        print(f"ssov-replay: error: {exc}", file=sys.stderr)
        return 2

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=["ssov_replay", *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    stop_on_signals(stop)
    node = rclpy.create_node("ssov_replay")
    log = node.get_logger()
    try:
        player = Replayer(node, args.bag, args.topics, remap, log=log.warning)
        if args.wait_for_subscribers > 0:
            clouds = [player.publishers[t].topic_name for t in player.cloud_topics()]
            log.info(f"waiting up to {args.wait_for_subscribers:g} s for a subscriber on "
                     f"{', '.join(clouds) or 'no cloud topic'} (on other topics: for the subscribers they have)")
            missing = player.wait_for_readers(args.wait_for_subscribers, stop)
            if missing and not stop.is_set():
                names = [player.publishers[t].topic_name for t in missing]
                log.warning(f"no subscriber after {args.wait_for_subscribers:g} s on {', '.join(names)} (is the "
                            f"node running, and its input remapped there?); playing anyway")
        stop.wait(args.delay)
        if not stop.is_set():
            log.info(f"playing {args.bag} ({info.message_count} messages, {info.duration_s:.2f} s) "
                     f"at x{args.rate:g}{' in a loop' if args.loop else ''}")
        while not stop.is_set() and rclpy.ok():
            started = time.monotonic()
            player.play(args.rate, stop)
            if not args.loop or stop.is_set():
                break
            # The next pass starts one bag duration after this one (at least 0.1 s: a one-message bag
            # would otherwise be published in a busy loop).
            stop.wait(max(0.0, started + max(info.duration_s, 0.1) / args.rate - time.monotonic()))
        log.info(f"published {player.published} messages{' (stopped)' if stop.is_set() else ''}")
    except SsovError as exc:
        print(f"ssov-replay: error: {exc}", file=sys.stderr)
        return 2
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
