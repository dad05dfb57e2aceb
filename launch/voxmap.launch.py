"""Start the voxmap node (and optionally RViz).

    ros2 launch voxmap_ros voxmap.launch.py params_file:=/path/params.yaml use_sim_time:=false \
        namespace:=robot1 rviz:=true
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("voxmap_ros")
    params_file = LaunchConfiguration("params_file")
    use_sim_time = LaunchConfiguration("use_sim_time")
    namespace = LaunchConfiguration("namespace")
    rviz = LaunchConfiguration("rviz")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "voxmap.yaml"),
                              description="ROS params YAML for the voxmap node"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Follow /clock (bag replay, simulation)"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its topics"),
        DeclareLaunchArgument("rviz", default_value="false", description="Also start RViz with voxmap.rviz"),
        Node(
            package="voxmap_ros",
            executable="voxmap_node",
            name="voxmap",
            namespace=namespace,
            output="screen",
            parameters=[params_file, {"use_sim_time": use_sim_time}],
        ),
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", os.path.join(share, "rviz", "voxmap.rviz")],
            parameters=[{"use_sim_time": use_sim_time}],
            condition=IfCondition(rviz),
        ),
    ])
