"""Launch the ssov segmentation node (and optionally RViz2).

    ros2 launch ssov_ros ssov.launch.py points_topic:=/lidar_top/points rviz:=true

Arguments: params_file (default: the package's config/ssov_node.yaml), model_path (an exported model package,
by default the demo model's from `make export`, or a .pt checkpoint; relative paths are searched in the working
directory, the package share directory and the source tree),
points_topic, camera_topic_prefix (camera CAM_X reads <prefix>cam_x/image_raw/compressed and
<prefix>cam_x/camera_info, the layout of the shipped bags), odom_topic, use_sim_time, rviz.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "ssov_ros"
# The nuScenes rig (the shipped bags); cameras the params file does not list are simply not subscribed.
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    prefix = LaunchConfiguration("camera_topic_prefix")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "ssov_node.yaml"]),
                              description="ROS 2 parameters file of the node"),
        DeclareLaunchArgument("model_path", default_value="models/ssov_synthetic_minkunet34c_w025.ssovpkg",
                              description="exported model package (`make export`) or .pt checkpoint"),
        DeclareLaunchArgument("points_topic", default_value="/lidar_top/points", description="input PointCloud2"),
        DeclareLaunchArgument("camera_topic_prefix", default_value="/",
                              description="camera CAM_X reads <prefix>cam_x/image_raw/compressed and .../camera_info"),
        DeclareLaunchArgument("odom_topic", default_value="/odom", description="nav_msgs/Odometry for temporal AFI"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz2 with config/ssov.rviz"),
    ]
    remappings = [("~/input/points", LaunchConfiguration("points_topic")),
                  ("~/input/odometry", LaunchConfiguration("odom_topic"))]
    for cam in CAMERAS:
        remappings += [(f"~/input/{cam}/image", [prefix, f"{cam.lower()}/image_raw/compressed"]),
                       (f"~/input/{cam}/camera_info", [prefix, f"{cam.lower()}/camera_info"])]
    node = Node(
        package=PACKAGE, executable="ssov_segmenter", name="ssov_segmenter", output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"model.path": LaunchConfiguration("model_path"),
                     "use_sim_time": LaunchConfiguration("use_sim_time")}],
        remappings=remappings)
    rviz = Node(
        package="rviz2", executable="rviz2", name="rviz2", output="screen",
        arguments=["-d", PathJoinSubstitution([share, "config", "ssov.rviz"])],
        parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
        condition=IfCondition(LaunchConfiguration("rviz")))
    return LaunchDescription([*arguments, node, rviz])
