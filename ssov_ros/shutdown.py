"""Clean stop on SIGINT / SIGTERM for the node and the bag tools (rclpy's own handlers are not installed)."""

from __future__ import annotations

import signal
import threading


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT (Ctrl-C reaches the whole process group) and SIGTERM (launch, systemd, docker) set ``stop``; the
    caller then finishes its work and exits 0.  Used instead of rclpy's handlers (``rclpy.init(...,
    signal_handler_options=SignalHandlerOptions.NO)``), which shut the context down at once: a message in flight
    could no longer be published, and the KeyboardInterrupt raised after them can land anywhere (a thread join,
    destroy_node) and print a traceback.  Python runs the handler in the main thread, between bytecodes: the
    main thread must not block in C for long (spin with a short timeout)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
