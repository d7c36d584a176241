"""ssov_ros: the thin ROS 2 layer over ssov_train (message conversion, parameters, the node)."""
