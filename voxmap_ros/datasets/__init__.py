"""Dataset readers: folder datasets (RGB-D, KITTI-style LiDAR). Each yields `types.Frame`."""
from voxmap_ros.datasets.folder import LidarFolder, RgbdFolder, open_dataset

__all__ = ["LidarFolder", "RgbdFolder", "open_dataset"]
