"""voxmap_ros: sparse voxel octree mapping (TSDF, colour, occupancy) for ROS 2 and offline use."""
import os as _os

__version__ = "0.1.0"

# OpenMP worker threads (torch's and the compiled kernels') spin for a while after every parallel
# region by default. On a robot's shared CPU that burns cores other nodes need, and between our
# short kernels it steals the core the next one wants (measured: LiDAR fusion 24 -> 19-21 ms per
# scan on 2 cores). Only effective when set before torch is first imported; users may override.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
