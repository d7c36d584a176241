"""Helpers of the launch files in launch/ (imported by them; `launch` itself is imported only when they run).

A Shutdown event alone makes `ros2 launch` return 0: an exit handler that raises is how launch ends with a
failure (LaunchService catches the exception, shuts every process down and returns 1).
"""

from __future__ import annotations

from typing import Any, Callable


class ProcessFailed(RuntimeError):
    """A launched process exited with an error: the launch shuts down and fails."""


def exit_handler(name: str, shutdown_on_success: bool) -> Callable[[Any, Any], list]:
    """``on_exit`` of an OnProcessExit for the process ``name``: a non-zero exit fails the whole launch; a clean
    exit shuts it down too when ``shutdown_on_success``, else leaves the rest running."""

    def on_exit(event: Any, context: Any) -> list:
        if event.returncode != 0:
            raise ProcessFailed(f"{name} exited with code {event.returncode}; shutting everything down")
        if not shutdown_on_success:
            return []
        from launch.actions import EmitEvent
        from launch.events import Shutdown

        return [EmitEvent(event=Shutdown(reason=f"{name} exited"))]

    return on_exit


def package_installed(name: str) -> bool:
    """Whether the ament index knows package ``name`` (e.g. rviz2, which is optional)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return False
    try:
        get_package_prefix(name)
    except (PackageNotFoundError, ValueError):
        return False
    return True
