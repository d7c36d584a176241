from .frame import CameraView, Frame

__all__ = ["CameraView", "Frame"]
