"""The checkpoint format: weights-only loadable, verified against the run, written atomically."""

from __future__ import annotations

import pytest
import torch

from ssov_train.errors import ConfigError, DataError
from ssov_train.training import checkpoint as ck
from ssov_train.training.checkpoint import first_mismatch, load_checkpoint, save_checkpoint


def _checkpoint() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    return {"stage": "annotation_free", "model": {"arch": "MinkUNet18", "width": 0.25, "in_channels": 1},
            "voxel": {"mode": "cylindrical", "size": [0.1, 1.0, 0.1]}, "input_fields": ["intensity"],
            "class_names": ["ignore", "car"], "palette": [[0, 0, 0], [255, 0, 0]], "vocabulary": "nuscenes",
            "feature_dim": None, "config": {"optim": {"lr": 0.1}}, "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": 1, "global_step": 3,
            "rng": ck.rng_state()}


def test_round_trip_is_weights_only(tmp_path):
    saved = _checkpoint()
    path = save_checkpoint(tmp_path / "run" / "last.pt", saved)
    raw = torch.load(path, weights_only=True)  # no pickled classes anywhere
    assert raw["format"] == ck.FORMAT_NAME and raw["version"] == ck.FORMAT_VERSION
    loaded = load_checkpoint(path, {"model.arch": "MinkUNet18", "voxel": {"mode": "cylindrical",
                                                                          "size": (0.1, 1.0, 0.1)},
                                    "input_fields": ["intensity"], "class_names": ["ignore", "car"]})
    for k, v in saved["state_dict"].items():
        assert torch.equal(loaded["state_dict"][k], v)
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].shape == (2, 3)
    assert loaded["scheduler"]["last_epoch"] == 1 and loaded["global_step"] == 3
    assert torch.equal(loaded["rng"]["torch"], saved["rng"]["torch"])


@pytest.mark.parametrize("key, value", [("model.arch", "MinkUNet34C"), ("class_names", ["ignore", "bus"]),
                                        ("voxel", {"mode": "cartesian", "size": [0.1, 0.1, 0.1]}),
                                        ("input_fields", ["intensity+1"])])
def test_mismatch_names_the_key(tmp_path, key, value):
    path = save_checkpoint(tmp_path / "c.pt", _checkpoint())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_checkpoint(path, {key: value})


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(DataError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"model_points": {}}, tmp_path / "foreign.pt")
    with pytest.raises(DataError, match="not an ssov checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable"):
        load_checkpoint(tmp_path / "garbage.pt")


def test_write_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", _checkpoint())
    before = path.read_bytes()

    def dies_mid_write(obj, f):
        open(f, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _checkpoint())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_first_mismatch_is_a_dotted_path():
    assert first_mismatch({"optim": {"lr": 0.1, "epochs": 2}}, {"optim": {"lr": 0.1, "epochs": 3}}) == "optim.epochs"
    assert first_mismatch({"a": [1, 2]}, {"a": (1, 2)}) is None
    assert first_mismatch({"a": 1}, {"a": 1, "b": 2}) == "b"


def test_a_checkpoint_missing_an_expected_key_is_one_clear_error(tmp_path):
    saved = _checkpoint()
    del saved["input_fields"]
    del saved["model"]["width"]
    path = save_checkpoint(tmp_path / "old.pt", saved)
    with pytest.raises(ConfigError, match=r"old.pt has no 'input_fields' \(expected \['intensity'\]\)"):
        load_checkpoint(path, {"model.arch": "MinkUNet18", "input_fields": ["intensity"]})
    with pytest.raises(ConfigError, match=r"has no 'model.width'"):
        load_checkpoint(path, {"model.width": 0.25})
    with pytest.raises(ConfigError, match=r"has no 'model.arch.name'"):  # a value where a section was expected
        load_checkpoint(path, {"model.arch.name": "MinkUNet18"})
    assert load_checkpoint(path, {"model.arch": "MinkUNet18"})["stage"] == "annotation_free"  # present keys pass


def test_load_model_refuses_a_checkpoint_without_weights(tmp_path):
    saved = _checkpoint()
    del saved["state_dict"]
    path = save_checkpoint(tmp_path / "no_weights.pt", saved)
    with pytest.raises(ConfigError, match="no_weights.pt: no model config / weights"):
        ck.load_model(path)


def test_checkpoint_messages_and_helpers_by_hand(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _checkpoint())
    with pytest.raises(ConfigError) as err:
        load_checkpoint(path, {"model.arch": "MinkUNet34C"})
    assert str(err.value) == (f"checkpoint {path} does not match this run: model.arch is 'MinkUNet18' there, "
                              "'MinkUNet34C' here")
    with pytest.raises(ConfigError) as err:
        load_checkpoint(path, {"feature_dim": 512})
    assert "feature_dim is None there, 512 here" in str(err.value)  # present with the value None: not missing
    assert load_checkpoint(path, {"feature_dim": None, "voxel.size": (0.1, 1.0, 0.1)})["epoch"] == 1
    with pytest.raises(DataError) as err:
        load_checkpoint(tmp_path / "nope.pt")
    assert str(err.value) == f"checkpoint not found: {tmp_path / 'nope.pt'}"
    torch.save({"format": ck.FORMAT_NAME, "version": ck.FORMAT_VERSION + 1}, tmp_path / "newer.pt")
    with pytest.raises(DataError) as err:
        load_checkpoint(tmp_path / "newer.pt")
    assert str(err.value) == (f"checkpoint {tmp_path / 'newer.pt'} has format version {ck.FORMAT_VERSION + 1}; "
                              f"this ssov reads version {ck.FORMAT_VERSION}")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DataError, match=f"^{tmp_path / 'list.pt'} is not an ssov checkpoint$"):
        load_checkpoint(tmp_path / "list.pt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(DataError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "dir.pt")
    shipped = ck.without_training_state(_checkpoint())
    assert not {"optimizer", "scheduler", "rng", "global_step"} & set(shipped) and shipped["epoch"] == 1
    # the RNG state round trip: the same draws after restoring
    state = ck.rng_state()
    first = torch.rand(3)
    ck.restore_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_first_mismatch_paths_by_hand():
    assert first_mismatch({"a": {"b": 1}}, {"a": {"b": 1}}) is None
    assert first_mismatch({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}) == "a.c"  # missing on the current side
    assert first_mismatch({"b": 1, "a": 1}, {"a": 2, "b": 2}) == "a"  # keys in sorted order
    assert first_mismatch(1, 2) == "<root>" and first_mismatch([1], [1]) is None
    assert first_mismatch({"a": 1}, {"a": {"x": 1}}) == "a"
    assert first_mismatch({"a": [1, {"b": (2,)}]}, {"a": [1, {"b": [2]}]}) is None


def test_load_model_builds_the_described_network_with_its_weights(tmp_path):
    from ssov_train.models.minkunet import MinkUNet, MinkUNetConfig

    config = {"arch": "MinkUNet18", "width": 0.0625, "in_channels": 1, "out_channels": 3}
    torch.manual_seed(0)
    net = MinkUNet(MinkUNetConfig(**config))
    saved = {**_checkpoint(), "model": config, "state_dict": net.state_dict()}
    path = save_checkpoint(tmp_path / "m.pt", saved)
    model, ckpt = ck.load_model(path, {"model.width": 0.0625})
    assert isinstance(model, MinkUNet) and not model.training and ckpt["model"] == config
    for name, value in net.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    with pytest.raises(ConfigError, match=r"model.width is 0.0625 there, 0.25 here"):  # expect is checked
        ck.load_model(path, {"model.width": 0.25})
    no_config = save_checkpoint(tmp_path / "no_config.pt", {k: v for k, v in saved.items() if k != "model"})
    with pytest.raises(ConfigError, match="no_config.pt: no model config / weights: not a model checkpoint"):
        ck.load_model(no_config)
    other = save_checkpoint(tmp_path / "other.pt", {**saved, "model": {**config, "out_channels": 5}})
    with pytest.raises(ConfigError, match="other.pt: weights do not fit the model described in the file"):
        ck.load_model(other)


def test_pickled_objects_are_refused_and_mixed_keys_compare(tmp_path):
    import fractions

    # a checkpoint holding an arbitrary Python object would run pickled code on load: refused, never unpickled
    torch.save({"format": ck.FORMAT_NAME, "version": ck.FORMAT_VERSION, "x": fractions.Fraction(1, 3)},
               tmp_path / "pickled.pt")
    with pytest.raises(DataError, match="pickled.pt is unreadable or not a weights-only checkpoint"):
        load_checkpoint(tmp_path / "pickled.pt")
    # config trees may mix int and str keys (class ids next to names): compared in str order
    assert first_mismatch({1: "a", "b": 2}, {1: "a", "b": 3}) == "b"
    assert first_mismatch({2: "a", "10": 1}, {2: "b", "10": 2}) == "10"  # "10" < "2" as strings


def _save_as_if_on_gpu(obj: dict, path) -> None:
    """torch.save, with every tensor's storage recorded as on 'cuda:0' (what torch writes for a GPU tensor), so a
    GPU-written file can be made on a machine without one; torch's serialization registry decides that tag."""
    tagging = [True]
    torch.serialization.register_package(0, lambda storage: "cuda:0" if tagging[0] else None,
                                         lambda storage, location: None)
    try:
        torch.save(obj, path)
    finally:
        tagging[0] = False


def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu(tmp_path):
    saved = _checkpoint()
    path = tmp_path / "gpu.pt"
    _save_as_if_on_gpu({"format": ck.FORMAT_NAME, "version": ck.FORMAT_VERSION, **saved}, path)
    if not torch.cuda.is_available():  # the file really names a GPU: without map_location this machine cannot read it
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = load_checkpoint(path)
    for k, v in saved["state_dict"].items():
        assert loaded["state_dict"][k].device.type == "cpu" and torch.equal(loaded["state_dict"][k], v)
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].device.type == "cpu"


def test_tensors_anywhere_in_a_checkpoint_are_moved_to_the_cpu():
    """on_cpu (what save_checkpoint writes) reaches a tensor wherever a GPU run's checkpoint holds one: shown with
    tensors of the shape-only 'meta' device, which any machine has and which refuse to be copied to the CPU."""
    meta = torch.empty(2, device="meta")
    for tree in ({"a": meta}, {"a": [1, meta]}, {"a": {"b": (1, meta)}}, {"optimizer": {"state": {0: {"m": meta}}}}):
        with pytest.raises(NotImplementedError, match="meta"):
            ck.on_cpu(tree)
    cpu = torch.ones(2)
    out = ck.on_cpu({"a": [cpu, (cpu, 1)], "b": {"c": "text", "d": None}, "e": 3})
    assert out["a"][0] is cpu and out["a"][1][0] is cpu  # CPU tensors are not copied
    assert out == {"a": [cpu, (cpu, 1)], "b": {"c": "text", "d": None}, "e": 3}
    assert isinstance(out["a"][1], tuple)
