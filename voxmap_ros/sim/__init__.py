"""Synthetic scenes with ground truth and sensor simulators (no ROS imports).

    scene = make_scene("indoor", seed=0)
    depth_m, rgb, labels = render_rgbd(scene, K, T_W_C, 320, 240)
    points_L = scan_lidar(scene, T_W_L)
"""
from voxmap_ros.sim.dataset_writer import (default_intrinsics, generate_dataset, write_gt_mesh,
                                           write_lidar_folder, write_rgbd_folder)
from voxmap_ros.sim.scenes import (LABEL_IDS, LABEL_NAMES, Scene, box_mesh, cylinder_mesh, make_scene,
                                   plane_mesh, sphere_mesh)
from voxmap_ros.sim.sensors import (camera_trajectory, indoor_camera_trajectory, kinect_depth_sigma_m,
                                    lidar_trajectory, look_at, render_rgbd, scan_lidar,
                                    street_camera_trajectory)

__all__ = [
    "LABEL_IDS", "LABEL_NAMES", "Scene", "box_mesh", "camera_trajectory", "cylinder_mesh",
    "default_intrinsics", "generate_dataset", "indoor_camera_trajectory", "kinect_depth_sigma_m",
    "lidar_trajectory", "look_at", "make_scene", "plane_mesh", "render_rgbd", "scan_lidar",
    "sphere_mesh", "street_camera_trajectory", "write_gt_mesh", "write_lidar_folder", "write_rgbd_folder",
]
