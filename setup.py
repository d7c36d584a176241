"""ssov: one ament_python ROS 2 package (ssov_ros) that also installs the ROS-free core (ssov_train)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "ssov_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["ssov_train", "ssov_train.*", "ssov_ros", "ssov_ros.*", "ssov_export", "ssov_export.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", [f for f in glob("config/*") if not f.endswith("/vocab")]),
        ("share/" + package_name + "/config/vocab", glob("config/vocab/*.yaml")),
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
