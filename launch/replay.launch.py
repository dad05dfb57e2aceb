"""Replay a rosbag2 into the voxmap node with simulated time.

    ros2 launch voxmap_ros replay.launch.py bag:=/path/to/bag params_file:=... rate:=1.0 rviz:=true

`ros2 bag play --clock` publishes /clock; the node runs with use_sim_time so TF lookups and
stamps follow the bag. Without a ROS install, use `voxmap replay BAG --out DIR` (offline, same core).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("voxmap_ros")
    bag = LaunchConfiguration("bag")
    rate = LaunchConfiguration("rate")
    params_file = LaunchConfiguration("params_file")
    rviz = LaunchConfiguration("rviz")
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 directory or file to play"),
        DeclareLaunchArgument("rate", default_value="1.0", description="Playback speed factor"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "voxmap.yaml"),
                              description="ROS params YAML for the voxmap node"),
        DeclareLaunchArgument("rviz", default_value="true", description="Also start RViz with voxmap.rviz"),
        Node(
            package="voxmap_ros",
            executable="voxmap_node",
            name="voxmap",
            output="screen",
            parameters=[params_file, {"use_sim_time": True}],
        ),
        ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock", "--rate", rate], output="screen"),
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", os.path.join(share, "rviz", "voxmap.rviz")],
            parameters=[{"use_sim_time": True}],
            condition=IfCondition(rviz),
        ),
    ])
