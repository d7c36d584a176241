"""The repository is one valid ament_python ROS 2 package that installs its data where launch_ros looks."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[2]


def test_package_xml_passes_catkin_pkg_validation():
    pkg = parse_package(REPO / "package.xml")
    pkg.validate()  # raises InvalidPackage (e.g. on a bad maintainer e-mail): colcon would then not see ROS
    assert pkg.name == "ssov_ros" and pkg.package_format == 3
    assert pkg.get_build_type() == "ament_python"
    assert (REPO / "resource" / "ssov_ros").is_file()


def test_setup_cfg_puts_scripts_where_ros2_run_looks():
    text = (REPO / "setup.cfg").read_text()
    assert "script_dir=$base/lib/ssov_ros" in text and "install_scripts=$base/lib/ssov_ros" in text


@pytest.mark.timeout(300)
def test_wheel_carries_packages_data_files_and_entry_points(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("ssov_ros-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    assert "share/ament_index/resource_index/packages/ssov_ros" in data
    assert "share/ssov_ros/package.xml" in data
    assert "share/ssov_ros/config/vocab/nuscenes.yaml" in data
    assert "share/ssov_ros/config/fastdds_local.xml" in data
    assert {"share/ssov_ros/launch/ssov.launch.py", "share/ssov_ros/launch/replay.launch.py"} <= set(data)
    # the default model: its checkpoint always, its exported package where `make export` built it
    assert "share/ssov_ros/models/ssov_synthetic_minkunet34c_w025.pt" in data
    package = REPO / "models" / "ssov_synthetic_minkunet34c_w025.ssovpkg"
    if package.is_dir():
        assert {f"share/ssov_ros/{f.relative_to(REPO)}" for f in package.rglob("*") if f.is_file()} <= set(data)
    assert "ssov_train/superpoints.py" in names and "ssov_ros/__init__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ssov-train = ssov_train.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
