"""ssov_train: the ROS-free core of ssov (data, teachers, superpoints, training, evaluation)."""

__version__ = "0.1.0"
