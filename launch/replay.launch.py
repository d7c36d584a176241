"""Replay a bag through the ssov node and show it in RViz2.

    ros2 launch ssov_ros replay.launch.py bag:=/path/to/ssov/rosbags/nuscenes_sample loop:=true

Starts ssov.launch.py (node + RViz2) and ssov-replay, which waits until the node has subscribed before it
plays, so the first sweep is not lost while the model loads. Arguments: bag (required), rate, loop, rviz,
params_file, model_path, and the topic arguments of ssov.launch.py.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition, UnlessCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "ssov_ros"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument("bag", description="rosbag2 directory to replay (e.g. <ssov>/rosbags/nuscenes_sample)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
        DeclareLaunchArgument("loop", default_value="false", description="replay the bag again and again"),
        DeclareLaunchArgument("rviz", default_value="true", description="start RViz2 with config/ssov.rviz"),
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
    return LaunchDescription([*arguments, segmenter, replay, replay_loop])
