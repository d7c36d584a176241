"""What long commands share: the thread default, Ctrl-C ending with one line and the command that continues
(exit 130), teach / per-sample stages interrupted and resumed, teach's counts, `synth` run twice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssov_train import cli
from ssov_train.cli import continue_command, main
from ssov_train.data.frame import CameraView
from ssov_train.errors import DataError
from ssov_train.jobs import Interrupted, configure_threads, default_threads
from ssov_train.superpoints import run_per_sample
from ssov_train.teachers.format import TeacherImage, TeacherStore
from ssov_train.teachers.runner import create_store_for, run_teacher


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (3, None), (64, None)])
def test_default_threads_is_one_on_small_machines(monkeypatch, cores, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(cores) == expected


def test_omp_num_threads_and_the_flag_win(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads(1) is None  # the user's own choice
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 == torch.get_num_threads()
        with pytest.raises(ValueError, match="threads must be >= 1"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main(["synth", "--out", "x", "--threads", "0"])


@pytest.mark.parametrize("argv, resumable, expected", [
    (["pretrain", "--cfg", "config/pretrain_synthetic.yaml"], True,
     "resume with: ssov-train pretrain --cfg config/pretrain_synthetic.yaml --resume"),
    (["annotation-free", "--cfg", "a b.yaml", "--resume"], True,
     "resume with: ssov-train annotation-free --cfg 'a b.yaml' --resume"),
    (["downstream", "--cfg", "s.yaml", "--resume"], False, "start again with: ssov-train downstream --cfg s.yaml"),
    (["teach", "--cfg", "t.yaml", "--overwrite"], True, "resume with: ssov-train teach --cfg t.yaml"),
    (["superpoints", "--cfg", "s.yaml", "--shard", "2/4"], True,
     "resume with: ssov-train superpoints --cfg s.yaml --shard 2/4"),
    (["fuse", "--cfg", "s.yaml", "--out", "f"], True, "resume with: ssov-train fuse --cfg s.yaml --out f"),
    (["ablation", "--out", "runs/ablation"], True, "resume with: ssov-train ablation --out runs/ablation"),
    (["synth", "--out", "w"], True, "start again with: ssov-train synth --out w"),
    (["evaluate", "--cfg", "a.yaml", "--model", "m.ssovpkg"], True,
     "start again with: ssov-train evaluate --cfg a.yaml --model m.ssovpkg"),
])
def test_the_command_that_continues_after_ctrl_c(argv, resumable, expected):
    assert continue_command(argv[0], argv, resumable) == expected


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_synth", interrupted)
    assert main(["synth", "--out", str(tmp_path / "w")]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"ssov-train synth: interrupted; start again with: ssov-train synth --out {tmp_path / 'w'}"]

    def interrupted_in_training(args):
        raise Interrupted("at epoch 3 step 7 (run/last.pt holds epoch 2)")

    monkeypatch.setattr(cli, "cmd_train", interrupted_in_training)
    assert main(["pretrain", "--cfg", "p.yaml"]) == 130
    assert capsys.readouterr().err.strip() == ("ssov-train pretrain: interrupted at epoch 3 step 7 (run/last.pt holds "
                                               "epoch 2); resume with: ssov-train pretrain --cfg p.yaml --resume")


class _CountingTeacher:
    """Writes a one-mask output per image; raises KeyboardInterrupt (Ctrl-C) on the image ``interrupt_at``
    (1-based) and DataError on the images in ``broken``."""

    name, num_prompts, feature_dim = "counting", 2, None

    def __init__(self, interrupt_at: int = 0, broken: tuple[str, ...] = ()):
        self.calls, self.interrupt_at, self.broken = 0, interrupt_at, broken

    def text_embeddings(self):
        return None

    def predict(self, camera, frame=None):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        if camera.token in self.broken:
            raise DataError(f"image {camera.token} is unreadable")
        return TeacherImage(mask_ids=np.ones((camera.height, camera.width), np.uint16),
                            prompt_ids=np.array([1], np.int32), scores=np.array([0.9], np.float32))


def _cameras(n: int) -> list[CameraView]:
    return [CameraView(name="CAM_FRONT", token=f"img{i}", width=8, height=4, intrinsics=np.eye(3),
                       lidar_to_camera=np.eye(4)) for i in range(n)]


def test_teach_interrupted_keeps_what_it_wrote_and_resumes(tmp_path, capsys):
    cameras = _cameras(5)
    store = create_store_for(_CountingTeacher(), tmp_path / "teacher", "nuscenes")
    with pytest.raises(Interrupted, match=r"after 2 images written \(0 already present, 0 failed\)"):
        run_teacher(_CountingTeacher(interrupt_at=3), cameras, store, progress=False)
    assert [store.has(c.token) for c in cameras] == [True, True, False, False, False]

    again = _CountingTeacher(broken=("img4",))
    failures = run_teacher(again, cameras, TeacherStore.open(tmp_path / "teacher"), progress=True)
    assert again.calls == 3  # only the images the interrupted run had not written
    assert failures == [("img4", "image img4 is unreadable")]
    out = capsys.readouterr().out
    assert ("teacher counting: 2 images written, 2 already present, 1 failed: img4 (image img4 is unreadable)"
            in out.splitlines())


def test_per_sample_stage_interrupted_keeps_its_files_and_resumes(tmp_path):
    written = []

    def compute(token, path):
        if token == "c" and not written.count("again"):
            raise KeyboardInterrupt
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        written.append(token)

    tokens = ["a", "b", "c", "d"]
    with pytest.raises(Interrupted, match=r"after 2 superpoints samples computed \(0 already present\)"):
        run_per_sample(tokens, compute, tmp_path, {"s": 1}, {}, "superpoints", progress=False)
    written.append("again")
    result = run_per_sample(tokens, compute, tmp_path, {"s": 1}, {}, "superpoints", progress=False)
    assert result.skipped == ["a", "b"] and result.done == ["c", "d"]


def test_synth_twice_names_the_overwrite_flag(tmp_path, capsys):
    argv = ["synth", "--out", str(tmp_path / "w"), "--name", "tiny", "--scenes", "1", "--frames", "1",
            "--width", "160", "--height", "90"]
    assert main(argv) == 0
    first = sorted(p.name for p in (tmp_path / "w").iterdir())
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err and "--overwrite (ssov-train synth)" in err
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == first
