"""Launch the ssov segmentation node (and optionally RViz2).

    ros2 launch ssov_ros ssov.launch.py points_topic:=/lidar_top/points rviz:=true

Arguments: params_file (default: the package's config/ssov_node.yaml); model_path (empty by default: the params
file's model.path, which by default names the installed demo model; a value given here wins over the params file;
relative paths are looked up in the package share directory, then the working directory); points_topic,
camera_topic_prefix (camera CAM_X reads <prefix>cam_x/image_raw/compressed and <prefix>cam_x/camera_info, the
layout of the shipped bags), odom_topic, use_sim_time, rviz (RViz2 with config/ssov.rviz, only where rviz2 is
installed).

When the node exits with an error (e.g. a missing model or a misspelt parameter at start-up), the launch shuts down
and `ros2 launch` exits non-zero; when it exits cleanly the launch shuts down too.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from ssov_ros.launch_support import exit_handler, package_installed

PACKAGE = "ssov_ros"
# The nuScenes rig (the shipped bags); cameras the params file does not list are simply not subscribed.
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")


def _nodes(context):
    """The node (plus the model_path override only when one is given) and, if asked for and installed, RViz2."""
    share = FindPackageShare(PACKAGE)
    prefix = LaunchConfiguration("camera_topic_prefix")
    overrides = {"use_sim_time": LaunchConfiguration("use_sim_time")}
    if LaunchConfiguration("model_path").perform(context):
        overrides["model.path"] = LaunchConfiguration("model_path")
    remappings = [("~/input/points", LaunchConfiguration("points_topic")),
                  ("~/input/odometry", LaunchConfiguration("odom_topic"))]
    for cam in CAMERAS:
        remappings += [(f"~/input/{cam}/image", [prefix, f"{cam.lower()}/image_raw/compressed"]),
                       (f"~/input/{cam}/camera_info", [prefix, f"{cam.lower()}/camera_info"])]
    node = Node(package=PACKAGE, executable="ssov_segmenter", name="ssov_segmenter", output="screen",
                parameters=[LaunchConfiguration("params_file"), overrides], remappings=remappings)
    on_exit = exit_handler("ssov_segmenter", shutdown_on_success=True)
    actions = [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))]
    if LaunchConfiguration("rviz").perform(context) == "true":
        if package_installed("rviz2"):
            actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                                arguments=["-d", PathJoinSubstitution([share, "config", "ssov.rviz"])],
                                parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}]))
        else:
            actions.append(LogInfo(msg="rviz:=true but rviz2 is not installed: RViz2 not started"))
    return actions


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "ssov_node.yaml"]),
                              description="ROS 2 parameters file of the node"),
        DeclareLaunchArgument("model_path", default_value="",
                              description="exported model package or .pt checkpoint; overrides the params file's "
                                          "model.path (empty: keep it)"),
        DeclareLaunchArgument("points_topic", default_value="/lidar_top/points", description="input PointCloud2"),
        DeclareLaunchArgument("camera_topic_prefix", default_value="/",
                              description="camera CAM_X reads <prefix>cam_x/image_raw/compressed and .../camera_info"),
        DeclareLaunchArgument("odom_topic", default_value="/odom", description="nav_msgs/Odometry for temporal AFI"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
        DeclareLaunchArgument("rviz", default_value="false", choices=["true", "false"],
                              description="start RViz2 with config/ssov.rviz (where rviz2 is installed)"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
