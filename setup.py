"""ssov: one ament_python ROS 2 package (ssov_ros) that also installs the ROS-free core (ssov_train)."""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = "ssov_ros"
share = "share/" + package_name


def model_files():
    """The demo model into share/ssov_ros/models: the checkpoint (in git) and, where `make export` has built it,
    its exported package (a directory; onnxruntime runs it). The node's default model.path names the package
    and falls back to the checkpoint when only that is installed (ssov_ros/params.py resolve_model_path)."""
    entries = [(share + "/models", glob("models/*.pt"))]
    for package in sorted(glob("models/*.ssovpkg")):
        for folder, _, files in os.walk(package):
            entries.append((f"{share}/{folder}", [os.path.join(folder, f) for f in sorted(files)]))
    return entries


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["ssov_train", "ssov_train.*", "ssov_ros", "ssov_ros.*", "ssov_export", "ssov_export.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        (share, ["package.xml"]),
        (share + "/launch", glob("launch/*.launch.py")),
        (share + "/config", [f for f in glob("config/*") if not f.endswith("/vocab")]),
        (share + "/config/vocab", glob("config/vocab/*.yaml")),
        *model_files(),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="ssov maintainers",
    maintainer_email="maintainers@ssov.dev",
    description="Annotation-free lidar semantic segmentation distilled from 2D open-vocabulary segmenters",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "ssov-train = ssov_train.cli:main",
            "ssov-export = ssov_export.cli:main",
            "ssov_segmenter = ssov_ros.node:main",
            "ssov-replay = ssov_ros.replay:main",
            "ssov-record = ssov_ros.record:main",
            "ssov-make-bags = ssov_ros.bags:main",
        ],
    },
)
