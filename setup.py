"""ament_python package; also a plain pip-installable package (`pip install -e .`)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "voxmap_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
        (f"share/{PACKAGE}/kernels/cpu", glob("kernels/cpu/*.cpp") + glob("kernels/cpu/*.h")),
        (f"share/{PACKAGE}/kernels/triton", glob("kernels/triton/*.py")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="voxmap_ros maintainers",
    maintainer_email="voxmap@example.com",
    description="Sparse voxel octree mapping (TSDF, colour, occupancy) for ROS 2 and offline use",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "voxmap = voxmap_ros.cli:main",
            "voxmap_node = voxmap_ros.ros.node:main",
            "voxmap_bag_player = voxmap_ros.ros.bag_player:main",
        ],
    },
)
