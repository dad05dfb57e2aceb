"""voxmap_ros: sparse voxel octree mapping (TSDF, colour, occupancy) for ROS 2 and offline use."""
__version__ = "0.1.0"
