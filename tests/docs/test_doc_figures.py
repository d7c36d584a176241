"""Figures the docs quote that the code can recount: recounted here, so the prose cannot drift."""

from doc_blocks import REPO


def test_projection_figures_quoted_in_the_docs_are_what_the_projection_gives():
    """training.md quotes point counts of the shipped keyframe: recount them with the one projection."""
    import numpy as np

    from ssov_train.data.sample import SampleReader
    from ssov_train.geometry.projection import ProjectionConfig, project_to_camera

    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.token)
    front = next(c for c in frame.cameras if c.name == "CAM_FRONT")
    in_image, _ = project_to_camera(frame.points, front, ProjectionConfig(occlusion=False))
    visible, hidden = project_to_camera(frame.points, front, ProjectionConfig(occlusion=True))
    seen = np.zeros(len(frame.points), bool)
    for cam in frame.cameras:
        seen[project_to_camera(frame.points, cam, ProjectionConfig(occlusion=False))[0].point_index] = True
    text = " ".join((REPO / "docs" / "training.md").read_text().split())
    quoted = (f"{len(in_image.point_index):,} points land in CAM_FRONT's image; the z-buffer test below hides "
              f"{hidden} of them, so {len(visible.point_index):,} are drawn")
    assert quoted in text
    assert f"{round(100 * seen.mean())}% of the points land in some camera's image" in text
