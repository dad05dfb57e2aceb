"""Accuracy, completeness, Chamfer and F-score against ground truth; depth errors."""
from voxmap_ros.eval.metrics import depth_errors, load_mesh, mesh_metrics, point_to_mesh_distance, sample_surface

__all__ = ["depth_errors", "load_mesh", "mesh_metrics", "point_to_mesh_distance", "sample_surface"]
