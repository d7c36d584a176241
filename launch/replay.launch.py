"""Replay a bag through the ssov node, optionally shown in RViz2.

    ros2 launch ssov_ros replay.launch.py bag:=/path/to/ssov/rosbags/nuscenes_sample loop:=true rviz:=true

Starts ssov.launch.py (the node; RViz2 only with rviz:=true and where rviz2 is installed) and ssov-replay, which
waits until the node has subscribed before it plays, so the first sweep is not lost while the model loads.
Arguments: bag (required), rate, loop, rviz, wait_for_node_s, delay_s, and those of ssov.launch.py (params_file,
model_path, topics). If the node or the replay exits with an error, everything is shut down and `ros2 launch`
exits non-zero.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, RegisterEventHandler
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from ssov_ros.launch_support import exit_handler

PACKAGE = "ssov_ros"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument("bag", description="rosbag2 directory to replay (e.g. <ssov>/rosbags/nuscenes_sample)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
        DeclareLaunchArgument("loop", default_value="false", choices=["true", "false"],
                              description="replay the bag again and again"),
        DeclareLaunchArgument("rviz", default_value="false", choices=["true", "false"],
                              description="start RViz2 with config/ssov.rviz (where rviz2 is installed)"),
        DeclareLaunchArgument("wait_for_node_s", default_value="60.0",
                              description="seconds the replay waits for the node's subscriptions"),
        DeclareLaunchArgument("delay_s", default_value="1.0",
                              description="then seconds before the first message (the node's side of discovery)"),
    ]
    segmenter = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "ssov.launch.py"])),
        # Other ssov.launch.py arguments given on the command line reach it as they are (launch configurations
        # are inherited by included descriptions).
        launch_arguments=[("rviz", LaunchConfiguration("rviz"))])
    replay_args = [LaunchConfiguration("bag"), "--rate", LaunchConfiguration("rate"),
                   "--wait-for-subscribers", LaunchConfiguration("wait_for_node_s"),
                   "--delay", LaunchConfiguration("delay_s")]
    replay = Node(package=PACKAGE, executable="ssov-replay", name="ssov_replay", output="screen",
                  arguments=replay_args, condition=UnlessCondition(LaunchConfiguration("loop")))
    replay_loop = Node(package=PACKAGE, executable="ssov-replay", name="ssov_replay", output="screen",
                       arguments=[*replay_args, "--loop"], condition=IfCondition(LaunchConfiguration("loop")))
    # a failed replay (bad bag, no subscriber) must not leave the node running; a finished one leaves it (and
    # RViz2) up for a look at the last frame
    on_failure = [RegisterEventHandler(OnProcessExit(target_action=r,
                                                     on_exit=exit_handler("ssov-replay", shutdown_on_success=False)))
                  for r in (replay, replay_loop)]
    return LaunchDescription([*arguments, segmenter, replay, replay_loop, *on_failure])
