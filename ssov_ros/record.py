"""`ssov-record BAG --topics ...`: write chosen topics into a rosbag2 (MCAP, zstd) until Ctrl-C or --duration.

Each topic is subscribed as soon as a publisher appears (its type and QoS are taken from the publishers:
best effort if any publisher is, transient local if all are, so late-joining latched topics are caught),
messages are stored as received (serialized bytes, no deserialization) with their receive time, and the bag
directory appears only when recording ends cleanly (:class:`ssov_ros.bags.BagWriter`): at --duration,
--max-messages, SIGINT or SIGTERM (exit code 0 for all of them).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ssov_train.errors import SsovError

from .bags import BagWriter, QosSpec
from .replay import message_class, rclpy_qos, split_ros_args
from .shutdown import stop_on_signals


def publishers_qos(node, topic: str) -> Optional[QosSpec]:
    """QoS that matches every current publisher of ``topic``; None while it has none."""
    infos = node.get_publishers_info_by_topic(topic)
    if not infos:
        return None
    spec = QosSpec.from_rosbags([i.qos_profile for i in infos])  # the same merge rule as for recorded profiles
    return dataclasses.replace(spec, depth=max(spec.depth, 10))


class Recorder:
    """Subscribes ``topics`` on ``node`` (raw) as their publishers appear and writes each message to ``writer``.

    Call :meth:`discover` periodically (the CLI uses a 0.1 s timer) until :attr:`pending` is empty.
    ``on_message(topic, raw, receive_time_ns)`` sees every message too (the demo decodes some).
    """

    def __init__(self, node, writer: BagWriter, topics: Sequence[str],
                 on_message: Optional[Callable[[str, bytes, int], None]] = None):
        if not topics:
            raise SsovError("record: no topics given")
        self.node, self.writer, self.on_message = node, writer, on_message
        self.pending = list(dict.fromkeys(topics))
        self.subscriptions: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()  # the bag writer is shared by discovery and the subscription callbacks

    def add_topics(self, topics: Sequence[str]) -> None:
        """Record these topics too (those already recorded or pending are ignored)."""
        self.pending += [t for t in topics if t not in self.subscriptions and t not in self.pending]

    def discover(self) -> list[str]:
        """Subscribe every pending topic that now has a publisher; return the topics still pending."""
        types = dict(self.node.get_topic_names_and_types())
        for topic in list(self.pending):
            qos = publishers_qos(self.node, topic)
            if topic not in types or qos is None:
                continue
            msgtype = types[topic][0]
            cls = message_class(msgtype)
            if cls is None:
                raise SsovError(f"record: topic {topic} has type {msgtype}, which has no Python module here")
            with self._lock:
                self.writer.add_topic(topic, msgtype, qos)
                self.counts[topic] = 0
            self.subscriptions[topic] = self.node.create_subscription(
                cls, topic, lambda raw, t=topic: self._write(t, raw), rclpy_qos(qos), raw=True)
            self.pending.remove(topic)
        return self.pending

    def _write(self, topic: str, raw: bytes) -> None:
        t_ns = time.time_ns()
        with self._lock:
            self.writer.write(topic, t_ns, raw)
            self.counts[topic] += 1
        if self.on_message is not None:
            self.on_message(topic, raw, t_ns)


def main(argv: Optional[list[str]] = None) -> int:
    argv, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="ssov-record", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bag", type=Path, help="output bag directory (must not exist unless --overwrite)")
    ap.add_argument("--topics", nargs="+", required=True, help="topics to record")
    ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    ap.add_argument("--max-messages", type=int, default=0,
                    help="stop once every topic has this many messages (0 = no limit)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    args = ap.parse_args(argv)

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    try:
        writer = BagWriter(args.bag, overwrite=args.overwrite)
    except SsovError as exc:
        print(f"ssov-record: error: {exc}", file=sys.stderr)
        return 2
    rclpy.init(args=["ssov_record", *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    stop_on_signals(stop)
    node = rclpy.create_node("ssov_record")
    log = node.get_logger()
    status = 0
    try:
        with writer:
            recorder = Recorder(node, writer, args.topics)
            node.create_timer(0.1, recorder.discover)
            recorder.discover()
            log.info(f"recording {', '.join(args.topics)} into {args.bag}")
            end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
            while not stop.is_set() and rclpy.ok() and time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.1)  # short: the signal handler runs between calls
                if args.max_messages and not recorder.pending and \
                        min(recorder.counts.values()) >= args.max_messages:
                    break
            for topic in args.topics:
                log.info(f"{topic}: {recorder.counts.get(topic, 0)} messages"
                         f"{' (never published)' if topic in recorder.pending else ''}")
    except SsovError as exc:
        print(f"ssov-record: error: {exc}", file=sys.stderr)
        status = 2
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
