"""ROS-free mapping core (torch, CPU or CUDA)."""
